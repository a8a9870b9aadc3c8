"""The SigLIP models of the Triton export in a real Triton server, beside imgembed.

The server is the ``tritonserver`` 2.51 of ``nvidia-pytriton`` 0.7.0 (``scripts/triton_server.sh``),
on the CPU, bound to 127.0.0.1. It loads two repositories of the session's small random-weight
FixRes SigLIP 2 model (tests/export/conftest.py):

- the ``--backend python`` variant: the ensembles ``siglip`` / ``siglip_text`` (and the model's
  own names), their Python preprocessing steps and the encoders running ``model.onnx`` with ONNX
  Runtime in the Python backend; these serve. Its encoders wait up to 0.5 s for a batch to fill
  (instead of the default 2 ms), so that concurrent requests, which reach the encoder one by one
  after the single-instance preprocessing step on 2 CPU cores, join one batch;
- the default (``onnxruntime``) variant under the name ``ort_siglip``: its Python steps load, its
  encoders pass Triton's config checks and then find no ``onnxruntime`` backend library (the only
  failure allowed), and its ensembles pass theirs and wait for those encoders.

imgembed serves the same weights in-process over real HTTP. ``examples/triton_siglip_client.py``
runs against both and must get the same embeddings; the metadata and config endpoints report
imgembed's tensors; concurrent requests show Triton's dynamic batcher forming batches larger than
one; a file that is no image is a 400 naming it on both servers.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from checkpoints import relative_error
from example_programs import load_example
from imagefactory import encode, gradient_rgb
from PIL import Image
from servers import LOOPBACK, background_server, free_port, in_process_server
from siglip_checkpoints import TINY_FIXRES, photo_like

from imgembed.engine import Engine
from imgembed.export.siglip_onnx import SiglipExportResult
from imgembed.export.triton_config import DEFAULT_SIGLIP_SETTINGS, TritonRepositorySettings
from imgembed.export.triton_siglip import SiglipTritonResult, export_siglip_triton_from_onnx
from imgembed.models.siglip_loading import load_siglip
from imgembed.server.app import create_app
from imgembed.settings import ModelSpec, ServerConfig

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "triton_server.sh"
EXAMPLE = ROOT / "examples" / "triton_siglip_client.py"
QUEUE_DELAY_US = 500_000
CONCURRENT = 4
DIMENSION = TINY_FIXRES.embedding_dim
MISSING_BACKEND = (
    "Invalid argument: unable to find backend library for backend 'onnxruntime', try specifying "
    "runtime on the model configuration."
)
FILES = [
    encode(Image.fromarray(photo_like(90, 120, seed=1)), "PNG"),
    encode(Image.fromarray(photo_like(70, 50, seed=2)), "JPEG", quality=90),
    encode(
        Image.fromarray(np.dstack([gradient_rgb(40, 60), np.full((40, 60), 128, np.uint8)])), "PNG"
    ),
]
TEXTS = ["a photo of a cat", "A DIAGRAM OF THE SOLAR SYSTEM", "naïve café", "the quick " * 30]
IMAGE_TENSORS = {
    "inputs": [("image_bytes", "BYTES", [-1])],
    "outputs": [("embeddings", "FP32", [-1, DIMENSION])],
}
TEXT_TENSORS = {"inputs": [("text", "BYTES", [-1])], "outputs": IMAGE_TENSORS["outputs"]}


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return load_example("triton_siglip_client.py")


@pytest.fixture(scope="module")
def repositories(
    siglip_export: SiglipExportResult, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, SiglipTritonResult]:
    folder = tmp_path_factory.mktemp("triton_siglip")
    python = TritonRepositorySettings(
        backend="python",
        siglip=replace(DEFAULT_SIGLIP_SETTINGS, max_queue_delay_microseconds=QUEUE_DELAY_US),
    )
    onnxruntime = TritonRepositorySettings(siglip_name="ort_siglip", siglip_model_aliases=False)
    return {
        "python": export_siglip_triton_from_onnx(
            siglip_export.out_dir, folder / "python", settings=python
        ),
        "onnxruntime": export_siglip_triton_from_onnx(
            siglip_export.out_dir, folder / "onnxruntime", settings=onnxruntime
        ),
    }


@pytest.fixture(scope="module")
def triton_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tritonserver_siglip") / "tritonserver.log"


@pytest.fixture(scope="module")
def triton(
    tritonserver: None, repositories: dict[str, SiglipTritonResult], triton_log: Path
) -> Iterator[str]:
    """``tritonserver`` on free loopback ports; yields ``host:port``."""
    http_port = free_port()
    command = [str(SCRIPT), "run"]
    for repository in repositories.values():
        command += ["--model-repository", str(repository.out_dir)]
    for endpoint, port in (("http", http_port), ("grpc", free_port()), ("metrics", free_port())):
        command += [f"--{endpoint}-address", LOOPBACK, f"--{endpoint}-port", str(port)]
    command += ["--exit-on-error=false", "--exit-timeout-secs=5", "--allow-gpu-metrics=false"]
    with background_server(
        command, {}, http_port, "/v2/health/live", triton_log, timeout_s=180
    ) as base_url:
        yield base_url.removeprefix("http://")


@pytest.fixture(scope="module")
def imgembed(siglip_folder: Path) -> Iterator[str]:
    """imgembed's HTTP server (uvicorn, as ``imgembed serve`` runs it) on the same weights."""
    spec = ModelSpec("siglip2-base-patch16-224", weights=str(siglip_folder), device="cpu")
    config = ServerConfig(models=(replace(spec, warmup=False),))

    def load(spec: ModelSpec, device: torch.device) -> Any:
        return load_siglip(TINY_FIXRES, str(siglip_folder), device=device)

    engine = Engine(config, loaders={"siglip": load})
    with in_process_server(create_app(engine.config, engine=engine)) as base_url:
        yield base_url.removeprefix("http://")


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


