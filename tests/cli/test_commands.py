"""The ``imgembed`` command in-process with fake models: embed, segment, segment-everything, index
and search write their files and print their summaries; bad flags fail in one line.

The fast twin of tests/e2e/test_cli.py, whose ``imgembed`` subprocesses (and every ``serve``
test) cannot get fakes and stay in the slow tier. The commands build their engine themselves, so
the fixture swaps in :class:`~fakes.FakeEngine` for ``imgembed.engine.Engine``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeEngine, expected_sam2_arrays
from imagefactory import encode, gradient_rgb
from PIL import Image

from imgembed.cli import main


@pytest.fixture(autouse=True)
def fake_cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fake models for every command; the root logger as it was before ``main`` configured it."""
    monkeypatch.setattr("imgembed.engine.Engine", FakeEngine)
    monkeypatch.setenv("IMGEMBED_WARMUP", "false")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    image = tmp_path / "photo.png"
    image.write_bytes(encode(Image.fromarray(gradient_rgb(60, 90)), "PNG"))
    return image


def test_embed_writes_an_npz_with_features_and_metadata(
    capsys: pytest.CaptureFixture[str], photo: Path, tmp_path: Path
) -> None:
    output = tmp_path / "features.npz"
    status, _, err = run_cli(
        capsys, "embed", str(photo), "-o", str(output), "--weights", "dummy", "--dtype", "float16"
    )
    assert status == 0, err
    assert f"wrote {output}" in err
    expected = expected_sam2_arrays(photo.read_bytes(), dtype="float16")
    with np.load(output) as archive:
        assert archive["embedding"].dtype == np.float16
        np.testing.assert_array_equal(archive["embedding"], expected["image_embed"])
        assert archive["high_res_feats_0"].shape == (32, 256, 256)
        assert archive["high_res_feats_1"].shape == (64, 128, 128)
        meta = json.loads(str(archive["meta_json"]))
    assert meta["orig_size"] == [60, 90]
    assert meta["model_id"] == "sam2.1-hiera-tiny"
    assert meta["untrained"] is True


def test_embed_refuses_a_missing_image_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, _, err = run_cli(capsys, "embed", str(tmp_path / "nope.jpg"), "--weights", "dummy")
    assert status == 2
    assert err.strip().splitlines() == [
        f"imgembed: error: image file {tmp_path / 'nope.jpg'} does not exist"
    ]


def test_segment_writes_masks_and_an_overlay(
    capsys: pytest.CaptureFixture[str], photo: Path, tmp_path: Path
) -> None:
    output = tmp_path / "mask.png"
    status, out, err = run_cli(
        capsys, "segment", str(photo), "--point", "30,20", "--point", "80,50,0",
        "--box", "5,5,50,40", "--box", "40,10,88,58", "-o", str(output), "--weights", "dummy",
    )  # fmt: skip
    assert status == 0, err
    summary = json.loads(out)
    assert summary["untrained"] is True
    assert len(summary["objects"]) == 2
    for index, entry in enumerate(summary["objects"]):
        mask = np.asarray(Image.open(tmp_path / f"mask_{index}.png"))
        assert mask.shape == (60, 90)
        assert set(np.unique(mask)) <= {0, 255}
        assert int((mask > 0).sum()) == entry["area"]
    # Each box is its own object with the same points: the first box's mask holds the click and
    # not the background point.
    first = np.asarray(Image.open(tmp_path / "mask_0.png")) > 0
    assert first[20, 30]
    assert not first[50, 80]
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
    capsys: pytest.CaptureFixture[str], photo: Path, args: list[str], phrase: str
) -> None:
    status, _, err = run_cli(capsys, "segment", str(photo), *args, "--weights", "dummy")
    assert status == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("imgembed: error:")]
    assert len(errors) == 1, err
    assert phrase in errors[0]


def test_segment_everything_writes_records_and_an_overlay(
    capsys: pytest.CaptureFixture[str], photo: Path, tmp_path: Path
) -> None:
    output = tmp_path / "masks.json"
    status, out, err = run_cli(
        capsys, "segment-everything", str(photo), "-o", str(output), "--points-per-side", "3",
        "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--weights", "dummy",
    )  # fmt: skip
    assert status == 0, err
    summary = json.loads(out)
    body = json.loads(output.read_text())
    assert summary["masks"] == body["count"] > 0
    assert body["masks"][0]["segmentation"]["size"] == [60, 90]
    assert Image.open(tmp_path / "masks_overlay.png").size == (90, 60)


@pytest.mark.parametrize(
    ("flag", "value"), [("--box-nms-thresh", "3"), ("--points-per-side", "1000")]
)
def test_segment_everything_refuses_bad_settings_in_one_line(
    capsys: pytest.CaptureFixture[str], photo: Path, flag: str, value: str
) -> None:
    status, _, err = run_cli(
        capsys, "segment-everything", str(photo), flag, value, "--weights", "dummy"
    )
    assert status == 2, err
    assert "Traceback" not in err
    assert flag.removeprefix("--").replace("-", "_") in err


def test_index_a_folder_then_search_it_by_image_and_text(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for seed in range(3):
        pixels = np.random.default_rng(seed).integers(0, 256, (40, 50, 3), dtype=np.uint8)
        target = photos / ("sub" if seed == 2 else "") / f"p{seed}.png"
        target.write_bytes(encode(Image.fromarray(pixels), "PNG"))
    (photos / "broken.jpg").write_bytes(b"not a picture")
    common = ["--collection", "pics", "--collections-dir", str(tmp_path / "db")]
    common += ["--weights", "dummy"]
    status, out, err = run_cli(capsys, "index", str(photos), *common)
    assert status == 0, err
    summary = json.loads(out)
    assert (summary["images"], summary["inserted"]) == (4, 3)
    assert [entry["path"] for entry in summary["failed"]] == ["broken.jpg"]
    assert "4/4 images, 1 failed" in err
    status, out, err = run_cli(capsys, "search", *common, "--image", str(photos / "sub" / "p2.png"))
    assert status == 0, err
    hits = json.loads(out)["hits"]
    assert hits[0]["id"] == "sub/p2.png"
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert hits[0]["metadata"]["path"] == "sub/p2.png"
    status, out, err = run_cli(capsys, "search", *common, "--text", "a photo", "--top-k", "2")
    assert status == 0, err
    assert len(json.loads(out)["hits"]) == 2
    status, _, err = run_cli(
        capsys, "search", *common[:-2], "--collection", "nope", "--text", "x", "--weights", "dummy"
    )
    assert status == 2
    assert "nope" in err
    assert "Traceback" not in err
