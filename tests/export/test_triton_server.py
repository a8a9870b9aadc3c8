"""The exported repository in a real Triton server: seed 003's path end to end.

The server is the ``tritonserver`` 2.51 binary of the PyPI wheel ``nvidia-pytriton`` 0.7.0,
installed by ``scripts/triton_server.sh`` (``scripts/bootstrap.sh test`` runs it), on the CPU,
bound to 127.0.0.1 only. It has the Python backend but not the ONNX Runtime backend, so it loads
three repositories at once:

- the ``--backend python`` export of the session's random-weight SAM 2.1 tiny
  (``sam2_encoder``, ``sam2_decoder``): these serve;
- the default (``onnxruntime``) export of the same graphs under other names: Triton parses and
  checks their configs and then finds no ``onnxruntime`` backend library, which must be the only
  reason they do not load;
- a copy of that encoder config bent one field (a preferred batch size above ``max_batch_size``),
  which must fail for that reason instead: the check above would catch a config error.

Then ``examples/triton_client.py`` runs against Triton and against ``imgembed serve`` on the same
checkpoint, Triton's metadata and config endpoints are read, and concurrent encoder requests show
Triton's dynamic batcher forming batches larger than one. The server is stopped at the end.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from checkpoints import relative_error
from example_programs import load_example
from PIL import Image
from servers import LOOPBACK, background_server, free_port, imgembed_server

from imgembed.export.onnx_export import ExportResult
from imgembed.export.triton_config import TritonRepositorySettings
from imgembed.export.triton_repository import TritonExportResult, export_triton_from_onnx

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "triton_server.sh"
EXAMPLE = ROOT / "examples" / "triton_client.py"
POINTS = [(180.0, 150.0, 1), (60.0, 200.0, 0)]
BOXES = [(40.0, 30.0, 260.0, 210.0)]
ONNXRUNTIME_NAMES = {"encoder": "onnxruntime_sam2_encoder", "decoder": "onnxruntime_sam2_decoder"}
BENT = "bent_sam2_encoder"
MISSING_BACKEND = (
    "Invalid argument: unable to find backend library for backend 'onnxruntime', try specifying "
    "runtime on the model configuration."
)
"""Triton 2.51's reason for a model whose backend is not installed: the config passed its checks."""
BENT_REASON = (
    f"Poll failed for model directory '{BENT}': dynamic batching preferred size must be <= max "
    f"batch size for {BENT}"
)
"""Triton 2.51's log line for the bent config: refused by the config checks, before any backend."""
CONCURRENT = 4

ENCODER_TENSORS = {
    "inputs": [("image", "FP32", [-1, 3, 1024, 1024])],
    "outputs": [
        ("high_res_feats_0", "FP32", [-1, 32, 256, 256]),
        ("high_res_feats_1", "FP32", [-1, 64, 128, 128]),
        ("image_embed", "FP32", [-1, 256, 64, 64]),
    ],
}
"""Seed 003's encoder: ``image`` in, seed 002's three feature maps out; the batch axis is -1."""
DECODER_TENSORS = {
    "inputs": [
        ("image_embed", "FP32", [-1, 256, 64, 64]),
        ("high_res_feats_0", "FP32", [-1, 32, 256, 256]),
        ("high_res_feats_1", "FP32", [-1, 64, 128, 128]),
        ("point_coords", "FP32", [-1, -1, 2]),
        ("point_labels", "FP32", [-1, -1]),
        ("mask_input", "FP32", [-1, 1, 256, 256]),
        ("has_mask_input", "FP32", [-1]),
    ],
    "outputs": [("masks", "FP32", [-1, 3, 256, 256]), ("iou_predictions", "FP32", [-1, 3])],
}
"""Seed 002's seven decoder feeds and two outputs (three masks per prompt)."""


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return load_example("triton_client.py")


@pytest.fixture(scope="module")
def repositories(
    onnx_export: ExportResult, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, TritonExportResult]:
    """The python-backend export, the onnxruntime export under other names, and the bent copy."""
    folder = tmp_path_factory.mktemp("triton_server")
    python = export_triton_from_onnx(
        onnx_export.out_dir, folder / "python", settings=TritonRepositorySettings(backend="python")
    )
    onnxruntime = export_triton_from_onnx(
        onnx_export.out_dir,
        folder / "onnxruntime",
        settings=TritonRepositorySettings(
            encoder_name=ONNXRUNTIME_NAMES["encoder"], decoder_name=ONNXRUNTIME_NAMES["decoder"]
        ),
    )
    bent_dir = folder / "bent" / BENT
    shutil.copytree(onnxruntime.model_dirs[ONNXRUNTIME_NAMES["encoder"]], bent_dir)
    config = (bent_dir / "config.pbtxt").read_text(encoding="utf-8")
    bent = config.replace(ONNXRUNTIME_NAMES["encoder"], BENT).replace("[ 4, 8 ]", "[ 4, 16 ]")
    assert bent.count(BENT) == 1, config
    assert "[ 4, 16 ]" in bent, config
    (bent_dir / "config.pbtxt").write_text(bent, encoding="utf-8")
    return {"python": python, "onnxruntime": onnxruntime}


