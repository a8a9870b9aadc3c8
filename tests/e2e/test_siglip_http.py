"""SigLIP over real HTTP: vectors equal transformers' own processor + model, partial failures, the
OpenAI route, the seed's RunPod event, and every bad input.

The server runs in-process with a small SigLIP 2 model of the real FixRes design (seeded random
weights, saved with ``save_pretrained`` and loaded through imgembed's loader), next to a SAM 2 model
(to show a SAM 2 model is refused on SigLIP routes). Images are fetched from a loopback host only.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from servers import ImageHost, in_process_server
from siglip_checkpoints import (
    TINY_FIXRES,
    build_siglip_model,
    gemma_tokenizer,
    image_processor_of,
    photo_like,
    save_siglip_folder,
)

import imgembed.runpod as runpod_adapter
from imgembed.engine import Engine
from imgembed.models.siglip_loading import load_siglip
from imgembed.server.app import create_app
from imgembed.settings import (
    DEFAULT_BATCH_SIZE,
    SAM2_ENCODER_BATCH_SIZE_ON_CPU,
    FetchPolicy,
    InputLimits,
    ModelSpec,
    ServerConfig,
)

pytestmark = pytest.mark.e2e

COSINE_FLOOR = 1 - 1e-5
MAX_IMAGES = 4


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


PHOTO = photo_like(90, 120, seed=1)
OTHER = photo_like(70, 50, seed=2)


def config(folder: Path) -> ServerConfig:
    return ServerConfig(
        models=(
            ModelSpec("siglip2-base-patch16-224", weights=str(folder), device="cpu", warmup=False),
            ModelSpec("sam2.1-hiera-tiny", weights="dummy", device="cpu", warmup=False),
        ),
        limits=replace(InputLimits(), max_batch_images=MAX_IMAGES, max_texts=3, max_text_chars=40),
        fetch=replace(FetchPolicy(), allowed_hosts=("127.0.0.1/32",), timeout_s=2),
    )


def tiny_loader(folder: Path) -> Any:
    """The engine's SigLIP loader, building the small test design whatever the name."""

    def load(spec: ModelSpec, device: torch.device) -> Any:
        return load_siglip(TINY_FIXRES, str(folder), device=device)

    return load


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_siglip_model(TINY_FIXRES)
    return save_siglip_folder(model, TINY_FIXRES, tmp_path_factory.mktemp("siglip"))


@pytest.fixture(scope="module")
def reference(folder: Path) -> Any:
    from transformers import SiglipModel

    return SiglipModel.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def image_host() -> Iterator[ImageHost]:
    with ImageHost(png(PHOTO), slow_s=5.0) as host:
        yield host


@pytest.fixture(scope="module")
def server(folder: Path) -> Iterator[str]:
    engine = Engine(config(folder), loaders={"siglip": tiny_loader(folder)})
    with in_process_server(create_app(engine.config, engine=engine)) as base_url:
        yield base_url


def reference_image_vectors(reference: Any, images: list[np.ndarray]) -> np.ndarray:
    processor = image_processor_of(TINY_FIXRES)
    inputs = processor(images=[Image.fromarray(image) for image in images], return_tensors="pt")
    with torch.inference_mode():
        features = reference.get_image_features(pixel_values=inputs["pixel_values"])
    features = getattr(features, "pooler_output", features)
    return torch.nn.functional.normalize(features, dim=-1).numpy()


def reference_text_vectors(reference: Any, texts: list[str]) -> np.ndarray:
    tokens = gemma_tokenizer(TINY_FIXRES.vocab_size)(
        [text.lower() for text in texts],
        padding="max_length",
        max_length=64,
        truncation=True,
        return_tensors="pt",
    )
    with torch.inference_mode():
        features = reference.get_text_features(input_ids=tokens["input_ids"])
    features = getattr(features, "pooler_output", features)
    return torch.nn.functional.normalize(features, dim=-1).numpy()