def test_the_python_variant_serves_and_the_onnxruntime_one_misses_only_its_backend(
    triton: str, repositories: dict[str, SiglipTritonResult], triton_log: Path
) -> None:
    response = httpx.post(f"http://{triton}/v2/repository/index", json={}, timeout=30)
    assert response.status_code == 200, response.text
    index = {model["name"]: model for model in response.json()}
    python, onnxruntime = repositories["python"].names, repositories["onnxruntime"].names
    assert set(index) == {*python.all(), *onnxruntime.all()}
    for name in python.all():
        assert index[name]["state"] == "READY", index[name]
    for name in (onnxruntime.preprocess, onnxruntime.tokenize):
        assert index[name]["state"] == "READY", index[name]
    for name in (onnxruntime.image_encoder, onnxruntime.text_encoder):
        # Past Triton's config checks (a version was created), then no backend library.
        assert index[name] == {
            "name": name,
            "version": "1",
            "state": "UNAVAILABLE",
            "reason": MISSING_BACKEND,
        }
    # Its ensembles passed their checks and wait for the encoder: Triton lists the folder alone
    # and its log names the missing backend as the only reason.
    log = triton_log.read_text(encoding="utf-8", errors="replace")
    for name, step in (
        (onnxruntime.image, onnxruntime.image_encoder),
        (onnxruntime.text, onnxruntime.text_encoder),
    ):
        assert index[name] == {"name": name}
        assert (
            f"ensemble '{name}' depends on '{step}' which has no loaded version. Model '{step}' "
            f"loading failed with error: version 1 is at UNAVAILABLE state: {MISSING_BACKEND}"
        ) in log
    failed_polls = [line for line in log.splitlines() if "Poll failed" in line]
    assert failed_polls == [], failed_polls


def test_metadata_and_config_endpoints_report_imgembeds_tensors(
    triton: str, imgembed: str, repositories: dict[str, SiglipTritonResult]
) -> None:
    names = repositories["python"].names
    for name, alias, expected in (
        ("siglip", names.aliases[0], IMAGE_TENSORS),
        ("siglip_text", names.aliases[1], TEXT_TENSORS),
    ):
        metadata = _get(triton, f"/v2/models/{name}")
        assert metadata["name"] == name
        assert metadata["versions"] == ["1"]
        assert _tensors(metadata) == expected
        assert _tensors(_get(triton, f"/v2/models/{alias}")) == expected
        assert _tensors(_get(imgembed, f"/v2/models/{name}")) == expected

    for name, tensor, dims in (
        (names.image_encoder, ("pixel_values", "TYPE_FP32"), [3, 224, 224]),
        (names.text_encoder, ("input_ids", "TYPE_INT64"), [64]),
    ):
        config = _get(triton, f"/v2/models/{name}/config")
        assert config["backend"] == "python"
        assert config["max_batch_size"] == 32
        assert config["dynamic_batching"]["preferred_batch_size"] == [8, 16, 32]
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == QUEUE_DELAY_US
        assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
            (*tensor, dims)
        ]
    ensemble = _get(triton, "/v2/models/siglip/config")
    assert ensemble["platform"] == "ensemble"
    steps = ensemble["ensemble_scheduling"]["step"]
    assert [step["model_name"] for step in steps] == [names.preprocess, names.image_encoder]


