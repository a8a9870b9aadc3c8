"""SigLIP 2 routes over real HTTP with a fake model: image and text batches, partial failures,
uploads, the OpenAI route and client, the v2 names, and every bad input.

The fast twin of tests/e2e/test_siglip_http.py and test_openai_client.py (which prove the numbers
against transformers with a small real model): here each answer is checked against what the fake
computes for its own input, so order and routing are proven, not the model.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as httpclient
from fakes import (
    SAM2_MODEL,
    SIGLIP_MODEL,
    FakeServer,
    expected_siglip_image_vector,
    expected_siglip_text_vector,
    fake_config,
    fake_server,
    fake_spec,
)
from PIL import Image
from servers import ImageHost
from siglip_checkpoints import photo_like

from imgembed.settings import BatchingSettings, FetchPolicy, InputLimits

MAX_IMAGES = 4
MAX_TEXTS = 3
DIMENSION = 768
API_KEY = "fast-key"


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


PHOTO = png(photo_like(90, 120, seed=1))
OTHER = png(photo_like(70, 50, seed=2))
OTHER_B64 = base64.b64encode(OTHER).decode()
OTHER_DATA_URI = f"data:image/png;base64,{OTHER_B64}"


def config(**changes: Any) -> Any:
    return fake_config(
        fake_spec(SIGLIP_MODEL, batching=BatchingSettings(8, 50, 64)),
        fake_spec(SAM2_MODEL),
        limits=replace(
            InputLimits(), max_batch_images=MAX_IMAGES, max_texts=MAX_TEXTS, max_text_chars=40
        ),
        fetch=replace(FetchPolicy(), allowed_hosts=("127.0.0.1/32",), timeout_s=1),
        **changes,
    )


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with fake_server(config()) as running:
        yield running


@pytest.fixture(scope="module")
def server(fake: FakeServer) -> str:
    return fake.url


@pytest.fixture(scope="module")
def image_host() -> Iterator[ImageHost]:
    with ImageHost(PHOTO, slow_s=3.0) as host:
        yield host


def post(server: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
    if body is not None:
        kwargs["json"] = body
    return httpx.post(f"{server}{path}", timeout=60, **kwargs)


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def image_vector(fake: FakeServer, image: bytes) -> np.ndarray:
    return expected_siglip_image_vector(image, fake.model(SIGLIP_MODEL))


def text_vector(fake: FakeServer, text: str) -> np.ndarray:
    return expected_siglip_text_vector(text, fake.model(SIGLIP_MODEL))


def assert_vector(actual: Any, expected: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float32), expected, atol=1e-6)


def test_batch_of_url_base64_and_data_uri_keeps_each_images_vector(
    fake: FakeServer, image_host: ImageHost
) -> None:
    images = [f"{image_host.base_url}/image", OTHER_B64, OTHER_DATA_URI]
    body = ok(post(fake.url, "/v1/siglip/embed", {"images": images}))
    assert "warnings" not in body
    assert body["dimension"] == DIMENSION
    assert body["model"] == SIGLIP_MODEL
    assert [entry["index"] for entry in body["embeddings"]] == [0, 1, 2]
    assert body["embeddings"][0]["image_url"] == images[0]
    assert body["embeddings"][1]["image_url"] is None
    expected = [image_vector(fake, PHOTO), image_vector(fake, OTHER), image_vector(fake, OTHER)]
    for entry, vector in zip(body["embeddings"], expected, strict=True):
        assert_vector(entry["vector"], vector)
    assert not np.allclose(expected[0], expected[1])


def test_failed_images_are_warnings_and_the_rest_keep_their_order(
    fake: FakeServer, image_host: ImageHost
) -> None:
    images = [
        f"{image_host.base_url}/image",
        f"{image_host.base_url}/missing",
        base64.b64encode(b"not an image at all").decode(),
        f"{image_host.base_url}/slow",
    ]
    body = ok(post(fake.url, "/v1/siglip/embed", {"images": images}))
    assert [entry["index"] for entry in body["embeddings"]] == [0]
    assert_vector(body["embeddings"][0]["vector"], image_vector(fake, PHOTO))
    failed = body["warnings"]["failed_urls"]
    assert [entry["index"] for entry in failed] == [1, 2, 3]
    assert failed[0]["url"] == images[1]
    assert "404" in failed[0]["error"]
    assert failed[1]["code"] == "invalid_image"
    assert failed[1]["field"] == "images[2]"
    assert "timed out" in failed[2]["error"] or "timeout" in failed[2]["error"].lower()
    assert body["warnings"]["message"] == "3 of 4 images could not be processed"


def test_uploads_are_embedded_in_order(fake: FakeServer) -> None:
    files = [("files", ("a.png", PHOTO, "image/png")), ("files", ("b.png", OTHER, "image/png"))]
    body = ok(post(fake.url, "/v1/siglip/embed", files=files))
    for entry, image in zip(body["embeddings"], (PHOTO, OTHER), strict=True):
        assert_vector(entry["vector"], image_vector(fake, image))


def test_concurrent_image_requests_share_batches_and_keep_their_answers(fake: FakeServer) -> None:
    pictures = [png(photo_like(40 + index, 50, seed=10 + index)) for index in range(6)]
    tower = fake.model(SIGLIP_MODEL).image_tower
    before = len(tower.batches)

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=fake.url, timeout=60) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post(
                            "/v1/siglip/embed",
                            json={"images": [base64.b64encode(picture).decode()]},
                        )
                        for picture in pictures
                    )
                )
            )

    for response, picture in zip(asyncio.run(send()), pictures, strict=True):
        assert_vector(ok(response)["embeddings"][0]["vector"], image_vector(fake, picture))
    batches = tower.batches[before:]
    assert sum(batches) == 6
    assert max(batches) > 1, batches


def test_texts_have_their_own_vectors_lower_cased(fake: FakeServer) -> None:
    texts = ["A Striped Swimsuit", "a red ball"]
    body = ok(post(fake.url, "/v1/siglip/embed-text", {"texts": texts}))
    assert [entry["index"] for entry in body["embeddings"]] == [0, 1]
    for entry, text in zip(body["embeddings"], texts, strict=True):
        assert_vector(entry["vector"], text_vector(fake, text))
    assert_vector(body["embeddings"][0]["vector"], text_vector(fake, "a striped swimsuit"))


def test_openai_route_mixes_images_and_texts_in_both_encodings(fake: FakeServer) -> None:
    data_uri = "data:image/png;base64," + base64.b64encode(PHOTO).decode()
    floats = ok(post(fake.url, "/v1/embeddings", {"input": [data_uri, "a red ball"]}))
    assert floats["object"] == "list"
    assert [item["index"] for item in floats["data"]] == [0, 1]
    assert_vector(floats["data"][0]["embedding"], image_vector(fake, PHOTO))
    assert_vector(floats["data"][1]["embedding"], text_vector(fake, "a red ball"))
    packed = ok(
        post(fake.url, "/v1/embeddings", {"input": "a red ball", "encoding_format": "base64"})
    )
    vector = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), "<f4")
    np.testing.assert_array_equal(vector, np.asarray(floats["data"][1]["embedding"], np.float32))


BAD = [
    ("/v1/siglip/embed", {"images": []}, 400, "images", "non-empty list"),
    ("/v1/siglip/embed", {"images": "http://x"}, 400, "images", "non-empty list"),
    ("/v1/siglip/embed", {}, 400, "images", "non-empty list"),
    ("/v1/siglip/embed", {"images": ["a"] * (MAX_IMAGES + 1)}, 400, "images", f"at most {MAX_IMAGES}"),
    ("/v1/siglip/embed", {"images": ["http://127.0.0.1/a.png", 7]}, 400, "images[1]", "must be a non-empty string"),
    ("/v1/siglip/embed", {"images": [""]}, 400, "images[0]", "must be a non-empty string"),
    ("/v1/siglip/embed", {"images": ["x"], "model": SAM2_MODEL}, 404, "model", "is a SAM 2 model"),
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
    ("/v1/embeddings", {"input": "ok", "dimensions": 7}, 400, "dimensions", f"makes {DIMENSION}-dimensional"),
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
    assert error["request_id"] == response.headers["x-request-id"]
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200


def test_models_lists_both_families_with_batch_sizes_resolved(server: str) -> None:
    models = httpx.get(f"{server}/v1/models", timeout=10).json()["data"]
    assert {model["id"]: model["family"] for model in models} == {
        SIGLIP_MODEL: "siglip",
        SAM2_MODEL: "sam2",
    }
    siglip = models[0]
    assert siglip["embedding_dim"] == DIMENSION
    assert siglip["text_max_length"] == 64
    assert siglip["image_processing"]["family"] == "fixres"


def test_v2_protocol_with_tritonclient_matches_the_native_route(fake: FakeServer) -> None:
    client = httpclient.InferenceServerClient(url=fake.url.removeprefix("http://"))
    try:
        assert client.is_model_ready("siglip")
        assert client.is_model_ready(f"{SIGLIP_MODEL}_text")
        metadata = client.get_model_metadata("siglip")
        assert metadata["outputs"][0]["shape"] == [-1, DIMENSION]
        images = httpclient.InferInput("image_bytes", [2], "BYTES")
        images.set_data_from_numpy(np.array([PHOTO, OTHER], dtype=object), binary_data=True)
        vectors = client.infer("siglip", [images]).as_numpy("embeddings")
        assert_vector(vectors[0], image_vector(fake, PHOTO))
        assert_vector(vectors[1], image_vector(fake, OTHER))
        texts = httpclient.InferInput("text", [1], "BYTES")
        texts.set_data_from_numpy(np.array([b"A red ball"], dtype=object))
        text = client.infer("siglip_text", [texts]).as_numpy("embeddings")[0]
        assert_vector(text, text_vector(fake, "a red ball"))
        broken = httpclient.InferInput("image_bytes", [1], "BYTES")
        broken.set_data_from_numpy(np.array([b"not an image"], dtype=object))
        with pytest.raises(Exception, match=r"image_bytes\[0\]"):
            client.infer("siglip", [broken])
    finally:
        client.close()


# The official openai client ------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed() -> Iterator[FakeServer]:
    with fake_server(config(api_key=API_KEY)) as running:
        yield running


@pytest.fixture(scope="module")
def openai_client(keyed: FakeServer) -> Iterator[Any]:
    with openai.OpenAI(
        base_url=f"{keyed.url}/v1", api_key=API_KEY, max_retries=0, timeout=30
    ) as client:
        yield client


def vectors_of(response: Any) -> np.ndarray:
    rows = []
    for item in response.data:
        embedding = item.embedding
        if isinstance(embedding, str):
            embedding = np.frombuffer(base64.b64decode(embedding), "<f4")
        rows.append(np.asarray(embedding, np.float32))
    return np.stack(rows)


@pytest.mark.parametrize("encoding_format", [None, "base64", "float"])
def test_openai_client_texts_and_images_in_order(
    keyed: FakeServer, openai_client: Any, encoding_format: str | None
) -> None:
    options = {} if encoding_format is None else {"encoding_format": encoding_format}
    response = openai_client.embeddings.create(
        model=SIGLIP_MODEL, input=["a red ball", OTHER_DATA_URI, "A Cat"], **options
    )
    vectors = vectors_of(response)
    assert vectors.shape == (3, DIMENSION)
    assert_vector(vectors[0], text_vector(keyed, "a red ball"))
    assert_vector(vectors[1], image_vector(keyed, OTHER))
    assert_vector(vectors[2], text_vector(keyed, "a cat"))
    assert response.model == SIGLIP_MODEL


def test_async_openai_client_works_too(keyed: FakeServer) -> None:
    async def call() -> Any:
        async with openai.AsyncOpenAI(
            base_url=f"{keyed.url}/v1", api_key=API_KEY, max_retries=0, timeout=30
        ) as client:
            return await client.embeddings.create(model=SIGLIP_MODEL, input=["a red ball"])

    assert_vector(vectors_of(asyncio.run(call()))[0], text_vector(keyed, "a red ball"))


OPENAI_BAD = [
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


@pytest.mark.parametrize(("arguments", "exception", "field", "phrase"), OPENAI_BAD)
def test_openai_client_raises_its_typed_errors_naming_the_field(
    keyed: FakeServer,
    openai_client: Any,
    arguments: dict[str, Any],
    exception: str,
    field: str,
    phrase: str,
) -> None:
    with pytest.raises(getattr(openai, exception)) as raised:
        openai_client.embeddings.create(**{"model": SIGLIP_MODEL, **arguments})
    error = raised.value
    assert error.body["field"] == field, error.body
    assert phrase in error.body["message"], error.body
    assert error.code == error.body["code"]
    assert httpx.get(f"{keyed.url}/health", timeout=10).status_code == 200


def test_a_wrong_api_key_raises_authentication_error(keyed: FakeServer) -> None:
    with (
        openai.OpenAI(
            base_url=f"{keyed.url}/v1", api_key="wrong-key", max_retries=0, timeout=30
        ) as wrong,
        pytest.raises(openai.AuthenticationError) as raised,
    ):
        wrong.embeddings.create(model=SIGLIP_MODEL, input="a red ball")
    assert raised.value.status_code == 401
    assert raised.value.body["field"] == "authorization"