def post(server: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
    if body is not None:
        kwargs["json"] = body
    return httpx.post(f"{server}{path}", timeout=120, **kwargs)


def assert_cosine(actual: list[float] | np.ndarray, expected: np.ndarray) -> None:
    vector = np.asarray(actual, dtype=np.float64)
    assert abs(np.linalg.norm(vector) - 1) < 1e-5
    assert float(vector @ expected) > COSINE_FLOOR


def test_batch_of_url_base64_and_data_uri_matches_transformers(
    server: str, image_host: ImageHost, reference: Any
) -> None:
    other_b64 = base64.b64encode(png(OTHER)).decode()
    images = [f"{image_host.base_url}/image", other_b64, f"data:image/png;base64,{other_b64}"]
    response = post(server, "/v1/siglip/embed", {"images": images})
    assert response.status_code == 200, response.text
    body = response.json()
    assert "warnings" not in body
    assert body["dimension"] == TINY_FIXRES.embedding_dim
    expected = reference_image_vectors(reference, [PHOTO, OTHER, OTHER])
    assert [entry["index"] for entry in body["embeddings"]] == [0, 1, 2]
    assert body["embeddings"][0]["image_url"] == images[0]
    assert body["embeddings"][1]["image_url"] is None
    for entry, vector in zip(body["embeddings"], expected, strict=True):
        assert_cosine(entry["vector"], vector)


def test_failed_images_are_warnings_and_the_rest_keep_their_order(
    server: str, image_host: ImageHost, reference: Any
) -> None:
    images = [
        f"{image_host.base_url}/image",
        f"{image_host.base_url}/missing",
        base64.b64encode(b"not an image at all").decode(),
        f"{image_host.base_url}/slow",
    ]
    body = post(server, "/v1/siglip/embed", {"images": images}).json()
    assert [entry["index"] for entry in body["embeddings"]] == [0]
    assert_cosine(body["embeddings"][0]["vector"], reference_image_vectors(reference, [PHOTO])[0])
    failed = body["warnings"]["failed_urls"]
    assert [entry["index"] for entry in failed] == [1, 2, 3]
    assert failed[0]["url"] == images[1]
    assert "404" in failed[0]["error"]
    assert failed[1]["code"] == "invalid_image"
    assert failed[1]["field"] == "images[2]"
    assert "timed out" in failed[2]["error"] or "timeout" in failed[2]["error"].lower()
    assert body["warnings"]["message"] == "3 of 4 images could not be processed"


def test_uploads_are_embedded_in_order(server: str, reference: Any) -> None:
    files = [
        ("files", ("a.png", png(PHOTO), "image/png")),
        ("files", ("b.png", png(OTHER), "image/png")),
    ]
    body = post(server, "/v1/siglip/embed", files=files).json()
    expected = reference_image_vectors(reference, [PHOTO, OTHER])
    for entry, vector in zip(body["embeddings"], expected, strict=True):
        assert_cosine(entry["vector"], vector)


def test_texts_match_transformers_and_search_images(server: str, reference: Any) -> None:
    texts = ["A Striped Swimsuit", "a red ball"]
    body = post(server, "/v1/siglip/embed-text", {"texts": texts}).json()
    expected = reference_text_vectors(reference, texts)
    for entry, vector in zip(body["embeddings"], expected, strict=True):
        assert_cosine(entry["vector"], vector)


def test_openai_route_mixes_images_and_texts_in_both_encodings(server: str, reference: Any) -> None:
    data_uri = "data:image/png;base64," + base64.b64encode(png(PHOTO)).decode()
    floats = post(server, "/v1/embeddings", {"input": [data_uri, "a red ball"]}).json()
    assert floats["object"] == "list"
    assert [item["index"] for item in floats["data"]] == [0, 1]
    assert_cosine(floats["data"][0]["embedding"], reference_image_vectors(reference, [PHOTO])[0])
    assert_cosine(
        floats["data"][1]["embedding"], reference_text_vectors(reference, ["a red ball"])[0]
    )
    packed = post(
        server, "/v1/embeddings", {"input": "a red ball", "encoding_format": "base64"}
    ).json()
    vector = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(vector, floats["data"][1]["embedding"], atol=1e-6)


def test_seed_runpod_event_gives_the_seed_response(
    folder: Path, image_host: ImageHost, reference: Any
) -> None:
    async def scenario() -> dict[str, Any]:
        engine = Engine(config(folder), loaders={"siglip": tiny_loader(folder)})
        await engine.start()
        runpod_adapter._engine = engine
        try:
            event = {
                "input": {
                    "images": [f"{image_host.base_url}/image", f"{image_host.base_url}/missing"]
                }
            }
            return await runpod_adapter.handler(event)
        finally:
            runpod_adapter._engine = None
            await engine.close()

    result = asyncio.run(scenario())
    assert [entry["image_url"] for entry in result["embeddings"]] == [
        f"{image_host.base_url}/image"
    ]
    assert_cosine(result["embeddings"][0]["vector"], reference_image_vectors(reference, [PHOTO])[0])
    assert result["warnings"]["failed_urls"][0]["url"] == f"{image_host.base_url}/missing"
    assert result["warnings"]["message"] == "1 of 2 images could not be processed"


BAD = [
    ("/v1/siglip/embed", {"images": []}, 400, "images", "non-empty list"),
    ("/v1/siglip/embed", {"images": "http://x"}, 400, "images", "non-empty list"),
    ("/v1/siglip/embed", {}, 400, "images", "non-empty list"),
    ("/v1/siglip/embed", {"images": ["a"] * (MAX_IMAGES + 1)}, 400, "images", f"at most {MAX_IMAGES}"),
    ("/v1/siglip/embed", {"images": ["http://127.0.0.1/a.png", 7]}, 400, "images[1]", "must be a non-empty string"),
    ("/v1/siglip/embed", {"images": [""]}, 400, "images[0]", "must be a non-empty string"),
    ("/v1/siglip/embed", {"images": ["x"], "model": "sam2.1-hiera-tiny"}, 404, "model", "is a SAM 2 model"),
    ("/v1/siglip/embed", {"images": ["x"], "model": "siglip2-giant-opt-patch16-384"}, 404, "model", "not served"),
    ("/v1/siglip/embed", {"images": ["x"], "colour": 1}, 400, "colour", "unknown field"),
    ("/v1/siglip/embed-text", {"texts": []}, 400, "texts", "non-empty list"),
    ("/v1/siglip/embed-text", {"texts": ["ok", "   "]}, 400, "texts[1]", "empty"),
    ("/v1/siglip/embed-text", {"texts": ["x" * 41]}, 400, "texts[0]", "at most 40"),
    ("/v1/siglip/embed-text", {"texts": [3]}, 400, "texts[0]", "must be a string"),
    ("/v1/siglip/embed-text", {"texts": ["a", "b", "c", "d"]}, 400, "texts", "at most 3"),
    ("/v1/embeddings", {"input": []}, 400, "input", "non-empty list"),
    ("/v1/embeddings", {"input": ["ok", 5]}, 400, "input[1]", "must be a string"),
    ("/v1/embeddings", {"input": ["ok", ""]}, 400, "input[1]", "empty"),
    ("/v1/embeddings", {"input": "ok", "dimensions": 7}, 400, "dimensions", "makes 32-dimensional"),
    ("/v1/embeddings", {"input": "ok", "encoding_format": "int8"}, 400, "encoding_format", "float"),
    ("/v1/embeddings", {"input": ["data:image/png;base64,AAAA"]}, 400, "input[0]", "image"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "field", "phrase"), BAD)
def test_bad_input_is_refused_and_the_server_keeps_serving(
    server: str, path: str, body: dict[str, Any], status: int, field: str, phrase: str
) -> None:
    response = post(server, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert phrase in error["message"], error
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200


def test_models_lists_both_families_with_batch_sizes_resolved(server: str) -> None:
    """Default batch size 0 resolves per model on the CPU: SAM 2's encoder off, SigLIP 2 on."""
    models = httpx.get(f"{server}/v1/models", timeout=10).json()["data"]
    families = {model["id"]: model["family"] for model in models}
    assert families == {TINY_FIXRES.name: "siglip", "sam2.1-hiera-tiny": "sam2"}
    batch_sizes = {model["id"]: model["batching"]["max_batch_size"] for model in models}
    assert batch_sizes == {
        TINY_FIXRES.name: DEFAULT_BATCH_SIZE,
        "sam2.1-hiera-tiny": SAM2_ENCODER_BATCH_SIZE_ON_CPU,
    }


def test_v2_protocol_with_tritonclient_matches_the_native_route(
    server: str, reference: Any
) -> None:
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient is a test extra")
    client = httpclient.InferenceServerClient(url=server.removeprefix("http://"))
    try:
        assert client.is_model_ready("siglip")
        assert client.is_model_ready(f"{TINY_FIXRES.name}_text")
        metadata = client.get_model_metadata("siglip")
        assert metadata["outputs"][0]["shape"] == [-1, TINY_FIXRES.embedding_dim]
        files = np.array([png(PHOTO), png(OTHER)], dtype=object)
        images = httpclient.InferInput("image_bytes", [2], "BYTES")
        images.set_data_from_numpy(files, binary_data=True)
        vectors = client.infer("siglip", [images]).as_numpy("embeddings")
        expected = reference_image_vectors(reference, [PHOTO, OTHER])
        for vector, reference_vector in zip(vectors, expected, strict=True):
            assert_cosine(vector, reference_vector)
        texts = httpclient.InferInput("text", [1], "BYTES")
        texts.set_data_from_numpy(np.array([b"A red ball"], dtype=object))
        text_vector = client.infer("siglip_text", [texts]).as_numpy("embeddings")[0]
        assert_cosine(text_vector, reference_text_vectors(reference, ["a red ball"])[0])
        broken = httpclient.InferInput("image_bytes", [1], "BYTES")
        broken.set_data_from_numpy(np.array([b"not an image"], dtype=object))
        with pytest.raises(Exception, match=r"image_bytes\[0\]"):
            client.infer("siglip", [broken])
    finally:
        client.close()