def test_the_example_gives_imgembeds_embeddings(
    example: ModuleType, triton: str, imgembed: str
) -> None:
    triton_images, triton_texts = example.run(triton, FILES, TEXTS)
    images, texts = example.run(imgembed, FILES, TEXTS)
    assert triton_images.shape == images.shape == (len(FILES), DIMENSION)
    assert triton_texts.shape == texts.shape == (len(TEXTS), DIMENSION)
    for ours, theirs in ((triton_images, images), (triton_texts, texts)):
        error = relative_error(torch.tensor(ours), torch.tensor(theirs))
        assert error < 1e-4, f"relative L2 {error:.2e}"
    # The model's own name answers the same as siglip, on Triton as on imgembed.
    alias_images, alias_texts = example.run(triton, FILES, TEXTS, TINY_FIXRES.name)
    np.testing.assert_array_equal(alias_images, triton_images)
    np.testing.assert_array_equal(alias_texts, triton_texts)


def _stats(triton: str, model: str) -> dict[str, Any]:
    (stats,) = _get(triton, f"/v2/models/{model}/versions/1/stats")["model_stats"]
    return stats


def _batches_grown(before: dict[str, Any], after: dict[str, Any]) -> dict[int, int]:
    counts = {b["batch_size"]: b["compute_infer"]["count"] for b in before["batch_stats"]}
    return {
        int(b["batch_size"]): int(b["compute_infer"]["count"]) - int(counts.get(b["batch_size"], 0))
        for b in after["batch_stats"]
    }


@pytest.mark.parametrize("kind", ["image", "text"])
def test_dynamic_batching_joins_concurrent_requests(
    example: ModuleType, triton: str, repositories: dict[str, SiglipTritonResult], kind: str
) -> None:
    names = repositories["python"].names
    encoder = names.image_encoder if kind == "image" else names.text_encoder
    before = _stats(triton, encoder)

    def one(index: int) -> np.ndarray:
        client = example.httpclient.InferenceServerClient(url=triton, network_timeout=120)
        try:
            if kind == "image":
                return example.embed_images(client, [FILES[0]])
            return example.embed_texts(client, [TEXTS[0]])
        finally:
            client.close()

    with ThreadPoolExecutor(CONCURRENT) as pool:
        answers = list(pool.map(one, range(CONCURRENT)))
    for answer in answers[1:]:  # the same item in every batch position gives the same embedding
        np.testing.assert_allclose(answer, answers[0], rtol=1e-4, atol=1e-6)

    after = _stats(triton, encoder)
    assert after["inference_count"] - before["inference_count"] == CONCURRENT
    executions = after["execution_count"] - before["execution_count"]
    assert executions < CONCURRENT, f"{CONCURRENT} requests ran in {executions} executions"
    grown = _batches_grown(before, after)
    assert any(size > 1 and count > 0 for size, count in grown.items()), grown
    assert sum(size * count for size, count in grown.items()) == CONCURRENT, grown


def test_a_file_that_is_no_image_is_a_400_naming_it_on_both_servers(
    example: ModuleType, triton: str, imgembed: str
) -> None:
    body = {
        "inputs": [
            {"name": "image_bytes", "shape": [2], "datatype": "BYTES", "data": ["aGk=", "aGk="]}
        ]
    }
    for server in (triton, imgembed):
        response = httpx.post(f"http://{server}/v2/models/siglip/infer", json=body, timeout=60)
        assert response.status_code == 400, (server, response.text)
        assert "image_bytes[0]" in response.json()["error"], response.text
        images, _ = example.run(server, FILES[:1], TEXTS[:1])  # the next request is answered
        assert images.shape == (1, DIMENSION)