@pytest.fixture(scope="module")
def triton_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the Triton server's output goes."""
    return tmp_path_factory.mktemp("tritonserver") / "tritonserver.log"


@pytest.fixture(scope="module")
def triton(
    tritonserver: None, repositories: dict[str, TritonExportResult], triton_log: Path
) -> Iterator[str]:
    """``tritonserver`` on free loopback ports (HTTP, gRPC, metrics); yields ``host:port``."""
    http_port = free_port()
    command = [str(SCRIPT), "run"]
    for repository in (
        repositories["python"].out_dir,
        repositories["onnxruntime"].out_dir,
        repositories["onnxruntime"].out_dir.parent / "bent",
    ):
        command += ["--model-repository", str(repository)]
    for endpoint, port in (("http", http_port), ("grpc", free_port()), ("metrics", free_port())):
        command += [f"--{endpoint}-address", LOOPBACK, f"--{endpoint}-port", str(port)]
    # Keep serving when some models fail to load (the onnxruntime ones here); stop fast.
    command += ["--exit-on-error=false", "--exit-timeout-secs=5", "--allow-gpu-metrics=false"]
    with background_server(
        command, {}, http_port, "/v2/health/live", triton_log, timeout_s=180
    ) as base_url:
        yield base_url.removeprefix("http://")


