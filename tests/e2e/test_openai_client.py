"""The official ``openai`` Python client against ``/v1/embeddings``, unchanged.

``OpenAI(base_url=".../v1").embeddings.create`` sends ``encoding_format: "base64"`` when the caller
names none and decodes the base64 float32 itself (``openai/lib/_parsing/_embeddings.py``), so both
the default and ``encoding_format="float"`` are tested. Every vector is compared with what the
native routes (``/v1/siglip/embed-text``, ``/v1/siglip/embed``) answer for the same input; errors
must reach the caller as the client's typed exceptions with the server's message naming the field;
the server requires an API key, which the client sends as ``Authorization: Bearer``.

The server runs in-process with a small SigLIP 2 model of the real FixRes design (seeded random
weights), as in test_siglip_http.py. Images are fetched from a loopback host only.
"""

from __future__ import annotations

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
from siglip_checkpoints import TINY_FIXRES, build_siglip_model, photo_like, save_siglip_folder

from imgembed.engine import Engine
from imgembed.models.siglip_loading import load_siglip
from imgembed.server.app import create_app
from imgembed.settings import FetchPolicy, InputLimits, ModelSpec, ServerConfig

openai = pytest.importorskip("openai", reason="openai is a test extra")

pytestmark = pytest.mark.e2e

API_KEY = "test-key-for-the-openai-client"
MODEL = TINY_FIXRES.name
DIMENSION = TINY_FIXRES.embedding_dim
MAX_IMAGES = 4
MAX_TEXTS = 3
ATOL = 1e-5


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


PHOTO = photo_like(90, 120, seed=1)
OTHER = photo_like(70, 50, seed=2)
OTHER_DATA_URI = "data:image/png;base64," + base64.b64encode(png(OTHER)).decode()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_siglip_model(TINY_FIXRES)
    return save_siglip_folder(model, TINY_FIXRES, tmp_path_factory.mktemp("siglip"))


@pytest.fixture(scope="module")
def image_host() -> Iterator[ImageHost]:
    with ImageHost(png(PHOTO)) as host:
        yield host


@pytest.fixture(scope="module")
def server(folder: Path) -> Iterator[str]:
    """imgembed serving only the small SigLIP model, with an API key."""
    config = ServerConfig(
        models=(
            ModelSpec("siglip2-base-patch16-224", weights=str(folder), device="cpu", warmup=False),
        ),
        limits=replace(
            InputLimits(), max_batch_images=MAX_IMAGES, max_texts=MAX_TEXTS, max_text_chars=40
        ),
        fetch=replace(FetchPolicy(), allowed_hosts=("127.0.0.1/32",), timeout_s=2),
        api_key=API_KEY,
    )

    def load(spec: ModelSpec, device: torch.device) -> Any:
        return load_siglip(TINY_FIXRES, str(folder), device=device)

    engine = Engine(config, loaders={"siglip": load})
    with in_process_server(create_app(engine.config, engine=engine)) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[Any]:
    """The official client, as a user would configure it for imgembed; no retries, short timeout."""
    with openai.OpenAI(
        base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=30
    ) as openai_client:
        yield openai_client


