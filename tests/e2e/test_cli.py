"""The ``imgembed`` command as a person runs it: real processes, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from imagefactory import encode, gradient_rgb
from PIL import Image
from servers import TEST_DEVICE

pytestmark = pytest.mark.e2e


def imgembed(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imgembed.cli", *args],
        env={**os.environ, **TEST_DEVICE, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_embed_writes_an_npz_with_features_and_metadata(tmp_path: Path) -> None:
    image = tmp_path / "photo.jpg"
    image.write_bytes(encode(Image.fromarray(gradient_rgb(60, 90)), "JPEG"))
    output = tmp_path / "features.npz"
    completed = imgembed(
        "embed", str(image), "-o", str(output), "--weights", "dummy", "--dtype", "float16"
    )
    assert completed.returncode == 0, completed.stderr
    assert f"wrote {output}" in completed.stderr
    assert "UNTRAINED" in completed.stderr
    with np.load(output) as archive:
        assert archive["embedding"].shape == (256, 64, 64)
        assert archive["embedding"].dtype == np.float16
        assert archive["high_res_feats_0"].shape == (32, 256, 256)
        assert archive["high_res_feats_1"].shape == (64, 128, 128)
        meta = json.loads(str(archive["meta_json"]))
    assert meta["orig_size"] == [60, 90]
    assert meta["model_id"] == "sam2.1-hiera-tiny"
    assert meta["untrained"] is True


def test_embed_refuses_a_missing_image_in_one_line(tmp_path: Path) -> None:
    completed = imgembed("embed", str(tmp_path / "nope.jpg"), "--weights", "dummy")
    assert completed.returncode == 2
    assert "nope.jpg does not exist" in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize(
    ("args", "env", "phrase"),
    [
        (["--weights", "/nonexistent/sam2.1_hiera_tiny.pt"], {}, "SAM2_CHECKPOINT"),
        (["--model", "sam2-hiera-gigantic", "--weights", "dummy"], {}, "sam2.1-hiera-tiny"),
        (["--weights", "dummy", "--meta-config", "sam2_hiera_q.yaml"], {}, "sam2_hiera_q"),
        ([], {"SAM2_CHECKPOINT": "/nonexistent/sam2_hiera_large.pt"}, "/nonexistent/sam2_hiera_large.pt"),
        ([], {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": "/nonexistent-cache"}, "--weights"),
        (["--device", "cuda", "--weights", "dummy"], {"CUDA_VISIBLE_DEVICES": ""}, "--device cpu"),
        (["--weights", "dummy"], {"IMGEMBED_MAX_BATCH_SIZE": "-1"}, "IMGEMBED_MAX_BATCH_SIZE='-1' is invalid: expected a whole number at least 0"),
        (["--weights", "dummy"], {"IMGEMBED_MAX_QUEUE_DELAY_MS": "nan"}, "expected a finite number 0 or more, got nan"),
    ],
    ids=["missing-file", "unknown-model", "unknown-config", "seed-variable", "hub-offline", "no-cuda", "negative-batch-size", "nan-delay"],
)  # fmt: skip
def test_serve_load_failures_are_one_clear_line(
    args: list[str], env: dict[str, str], phrase: str
) -> None:
    completed = imgembed("serve", "--port", "9", *args, env=env)
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr
    errors = [line for line in completed.stderr.splitlines() if line.startswith("imgembed: error:")]
    assert len(errors) == 1, completed.stderr
    assert phrase in errors[0]


def test_segment_writes_masks_and_an_overlay(tmp_path: Path) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(encode(Image.fromarray(gradient_rgb(60, 90)), "PNG"))
    output = tmp_path / "mask.png"
    completed = imgembed(
        "segment", str(image), "--point", "30,20", "--point", "80,50,0",
        "--box", "5,5,50,40", "--box", "40,10,88,58", "-o", str(output), "--weights", "dummy",
        env={"IMGEMBED_WARMUP": "false"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout)
    assert summary["untrained"] is True
    assert len(summary["objects"]) == 2
    for index, entry in enumerate(summary["objects"]):
        mask = np.asarray(Image.open(tmp_path / f"mask_{index}.png"))
        assert mask.shape == (60, 90)
        assert set(np.unique(mask)) <= {0, 255}
        assert int((mask > 0).sum()) == entry["area"]
    overlay = Image.open(tmp_path / "mask_overlay.png")
    assert overlay.size == (90, 60)
    assert overlay.mode == "RGB"


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--point", "30"], "expected X,Y or X,Y,LABEL"),
        (["--point", "a,b"], "expected numbers"),
        (["--box", "1,2,3"], "expected X0,Y0,X1,Y1"),
        (["--point", "500,20"], "outside the 90x60 image"),
        (["--point", "30,20,7"], "must be one of"),
        ([], "no prompt"),
    ],
)
def test_segment_refuses_bad_prompts_in_one_line(
    tmp_path: Path, args: list[str], phrase: str
) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(encode(Image.fromarray(gradient_rgb(60, 90)), "PNG"))
    completed = imgembed(
        "segment", str(image), *args, "--weights", "dummy", env={"IMGEMBED_WARMUP": "false"}
    )
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr
    assert phrase in completed.stderr


def test_segment_everything_writes_records_and_an_overlay(tmp_path: Path) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(encode(Image.fromarray(gradient_rgb(60, 90)), "PNG"))
    output = tmp_path / "masks.json"
    completed = imgembed(
        "segment-everything", str(image), "-o", str(output), "--points-per-side", "3",
        "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--weights", "dummy",
        env={"IMGEMBED_WARMUP": "false"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout)
    body = json.loads(output.read_text())
    assert summary["masks"] == body["count"] > 0
    assert body["masks"][0]["segmentation"]["size"] == [60, 90]
    assert Image.open(tmp_path / "masks_overlay.png").size == (90, 60)


@pytest.mark.parametrize(
    ("flag", "value"), [("--box-nms-thresh", "3"), ("--points-per-side", "1000")]
)
def test_segment_everything_refuses_bad_settings_in_one_line(
    tmp_path: Path, flag: str, value: str
) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(encode(Image.fromarray(gradient_rgb(60, 90)), "PNG"))
    completed = imgembed("segment-everything", str(image), flag, value, "--weights", "dummy")
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr
    assert flag.removeprefix("--").replace("-", "_") in completed.stderr


def test_index_a_folder_then_search_it_by_image_and_text(tmp_path: Path) -> None:
    pytest.importorskip("lancedb", reason="collections need the search extra")
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for seed in range(3):
        pixels = np.random.default_rng(seed).integers(0, 256, (40, 50, 3), dtype=np.uint8)
        target = photos / ("sub" if seed == 2 else "") / f"p{seed}.png"
        target.write_bytes(encode(Image.fromarray(pixels), "PNG"))
    (photos / "broken.jpg").write_bytes(b"not a picture")
    common = [
        "--collection",
        "pics",
        "--collections-dir",
        str(tmp_path / "db"),
        "--weights",
        "dummy",
    ]
    env = {"IMGEMBED_WARMUP": "false"}
    indexed = imgembed("index", str(photos), *common, env=env)
    assert indexed.returncode == 0, indexed.stderr
    summary = json.loads(indexed.stdout)
    assert (summary["images"], summary["inserted"]) == (4, 3)
    assert [entry["path"] for entry in summary["failed"]] == ["broken.jpg"]
    assert "4/4 images, 1 failed" in indexed.stderr
    by_image = imgembed("search", *common, "--image", str(photos / "sub" / "p2.png"), env=env)
    assert by_image.returncode == 0, by_image.stderr
    hits = json.loads(by_image.stdout)["hits"]
    assert hits[0]["id"] == "sub/p2.png"
    assert hits[0]["metadata"]["path"] == "sub/p2.png"
    by_text = imgembed("search", *common, "--text", "a photo", "--top-k", "2", env=env)
    assert len(json.loads(by_text.stdout)["hits"]) == 2
    unknown = imgembed(
        "search", *common[:-2], "--collection", "nope", "--text", "x", "--weights", "dummy", env=env
    )
    assert unknown.returncode == 2
    assert "nope" in unknown.stderr
    assert "Traceback" not in unknown.stderr


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["onnx", "--model", "sam2-hiera-gigantic", "--weights", "dummy"], "sam2.1-hiera-tiny"),
        (["triton", "--model", "sam3", "--weights", "dummy"], "sam2.1-hiera-tiny"),
        (["onnx", "--weights", "dummy", "--out", "/proc/imgembed-export"], "/proc/imgembed-export"),
    ],
    ids=["unknown-model", "unknown-model-triton", "unwritable-out"],
)
def test_export_refuses_in_one_clear_line(tmp_path: Path, args: list[str], phrase: str) -> None:
    out = [] if "--out" in args else ["--out", str(tmp_path / "out")]
    completed = imgembed("export", *args, *out)
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr
    errors = [line for line in completed.stderr.splitlines() if line.startswith("imgembed: error:")]
    assert len(errors) == 1, completed.stderr
    assert phrase in errors[0]