@pytest.fixture(scope="module")
def imgembed(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``imgembed serve`` on the checkpoint the export was traced from; yields ``host:port``."""
    log = tmp_path_factory.mktemp("imgembed_server") / "server.log"
    args = ["--model", "sam2.1-hiera-tiny", "--weights", str(tiny_checkpoint), "--device", "cpu"]
    with imgembed_server(args, log_path=log) as base_url:
        yield base_url.removeprefix("http://")


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    """A 320x240 picture with a bright disc on a dark gradient."""
    rows, cols = np.mgrid[0:240, 0:320]
    disc = ((rows - 120) ** 2 + (cols - 160) ** 2 < 70**2)[..., None]
    background = np.stack([rows / 3, cols / 4, np.full_like(rows, 40)], axis=-1)
    pixels = np.where(disc, np.array([230, 200, 60]), background)
    return Image.fromarray(pixels.astype(np.uint8))


def _get(url: str, path: str) -> Any:
    response = httpx.get(f"http://{url}{path}", timeout=30)
    assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
    return response.json()


def _tensors(metadata: dict[str, Any]) -> dict[str, list[tuple[str, str, list[int]]]]:
    return {
        kind: [
            (t["name"], t["datatype"], [int(size) for size in t["shape"]]) for t in metadata[kind]
        ]
        for kind in ("inputs", "outputs")
    }


def test_only_the_missing_onnxruntime_backend_stops_the_onnxruntime_configs(
    triton: str, triton_log: Path
) -> None:
    response = httpx.post(f"http://{triton}/v2/repository/index", json={}, timeout=30)
    assert response.status_code == 200, response.text
    index = {model["name"]: model for model in response.json()}
    assert set(index) == {"sam2_encoder", "sam2_decoder", *ONNXRUNTIME_NAMES.values(), BENT}
    for name in ("sam2_encoder", "sam2_decoder"):
        assert index[name]["state"] == "READY", index[name]
    for name in ONNXRUNTIME_NAMES.values():
        # Past Triton's config checks (a version was created), then no backend library.
        assert index[name] == {
            "name": name,
            "version": "1",
            "state": "UNAVAILABLE",
            "reason": MISSING_BACKEND,
        }
    # A config error stops a model at the checks, before any version or backend: Triton's
    # index lists the folder alone and its log says why.
    assert index[BENT] == {"name": BENT}
    log = triton_log.read_text(encoding="utf-8", errors="replace")
    assert BENT_REASON in log
    failed_polls = [line for line in log.splitlines() if "Poll failed" in line]
    assert len(failed_polls) == 1, failed_polls


def test_metadata_and_config_endpoints_report_the_seed_tensors(triton: str, imgembed: str) -> None:
    for name, expected in (("sam2_encoder", ENCODER_TENSORS), ("sam2_decoder", DECODER_TENSORS)):
        metadata = _get(triton, f"/v2/models/{name}")
        assert metadata["name"] == name
        assert metadata["versions"] == ["1"]
        assert _tensors(metadata) == expected
        # imgembed's own v2 model of the same name reports the same tensors, and one input of
        # its own: the encoder also takes encoded image files (image_bytes, BYTES).
        ours = _tensors(_get(imgembed, f"/v2/models/{name}"))
        assert ours["outputs"] == expected["outputs"]
        assert [t for t in ours["inputs"] if t[0] != "image_bytes"] == expected["inputs"]

    encoder = _get(triton, "/v2/models/sam2_encoder/config")
    assert encoder["backend"] == "python"
    assert encoder["max_batch_size"] == 8
    assert encoder["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert encoder["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert [(t["name"], t["data_type"], t["dims"]) for t in encoder["input"]] == [
        ("image", "TYPE_FP32", [3, 1024, 1024])
    ]
    decoder = _get(triton, "/v2/models/sam2_decoder/config")
    assert decoder["backend"] == "python"
    assert decoder["max_batch_size"] == 0
    assert [(t["name"], t.get("optional", False)) for t in decoder["input"]] == [
        ("image_embed", False),
        ("high_res_feats_0", False),
        ("high_res_feats_1", False),
        ("point_coords", False),
        ("point_labels", False),
        ("mask_input", True),
        ("has_mask_input", True),
    ]


def test_the_example_gives_imgembeds_features_and_masks(
    example: ModuleType, triton: str, imgembed: str, picture: Image.Image
) -> None:
    triton_features, triton_results = example.run(triton, picture, POINTS, BOXES)
    features, results = example.run(imgembed, picture, POINTS, BOXES)
    assert list(triton_features) == list(features)
    for name, value in features.items():
        error = relative_error(torch.tensor(triton_features[name]), torch.tensor(value))
        assert error < 1e-4, f"{name}: relative L2 {error:.2e}"
    assert [r.name for r in triton_results] == [r.name for r in results]
    assert len(results) == 6  # two clicks, a box, both clicks batched, the refined first click
    for ours, theirs in zip(triton_results, results, strict=True):
        agreement = (ours.mask == theirs.mask).mean()
        assert agreement > 0.999, f"{ours.name}: mask agreement {agreement:.5f}"
        low_res = ((ours.low_res_logits > 0) == (theirs.low_res_logits > 0)).mean()
        assert low_res > 0.999, f"{ours.name}: low-resolution agreement {low_res:.5f}"
        assert abs(ours.iou - theirs.iou) < 1e-3, ours.name


def _encoder_stats(triton: str) -> dict[str, Any]:
    (stats,) = _get(triton, "/v2/models/sam2_encoder/versions/1/stats")["model_stats"]
    return stats


def test_dynamic_batching_forms_batches_larger_than_one(
    example: ModuleType, triton: str, picture: Image.Image
) -> None:
    before = _encoder_stats(triton)
    pixels = example.preprocess(picture)  # [1,3,1024,1024]: each request carries one image

    def encode(_: int) -> dict[str, np.ndarray]:
        client = example.httpclient.InferenceServerClient(url=triton, network_timeout=120)
        try:
            return example.encode(client, pixels)
        finally:
            client.close()

    with ThreadPoolExecutor(CONCURRENT) as pool:
        answers = list(pool.map(encode, range(CONCURRENT)))
    for answer in answers[1:]:  # the same image in every batch position gives the same features
        for name, value in answer.items():
            np.testing.assert_allclose(value, answers[0][name], rtol=1e-4, atol=1e-5)

    after = _encoder_stats(triton)
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == CONCURRENT
    assert executions < CONCURRENT, f"{CONCURRENT} requests ran in {executions} executions"
    counts_before = {b["batch_size"]: b["compute_infer"]["count"] for b in before["batch_stats"]}
    grown = {
        int(b["batch_size"]): int(b["compute_infer"]["count"])
        - int(counts_before.get(b["batch_size"], 0))
        for b in after["batch_stats"]
    }
    assert any(size > 1 and count > 0 for size, count in grown.items()), grown
    assert sum(size * count for size, count in grown.items()) == CONCURRENT, grown