def native(server: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        f"{server}{path}",
        json=body,
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def native_text_vectors(server: str, texts: list[str]) -> np.ndarray:
    body = native(server, "/v1/siglip/embed-text", {"texts": texts, "model": MODEL})
    assert [entry["index"] for entry in body["embeddings"]] == list(range(len(texts)))
    return np.array([entry["vector"] for entry in body["embeddings"]], dtype=np.float32)


def native_image_vectors(server: str, images: list[str]) -> np.ndarray:
    body = native(server, "/v1/siglip/embed", {"images": images, "model": MODEL})
    assert "warnings" not in body, body["warnings"]
    return np.array([entry["vector"] for entry in body["embeddings"]], dtype=np.float32)


def vectors_of(response: Any) -> np.ndarray:
    """The response's vectors as ``[N,D]``, after checking the envelope the client parsed."""
    assert isinstance(response, openai.types.CreateEmbeddingResponse)
    assert response.object == "list"
    assert response.model == MODEL
    assert [item.index for item in response.data] == list(range(len(response.data)))
    for item in response.data:
        assert item.object == "embedding"
        assert isinstance(item.embedding, list), type(item.embedding)
        assert len(item.embedding) == DIMENSION
        assert all(isinstance(value, float) for value in item.embedding)
    usage = response.usage
    assert isinstance(usage.prompt_tokens, int)
    assert isinstance(usage.total_tokens, int)
    assert 0 <= usage.prompt_tokens == usage.total_tokens
    vectors = np.array([item.embedding for item in response.data], dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    return vectors


@pytest.mark.parametrize("encoding_format", [None, "base64", "float"])
def test_one_string_equals_the_native_text_route(
    server: str, client: Any, encoding_format: str | None
) -> None:
    """``None`` is the client's default: it asks for base64 and decodes it itself."""
    options = {} if encoding_format is None else {"encoding_format": encoding_format}
    response = client.embeddings.create(model=MODEL, input="A Striped Swimsuit", **options)
    if encoding_format == "base64":  # asked for explicitly: the client hands back the string
        assert isinstance(response.data[0].embedding, str)
        vector = np.frombuffer(base64.b64decode(response.data[0].embedding), "<f4")
        vectors = vector[None]
    else:
        vectors = vectors_of(response)
    assert vectors.shape == (1, DIMENSION)
    expected = native_text_vectors(server, ["A Striped Swimsuit"])
    np.testing.assert_allclose(vectors, expected, atol=ATOL)


@pytest.mark.parametrize("encoding_format", [None, "float"])
def test_a_list_of_strings_keeps_its_order(
    server: str, client: Any, encoding_format: str | None
) -> None:
    texts = ["a red ball", "A Striped Swimsuit", "a dog on grass"]
    options = {} if encoding_format is None else {"encoding_format": encoding_format}
    vectors = vectors_of(client.embeddings.create(model=MODEL, input=texts, **options))
    assert vectors.shape == (len(texts), DIMENSION)
    np.testing.assert_allclose(vectors, native_text_vectors(server, texts), atol=ATOL)
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3)


@pytest.mark.parametrize("encoding_format", [None, "float"])
def test_image_url_and_data_uri_equal_the_native_image_route(
    server: str, client: Any, image_host: ImageHost, encoding_format: str | None
) -> None:
    images = [f"{image_host.base_url}/image", OTHER_DATA_URI]
    options = {} if encoding_format is None else {"encoding_format": encoding_format}
    vectors = vectors_of(client.embeddings.create(model=MODEL, input=images, **options))
    np.testing.assert_allclose(vectors, native_image_vectors(server, images), atol=ATOL)


def test_images_and_texts_mixed_keep_input_order(
    server: str, client: Any, image_host: ImageHost
) -> None:
    url = f"{image_host.base_url}/image"
    inputs = ["a red ball", OTHER_DATA_URI, url, "a dog on grass"]
    vectors = vectors_of(client.embeddings.create(model=MODEL, input=inputs))
    texts = native_text_vectors(server, ["a red ball", "a dog on grass"])
    images = native_image_vectors(server, [OTHER_DATA_URI, url])
    np.testing.assert_allclose(vectors, [texts[0], images[0], images[1], texts[1]], atol=ATOL)


def test_default_and_float_encodings_agree_exactly(client: Any) -> None:
    """The base64 the client decodes is the same float32 as the float list."""
    texts = ["a red ball", OTHER_DATA_URI]
    decoded = vectors_of(client.embeddings.create(model=MODEL, input=texts))
    floats = vectors_of(client.embeddings.create(model=MODEL, input=texts, encoding_format="float"))
    np.testing.assert_array_equal(decoded, floats)


def test_dimensions_equal_to_the_models_size_and_user_are_accepted(client: Any) -> None:
    response = client.embeddings.create(
        model=MODEL, input="a red ball", dimensions=DIMENSION, user="someone"
    )
    assert vectors_of(response).shape == (1, DIMENSION)


def test_async_client_works_too(server: str) -> None:
    import asyncio

    async def call() -> Any:
        async with openai.AsyncOpenAI(
            base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=30
        ) as async_client:
            return await async_client.embeddings.create(model=MODEL, input=["a red ball"])

    vectors = vectors_of(asyncio.run(call()))
    np.testing.assert_allclose(vectors, native_text_vectors(server, ["a red ball"]), atol=ATOL)


BAD = [
    # (create() arguments, exception, field, phrase in the message)
    ({"model": "siglip2-giant-opt-patch16-384", "input": "x"}, "NotFoundError", "model", "not served"),
    ({"model": "no-such-model", "input": "x"}, "NotFoundError", "model", "no-such-model"),
    ({"input": []}, "BadRequestError", "input", "non-empty list"),
    ({"input": ""}, "BadRequestError", "input[0]", "empty"),
    ({"input": ["ok", "   "]}, "BadRequestError", "input[1]", "empty"),
    ({"input": ["ok"] * (MAX_TEXTS + 1)}, "BadRequestError", "input", f"at most {MAX_TEXTS}"),
    ({"input": [OTHER_DATA_URI] * (MAX_IMAGES + 1)}, "BadRequestError", "input", f"at most {MAX_IMAGES}"),
    ({"input": ["ok", "x" * 41]}, "BadRequestError", "input[1]", "at most 40"),
    ({"input": [[1, 2, 3]]}, "BadRequestError", "input[0]", "must be a string"),
    ({"input": "ok", "dimensions": 7}, "BadRequestError", "dimensions", f"makes {DIMENSION}-dimensional"),
    ({"input": ["ok", "data:image/png;base64,AAAA"]}, "BadRequestError", "input[1]", "image"),
]  # fmt: skip


@pytest.mark.parametrize(("arguments", "exception", "field", "phrase"), BAD)
def test_bad_requests_raise_the_clients_typed_error_naming_the_field(
    server: str, client: Any, arguments: dict[str, Any], exception: str, field: str, phrase: str
) -> None:
    with pytest.raises(getattr(openai, exception)) as raised:
        client.embeddings.create(**{"model": MODEL, **arguments})
    error = raised.value
    assert error.body["field"] == field, error.body
    assert phrase in error.body["message"], error.body
    # What the caller sees: openai 2+ shows the message, 1.x the whole JSON error.
    assert field in str(error)
    assert phrase in str(error)
    assert error.code == error.body["code"]
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200


def test_an_image_url_that_fails_fails_the_request_naming_its_input(
    client: Any, image_host: ImageHost
) -> None:
    inputs = ["a red ball", f"{image_host.base_url}/missing"]
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model=MODEL, input=inputs)
    assert raised.value.body["field"] == "input[1]"
    assert "404" in raised.value.message


def test_a_wrong_api_key_raises_authentication_error(server: str) -> None:
    """(The client itself refuses an empty key before sending anything.)"""
    with (
        openai.OpenAI(
            base_url=f"{server}/v1", api_key="wrong-key", max_retries=0, timeout=30
        ) as wrong,
        pytest.raises(openai.AuthenticationError) as raised,
    ):
        wrong.embeddings.create(model=MODEL, input="a red ball")
    assert raised.value.status_code == 401
    assert raised.value.body["field"] == "authorization"
    assert "IMGEMBED_API_KEY" in raised.value.message
