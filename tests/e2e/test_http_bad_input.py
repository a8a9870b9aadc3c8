"""Every bad input of issue 2 through a real HTTP server: 4xx naming the field, server keeps serving.

The server runs untrained (``--weights dummy``) weights: these tests are about the request path,
not the numbers. URL tests fetch only from a loopback image host; the loopback refusal uses
``[::1]``, which the server refuses before connecting.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from imagefactory import encode, gradient_rgb, png_header_only
from PIL import Image
from servers import ImageHost, imgembed_server

pytestmark = pytest.mark.e2e

MAX_BODY_BYTES = 3_000_000
FETCH_MAX_BYTES = 1_000_000
PNG = encode(Image.fromarray(gradient_rgb()), "PNG")
PNG_B64 = base64.b64encode(PNG).decode()


@pytest.fixture(scope="module")
def image_host() -> Iterator[ImageHost]:
    with ImageHost(PNG, slow_s=5.0, huge_bytes=8 * FETCH_MAX_BYTES) as host:
        yield host


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "IMGEMBED_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "IMGEMBED_FETCH_TIMEOUT_S": "1",
        "IMGEMBED_FETCH_MAX_BYTES": str(FETCH_MAX_BYTES),
        "IMGEMBED_FETCH_MAX_REDIRECTS": "3",
        "IMGEMBED_FETCH_ALLOWED_HOSTS": "127.0.0.1/32",
    }
    log = tmp_path_factory.mktemp("server") / "server.log"
    with imgembed_server(["--weights", "dummy"], env, log_path=log) as base_url:
        yield base_url


def post_embed(server: str, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{server}/v1/sam2/embed", timeout=60, **kwargs)  # type: ignore[arg-type]


def assert_refused(
    response: httpx.Response, status: int, field: str | None, phrase: str, server: str
) -> None:
    """The response is the documented error, and the server still answers."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert phrase in error["message"], error
    assert error["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "field", "phrase"),
    [
        ({}, 400, "image_b64", "no image given"),
        ({"image_b64": PNG_B64, "input_image_url": "http://127.0.0.1/x"}, 400, "image_b64", "both given"),
        ({"image_b64": "%%%not base64%%%"}, 400, "image_b64", "not valid base64"),
        ({"image_b64": base64.b64encode(b"hello, not an image").decode()}, 400, "image_b64", "not a recognised image"),
        ({"image_b64": base64.b64encode(PNG[: len(PNG) // 2]).decode()}, 400, "image_b64", "truncated or corrupt"),
        ({"image_b64": base64.b64encode(encode(Image.new("RGB", (1, 1)), "PNG")).decode()}, 400, "image_b64", "at least 2 pixels"),
        ({"image_b64": base64.b64encode(png_header_only(0, 0)).decode()}, 400, "image_b64", "not a recognised image"),
        ({"image_b64": base64.b64encode(png_header_only(10000, 10000)).decode()}, 413, "image_b64", "too many pixels"),
        ({"image_b64": PNG_B64, "action": "segment"}, 400, "action", "embed_image"),
        ({"image_b64": PNG_B64, "dtype": "float64"}, 400, "dtype", "'float32', 'float16' or 'bfloat16'"),
        ({"image_b64": PNG_B64, "model": "sam3-giant"}, 404, "model", "not served here"),
        ({"image_b64": PNG_B64, "resize_longer_side": 512}, 400, "resize_longer_side", "must be 1024"),
        ({"image_b64": PNG_B64, "encoding": "pickle"}, 400, "encoding", "npz_base64"),
        ({"image_b64": PNG_B64, "include_high_res": "perhaps"}, 400, "include_high_res", "boolean"),
        ({"image_b64": PNG_B64, "surprise": 1}, 400, "surprise", "unknown field"),
    ],
    ids=[
        "no-image", "both-images", "invalid-base64", "not-an-image", "truncated", "1x1",
        "0-pixel", "decompression-bomb", "unknown-action", "unknown-dtype", "unknown-model",
        "resize-longer-side", "unknown-encoding", "bad-boolean", "unknown-field",
    ],
)  # fmt: skip
def test_bad_json_bodies(server: str, body: dict, status: int, field: str, phrase: str) -> None:
    assert_refused(post_embed(server, json=body), status, field, phrase, server)


def test_body_that_is_not_json(server: str) -> None:
    response = post_embed(server, content=b"{nope", headers={"content-type": "application/json"})
    assert_refused(response, 400, "body", "not valid JSON", server)


def test_body_that_is_a_json_list(server: str) -> None:
    assert_refused(post_embed(server, json=[PNG_B64]), 400, None, "must be a JSON object", server)


def test_unsupported_content_type(server: str) -> None:
    response = post_embed(server, content=b"x", headers={"content-type": "text/plain"})
    assert_refused(response, 415, "content-type", "application/json", server)


def test_body_over_the_limit_by_content_length(server: str) -> None:
    body = json.dumps({"image_b64": "A" * MAX_BODY_BYTES}).encode()
    response = post_embed(server, content=body, headers={"content-type": "application/json"})
    assert_refused(response, 413, "body", "the limit is 3,000,000 bytes", server)


def test_body_over_the_limit_when_streamed_without_length(server: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"image_b64": "'
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"A" * 65536
        yield b'"}'

    response = post_embed(server, content=chunks(), headers={"content-type": "application/json"})
    assert_refused(response, 413, "body", "the limit is 3,000,000 bytes", server)


def test_upload_that_is_not_an_image(server: str) -> None:
    response = post_embed(server, files={"file": ("x.png", b"\x00" * 100, "image/png")})
    assert_refused(response, 400, "file", "not a recognised image", server)


def test_upload_under_an_unexpected_field_name(server: str) -> None:
    response = post_embed(server, files={"picture": ("x.png", PNG, "image/png")})
    assert_refused(response, 400, "picture", "upload the image as 'file'", server)


def test_upload_with_bad_form_option(server: str) -> None:
    response = post_embed(
        server, files={"file": ("x.png", PNG, "image/png")}, data={"dtype": "int8"}
    )
    assert_refused(response, 400, "dtype", "float32", server)


@pytest.mark.parametrize(
    ("path", "status", "phrase"),
    [
        ("/missing", 400, "404"),
        ("/loop", 400, "redirect"),
        ("/slow", 400, "timed out"),
        ("/huge", 413, "limit is 1000000 bytes"),
    ],
)
def test_bad_urls(server: str, image_host: ImageHost, path: str, status: int, phrase: str) -> None:
    response = post_embed(server, json={"input_image_url": image_host.base_url + path})
    assert_refused(response, status, "input_image_url", phrase, server)


def test_loopback_url_outside_the_allow_list_is_refused(server: str, image_host: ImageHost) -> None:
    port = image_host.base_url.rsplit(":", 1)[1]
    response = post_embed(server, json={"input_image_url": f"http://[::1]:{port}/image"})
    assert_refused(response, 400, "input_image_url", "server-side request forgery", server)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x.png", "not a url"])
def test_non_http_urls_are_refused(server: str, url: str) -> None:
    response = post_embed(server, json={"input_image_url": url})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "input_image_url"


def test_the_server_still_embeds_after_all_of_that(server: str, image_host: ImageHost) -> None:
    response = post_embed(
        server, json={"input_image_url": image_host.base_url + "/redirect-to-image"}
    )
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["shape"] == [256, 64, 64]
    assert payload["meta"]["orig_size"] == [48, 64]
    assert payload["weights"]["untrained"] is True
    assert np.isfinite(payload["timings_ms"]["encode"])


def test_unknown_route_and_method_use_the_error_shape(server: str) -> None:
    assert_refused(
        httpx.get(f"{server}/v1/sam2/embed", timeout=10), 405, None, "Method Not Allowed", server
    )
    assert_refused(httpx.get(f"{server}/v1/nothing", timeout=10), 404, None, "Not Found", server)


def test_malformed_multipart_uses_the_error_shape(server: str) -> None:
    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    response = post_embed(server, content=b"--xyz\r\nnot a part header\r\n", headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] in ("http_error", "invalid_input", "invalid_image")
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200


def test_two_uploads_are_refused(server: str) -> None:
    files = [("file", ("a.png", PNG, "image/png")), ("file", ("b.png", PNG, "image/png"))]
    response = post_embed(server, files=files)
    assert_refused(response, 400, "body", "files", server)


def test_openapi_documents_the_embed_route(server: str) -> None:
    spec = httpx.get(f"{server}/openapi.json", timeout=10).json()
    content = spec["paths"]["/v1/sam2/embed"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= content.keys()
    assert httpx.get(f"{server}/docs", timeout=10).status_code == 200
