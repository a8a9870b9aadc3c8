"""The compute dtype reaches every place a client reads it, and SAM 2's feature store holds one
dtype (issue 18, item 5), with fake models: ``/v1/models`` (the model and its cache), every SAM 2
and SigLIP 2 response over HTTP, the v2 model configuration, the RunPod handler, the CLI's outputs
and the Python client; a store given features of mixed dtypes (what autocast produces) keeps them
in its one dtype and counts the bytes that dtype takes.

Each server runs once in float32 and once in bfloat16 (CPU autocast), so a field that is only
ever ``"float32"`` would fail."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fakes import (
    SAM2_MODEL,
    SIGLIP_MODEL,
    FakeEngine,
    FakeServer,
    fake_config,
    fake_server,
    fake_spec,
)
from imagefactory import encode, gradient_rgb
from PIL import Image

import imgembed.runpod as runpod_adapter
from imgembed.cli import main
from imgembed.client import ImgembedClient
from imgembed.engine.feature_cache import features_nbytes
from imgembed.engine.feature_store import FeatureStore
from imgembed.models.sam2 import Sam2Features
from imgembed.preprocess.sam2_frame import FrameMapping

PNG = encode(Image.fromarray(gradient_rgb(48, 64)), "PNG")
PNG_B64 = base64.b64encode(PNG).decode()
MIB = 1024 * 1024
BYTES_PER_IMAGE = {"float32": 16 * MIB, "bfloat16": 8 * MIB}
"""The three SAM 2 maps (4,194,304 numbers) at 4 or 2 bytes each."""


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[FakeServer, str]]:
    compute_dtype = request.param
    config = fake_config(
        fake_spec(SAM2_MODEL, compute_dtype=compute_dtype),
        fake_spec(SIGLIP_MODEL, compute_dtype=compute_dtype),
    )
    with fake_server(config) as running:
        yield running, compute_dtype


def maps(features: Sam2Features) -> tuple[torch.Tensor, ...]:
    return (features.image_embed, features.high_res_feats_0, features.high_res_feats_1)


def post(server: FakeServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{server.url}{path}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_models_list_the_compute_dtype_and_the_caches_dtype(server: tuple[FakeServer, str]) -> None:
    running, compute_dtype = server
    models = httpx.get(f"{running.url}/v1/models", timeout=10).json()["data"]
    assert {model["id"]: model["compute_dtype"] for model in models} == {
        SAM2_MODEL: compute_dtype,
        SIGLIP_MODEL: compute_dtype,
    }
    sam2 = next(model for model in models if model["id"] == SAM2_MODEL)
    assert sam2["cache"]["dtype"] == compute_dtype


def test_the_cache_holds_what_the_compute_dtype_takes(server: tuple[FakeServer, str]) -> None:
    running, compute_dtype = server
    pixels = gradient_rgb(40, 56)[::-1].copy()  # an image no other test sends
    body = {"image_b64": base64.b64encode(encode(Image.fromarray(pixels), "PNG")).decode()}
    before = running.model(SAM2_MODEL).features.stats.bytes
    payload = post(running, "/v1/sam2/embed", {**body, "dtype": "float32"})
    assert payload["cache_hit"] is False
    assert running.model(SAM2_MODEL).features.stats.bytes - before == BYTES_PER_IMAGE[compute_dtype]
    entry = running.model(SAM2_MODEL).features.cached(payload["image_id"])
    assert {tensor.dtype for tensor in maps(entry.features)} == {getattr(torch, compute_dtype)}


def test_a_float32_embedding_says_what_precision_computed_it(
    server: tuple[FakeServer, str],
) -> None:
    running, compute_dtype = server
    payload = post(running, "/v1/sam2/embed", {"image_b64": PNG_B64, "dtype": "float32"})
    assert payload["dtype"] == "float32"
    assert payload["compute_dtype"] == compute_dtype
    with ImgembedClient(running.url) as client:
        binary = client.sam2_embed(PNG, encoding="binary")
        segmentation = client.sam2_segment(image_id=payload["image_id"], points=[[10, 10]])
    assert binary.dtype == "float32"
    assert binary.compute_dtype == compute_dtype
    assert segmentation.compute_dtype == compute_dtype


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/sam2/segment", {"image_b64": PNG_B64, "points": [[10, 12]]}),
        ("/v1/sam2/segment-everything", {"image_b64": PNG_B64, "points_per_side": 2}),
        ("/v1/siglip/embed", {"images": [PNG_B64]}),
        ("/v1/siglip/embed-text", {"texts": ["a striped swimsuit"]}),
    ],
)
def test_every_response_carries_the_compute_dtype_beside_the_device(
    server: tuple[FakeServer, str], path: str, body: dict[str, Any]
) -> None:
    running, compute_dtype = server
    payload = post(running, path, body)
    assert payload["device"] == "cpu"
    assert payload["compute_dtype"] == compute_dtype


def test_v2_model_configuration_names_the_compute_dtype(server: tuple[FakeServer, str]) -> None:
    running, compute_dtype = server
    for name in ("sam2_encoder", "siglip"):
        config = httpx.get(f"{running.url}/v2/models/{name}/config", timeout=10).json()
        assert config["parameters"]["imgembed_compute_dtype"] == {"string_value": compute_dtype}


# --- RunPod and the CLI, which build their own engines from the variable ----------------------


def test_runpod_responses_carry_the_compute_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGEMBED_WEIGHTS", "dummy")
    monkeypatch.setenv("IMGEMBED_WARMUP", "false")
    monkeypatch.setenv("IMGEMBED_DEVICE", "cpu")
    monkeypatch.setenv("IMGEMBED_COMPUTE_DTYPE", "bfloat16")
    monkeypatch.setattr(runpod_adapter, "Engine", FakeEngine)
    monkeypatch.setattr(runpod_adapter, "_engine", None)

    async def scenario() -> list[dict[str, Any]]:
        jobs = [
            {"input": {"action": "embed_image", "image_b64": PNG_B64, "dtype": "float32"}},
            {"input": {"action": "segment", "image_b64": PNG_B64, "points": [[5, 5]]}},
        ]
        try:
            return [await runpod_adapter.handler(job) for job in jobs]
        finally:
            engine, runpod_adapter._engine = runpod_adapter._engine, None
            if engine is not None:
                await engine.close()

    embedded, segmented = asyncio.run(scenario())
    assert embedded["dtype"] == "float32"
    assert embedded["compute_dtype"] == "bfloat16"
    assert segmented["compute_dtype"] == "bfloat16"


@pytest.fixture
def fake_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("imgembed.engine.Engine", FakeEngine)
    monkeypatch.setenv("IMGEMBED_WARMUP", "false")
    monkeypatch.delenv("IMGEMBED_COMPUTE_DTYPE", raising=False)


def test_cli_outputs_carry_the_compute_dtype(
    fake_cli: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(PNG)
    flags = ["--weights", "dummy", "--device", "cpu", "--compute-dtype", "bfloat16"]
    output = tmp_path / "features.npz"
    assert main(["embed", str(image), "-o", str(output), *flags]) == 0
    with np.load(output) as archive:
        meta = json.loads(str(archive["meta_json"]))
    assert meta["compute_dtype"] == "bfloat16"
    assert meta["dtype"] == "float32"
    capsys.readouterr()
    masks = tmp_path / "mask.png"
    assert main(["segment", str(image), "--point", "5,5", "-o", str(masks), *flags]) == 0
    assert json.loads(capsys.readouterr().out)["compute_dtype"] == "bfloat16"
    records = tmp_path / "everything.json"
    command = ["segment-everything", str(image), "-o", str(records), "--points-per-side", "2"]
    assert main([*command, *flags]) == 0
    assert json.loads(capsys.readouterr().out)["compute_dtype"] == "bfloat16"


# --- The feature store's one dtype ---------------------------------------------------------------


def autocast_like_features(batch: int = 1) -> Sam2Features:
    """What SAM 2's encoder gives under bfloat16 autocast: ``image_embed`` in float32 (level 2
    plus a float32 parameter), the high-resolution maps in bfloat16."""
    return Sam2Features(
        image_embed=torch.randn(batch, 256, 64, 64),
        high_res_feats_0=torch.randn(batch, 32, 256, 256, dtype=torch.bfloat16),
        high_res_feats_1=torch.randn(batch, 64, 128, 128, dtype=torch.bfloat16),
    )


def store_one(store: FeatureStore, features: Sam2Features) -> Any:
    mapping = FrameMapping.for_image(48, 64, 1024, "stretch")

    async def encode() -> tuple[Sam2Features, FrameMapping]:
        return features, mapping

    entry, hit = asyncio.run(store.get_or_encode("image", encode))
    assert not hit
    return entry


def test_mixed_dtypes_are_stored_in_the_stores_one_dtype() -> None:
    mixed = autocast_like_features()
    assert features_nbytes(mixed) == 10 * MIB  # what the cache held before: not 8, not 16
    store = FeatureStore("sam2", 64 * MIB, dtype=torch.bfloat16)
    entry = store_one(store, mixed)
    assert {tensor.dtype for tensor in maps(entry.features)} == {torch.bfloat16}
    assert entry.nbytes == store.stats.bytes == 8 * MIB
    torch.testing.assert_close(
        entry.features.image_embed, mixed.image_embed.to(torch.bfloat16), rtol=0, atol=0
    )
    assert entry.features.high_res_feats_0 is mixed.high_res_feats_0, "no copy when in dtype"
    assert store.describe()["dtype"] == "bfloat16"


def test_a_view_into_a_batch_is_stored_in_its_own_storage_and_dtype() -> None:
    store = FeatureStore("sam2", 64 * MIB, dtype=torch.float32)
    batch = autocast_like_features(batch=2)
    entry = store_one(store, batch[1])
    assert entry.nbytes == store.stats.bytes == 16 * MIB
    for tensor in maps(entry.features):
        assert tensor.dtype == torch.float32
        assert tensor.untyped_storage().nbytes() == tensor.numel() * 4


def test_a_store_without_a_dtype_keeps_what_it_is_given() -> None:
    store = FeatureStore("sam2", 64 * MIB)
    entry = store_one(store, autocast_like_features())
    assert entry.nbytes == 10 * MIB
    assert store.describe()["dtype"] is None
