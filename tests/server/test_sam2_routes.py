"""SAM 2 routes over real HTTP with fake models: embed, segment and segment everything, every bad
input, request ids, the cache and the Python client.

The fast twin of tests/e2e/test_http_bad_input.py, test_segment_http.py and
test_segment_everything_http.py (which run a real untrained Hiera in a subprocess server): the same
refusals, plus answers checked against what the fake computes for each image and prompt.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import numpy as np
import pycocotools.mask as mask_utils
import pytest
from fakes import FakeServer, expected_sam2_arrays, fake_config, fake_server
from imagefactory import encode, gradient_rgb, png_header_only
from PIL import Image
from prometheus import metric
from servers import ImageHost

from imgembed.client import ImgembedClient, ImgembedClientError
from imgembed.settings import MEBIBYTE, FetchPolicy, InputLimits

MAX_BODY_BYTES = 3_000_000
FETCH_MAX_BYTES = 1_000_000
MAX_POINTS = 8
MAX_OBJECTS = 5
HEIGHT, WIDTH = 96, 128
PNG = encode(Image.fromarray(gradient_rgb(HEIGHT, WIDTH)), "PNG")
PNG_B64 = base64.b64encode(PNG).decode()
SMALL_PNG = encode(Image.fromarray(gradient_rgb()), "PNG")  # 64x48
SMALL_B64 = base64.b64encode(SMALL_PNG).decode()
OTHER_PNG = encode(Image.fromarray(np.ascontiguousarray(gradient_rgb(HEIGHT, WIDTH)[::-1])), "PNG")
OTHER_B64 = base64.b64encode(OTHER_PNG).decode()


@pytest.fixture(scope="module")
def image_host() -> Iterator[ImageHost]:
    with ImageHost(SMALL_PNG, slow_s=5.0, huge_bytes=8 * FETCH_MAX_BYTES) as host:
        yield host


def config(**changes: Any) -> Any:
    return fake_config(
        limits=replace(
            InputLimits(),
            max_body_bytes=MAX_BODY_BYTES,
            max_prompt_points=MAX_POINTS,
            max_prompt_objects=MAX_OBJECTS,
        ),
        fetch=replace(
            FetchPolicy(),
            timeout_s=1,
            max_bytes=FETCH_MAX_BYTES,
            max_redirects=3,
            allowed_hosts=("127.0.0.1/32",),
        ),
        **changes,
    )


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    with fake_server(config()) as running:
        yield running


@pytest.fixture(scope="module")
def server(fake: FakeServer) -> str:
    return fake.url


def post(server: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
    if body is not None:
        kwargs["json"] = body
    return httpx.post(f"{server}{path}", timeout=60, **kwargs)


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def decode_npz(text: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(base64.b64decode(text))) as archive:
        return dict(archive)


def assert_refused(
    response: httpx.Response, status: int, field: str | None, phrase: str, server: str
) -> None:
    """The documented error shape with the request's id, and a server that still answers."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert phrase in error["message"], error
    assert error["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200


# Embed ------------------------------------------------------------------------------------------


def test_each_image_gets_its_own_features_with_the_seed_fields(server: str) -> None:
    for image, image_b64 in ((PNG, PNG_B64), (OTHER_PNG, OTHER_B64)):
        body = ok(post(server, "/v1/sam2/embed", {"image_b64": image_b64}))
        assert body["type"] == "map"
        assert body["shape"] == [256, 64, 64]
        assert body["dtype"] == "float32"
        assert body["arrays"] == {
            "embedding": [256, 64, 64],
            "high_res_feats_0": [32, 256, 256],
            "high_res_feats_1": [64, 128, 128],
        }
        assert body["meta"]["orig_size"] == [HEIGHT, WIDTH]
        assert body["meta"]["model_id"] == "sam2.1-hiera-tiny"
        assert body["weights"] == {"source": "dummy", "location": "fake", "untrained": True}
        arrays = decode_npz(body["data"])
        expected = expected_sam2_arrays(image)
        np.testing.assert_allclose(arrays["embedding"], expected["image_embed"], atol=1e-6)
        np.testing.assert_allclose(
            arrays["high_res_feats_0"], expected["high_res_feats_0"], atol=1e-6
        )


def test_half_precision_binary_and_letterbox_through_the_client(server: str) -> None:
    with ImgembedClient(server) as client:
        half = client.sam2_embed(OTHER_PNG, dtype="float16", include_high_res=False)
        assert half.image_embed.dtype == np.float16
        assert half.high_res_feats_0 is None
        expected = expected_sam2_arrays(OTHER_PNG, dtype="float16", include_high_res=False)
        np.testing.assert_array_equal(half.image_embed, expected["image_embed"])
        boxed = client.sam2_embed(SMALL_PNG, resize_mode="letterbox", dtype="bfloat16")
        assert boxed.meta["resize_mode"] == "letterbox"
        assert boxed.meta["pad"] == [0, 0, 256, 0]  # 64x48 -> 1024x768, padded at the bottom
        assert boxed.image_embed.shape == (256, 64, 64)


def test_multipart_upload_with_form_options(server: str) -> None:
    response = post(
        server,
        "/v1/sam2/embed",
        files={"file": ("a.png", SMALL_PNG, "image/png")},
        data={"dtype": "float16", "include_high_res": "false"},
    )
    body = ok(response)
    assert body["dtype"] == "float16"
    assert list(body["arrays"]) == ["embedding"]


@pytest.mark.parametrize(
    ("body", "status", "field", "phrase"),
    [
        ({}, 400, "image_b64", "no image given"),
        ({"image_b64": SMALL_B64, "input_image_url": "http://127.0.0.1/x"}, 400, "image_b64", "both given"),
        ({"image_b64": "%%%not base64%%%"}, 400, "image_b64", "not valid base64"),
        ({"image_b64": base64.b64encode(b"hello, not an image").decode()}, 400, "image_b64", "not a recognised image"),
        ({"image_b64": base64.b64encode(SMALL_PNG[: len(SMALL_PNG) // 2]).decode()}, 400, "image_b64", "truncated or corrupt"),
        ({"image_b64": base64.b64encode(encode(Image.new("RGB", (1, 1)), "PNG")).decode()}, 400, "image_b64", "at least 2 pixels"),
        ({"image_b64": base64.b64encode(png_header_only(0, 0)).decode()}, 400, "image_b64", "not a recognised image"),
        ({"image_b64": base64.b64encode(png_header_only(10000, 10000)).decode()}, 413, "image_b64", "too many pixels"),
        ({"image_b64": SMALL_B64, "action": "segment"}, 400, "action", "embed_image"),
        ({"image_b64": SMALL_B64, "dtype": "float64"}, 400, "dtype", "'float32', 'float16' or 'bfloat16'"),
        ({"image_b64": SMALL_B64, "model": "sam3-giant"}, 404, "model", "not served here"),
        ({"image_b64": SMALL_B64, "model": "siglip2-base-patch16-224"}, 404, "model", "is a SigLIP 2 model"),
        ({"image_b64": SMALL_B64, "resize_longer_side": 512}, 400, "resize_longer_side", "must be 1024"),
        ({"image_b64": SMALL_B64, "encoding": "pickle"}, 400, "encoding", "npz_base64"),
        ({"image_b64": SMALL_B64, "include_high_res": "perhaps"}, 400, "include_high_res", "boolean"),
        ({"image_b64": SMALL_B64, "surprise": 1}, 400, "surprise", "unknown field"),
        ({"image_id": "0" * 32}, 404, "image_id", "send the image again"),
    ],
    ids=[
        "no-image", "both-images", "invalid-base64", "not-an-image", "truncated", "1x1",
        "0-pixel", "decompression-bomb", "unknown-action", "unknown-dtype", "unknown-model",
        "wrong-family", "resize-longer-side", "unknown-encoding", "bad-boolean", "unknown-field",
        "unknown-image-id",
    ],
)  # fmt: skip
def test_bad_embed_bodies(server: str, body: dict, status: int, field: str, phrase: str) -> None:
    assert_refused(post(server, "/v1/sam2/embed", body), status, field, phrase, server)


def test_body_that_is_not_json_a_list_or_of_another_type(server: str) -> None:
    headers = {"content-type": "application/json"}
    response = post(server, "/v1/sam2/embed", content=b"{nope", headers=headers)
    assert_refused(response, 400, "body", "not valid JSON", server)
    assert_refused(
        post(server, "/v1/sam2/embed", [SMALL_B64]), 400, None, "must be a JSON object", server
    )
    response = post(server, "/v1/sam2/embed", content=b"x", headers={"content-type": "text/plain"})
    assert_refused(response, 415, "content-type", "application/json", server)


def test_bodies_over_the_limit_by_length_and_when_streamed(server: str) -> None:
    body = json.dumps({"image_b64": "A" * MAX_BODY_BYTES}).encode()
    headers = {"content-type": "application/json"}
    response = post(server, "/v1/sam2/embed", content=body, headers=headers)
    assert_refused(response, 413, "body", "the limit is 3,000,000 bytes", server)

    def chunks() -> Iterator[bytes]:
        yield b'{"image_b64": "'
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"A" * 65536
        yield b'"}'

    response = post(server, "/v1/sam2/embed", content=chunks(), headers=headers)
    assert_refused(response, 413, "body", "the limit is 3,000,000 bytes", server)


def test_bad_uploads(server: str) -> None:
    not_image = post(server, "/v1/sam2/embed", files={"file": ("x.png", b"\0" * 100, "image/png")})
    assert_refused(not_image, 400, "file", "not a recognised image", server)
    misnamed = post(server, "/v1/sam2/embed", files={"picture": ("x.png", SMALL_PNG, "image/png")})
    assert_refused(misnamed, 400, "picture", "upload the image as 'file'", server)
    bad_option = post(
        server,
        "/v1/sam2/embed",
        files={"file": ("x.png", SMALL_PNG, "image/png")},
        data={"dtype": "int8"},
    )
    assert_refused(bad_option, 400, "dtype", "float32", server)
    files = [
        ("file", ("a.png", SMALL_PNG, "image/png")),
        ("file", ("b.png", SMALL_PNG, "image/png")),
    ]
    assert_refused(post(server, "/v1/sam2/embed", files=files), 400, "body", "files", server)
    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    malformed = post(server, "/v1/sam2/embed", content=b"--xyz\r\nnot a part\r\n", headers=headers)
    assert malformed.status_code == 400, malformed.text
    assert malformed.json()["error"]["code"] in ("http_error", "invalid_input", "invalid_image")


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
    response = post(server, "/v1/sam2/embed", {"input_image_url": image_host.base_url + path})
    assert_refused(response, status, "input_image_url", phrase, server)


def test_urls_outside_the_policy_are_refused_and_a_good_one_embeds(
    server: str, image_host: ImageHost
) -> None:
    port = image_host.base_url.rsplit(":", 1)[1]
    forged = post(server, "/v1/sam2/embed", {"input_image_url": f"http://[::1]:{port}/image"})
    assert_refused(forged, 400, "input_image_url", "server-side request forgery", server)
    for url in ("file:///etc/passwd", "ftp://127.0.0.1/x.png", "not a url"):
        response = post(server, "/v1/sam2/embed", {"input_image_url": url})
        assert response.status_code == 400, url
        assert response.json()["error"]["field"] == "input_image_url"
    redirected = image_host.base_url + "/redirect-to-image"
    body = ok(post(server, "/v1/sam2/embed", {"input_image_url": redirected}))
    assert body["meta"]["orig_size"] == [48, 64]
    # The same pixels sent as base64 are the same image: same id, from the cache.
    again = ok(post(server, "/v1/sam2/embed", {"image_b64": SMALL_B64}))
    assert again["image_id"] == body["image_id"]
    assert again["cache_hit"] is True


def test_unknown_routes_methods_and_the_openapi_document(server: str) -> None:
    assert_refused(
        httpx.get(f"{server}/v1/sam2/embed", timeout=10), 405, None, "Method Not Allowed", server
    )
    assert_refused(httpx.get(f"{server}/v1/nothing", timeout=10), 404, None, "Not Found", server)
    spec = httpx.get(f"{server}/openapi.json", timeout=10).json()
    for path in ("/v1/sam2/embed", "/v1/sam2/segment"):
        assert "application/json" in spec["paths"][path]["post"]["requestBody"]["content"]
    assert httpx.get(f"{server}/docs", timeout=10).status_code == 200


def test_request_ids_are_echoed_or_made(server: str) -> None:
    given = post(server, "/v1/sam2/embed", {}, headers={"x-request-id": "client-id_1:2.3"})
    assert given.headers["x-request-id"] == "client-id_1:2.3"
    assert given.json()["error"]["request_id"] == "client-id_1:2.3"
    bad = post(server, "/v1/sam2/embed", {}, headers={"x-request-id": "no spaces allowed"})
    made = bad.headers["x-request-id"]
    assert made != "no spaces allowed"
    assert len(made) == 32
    assert bad.json()["error"]["request_id"] == made
    fresh = ok(post(server, "/v1/sam2/embed", {"image_b64": SMALL_B64}))
    assert "image_id" in fresh


# Segment ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_id(server: str) -> str:
    return ok(post(server, "/v1/sam2/segment", {"image_b64": PNG_B64, "points": [[40, 30]]}))[
        "image_id"
    ]


def test_every_mask_format_describes_the_same_masks(server: str, image_id: str) -> None:
    prompt = {"image_id": image_id, "points": [[40, 30], [100, 70]], "point_labels": [1, 0]}
    by_format = {
        mask_format: ok(post(server, "/v1/sam2/segment", {**prompt, "mask_format": mask_format}))
        for mask_format in ("rle", "png", "polygons", "npz")
    }
    arrays = decode_npz(by_format["npz"]["masks_npz"])
    masks = arrays["masks"][0]  # [K,H,W]
    assert masks.shape == (3, HEIGHT, WIDTH)
    assert arrays["low_res_logits"].shape == (1, 3, 256, 256)
    for index in range(3):
        rle = by_format["rle"]["objects"][0]["masks"][index]["segmentation"]
        assert rle["size"] == [HEIGHT, WIDTH]
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), masks[index])
        png = by_format["png"]["objects"][0]["masks"][index]["segmentation"]
        picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))))
        np.testing.assert_array_equal(picture > 0, masks[index])
        entry = by_format["rle"]["objects"][0]["masks"][index]
        assert entry["area"] == int(masks[index].sum())
        logits = np.frombuffer(base64.b64decode(entry["low_res_logits"]), "<f4")
        np.testing.assert_array_equal(logits.reshape(256, 256), arrays["low_res_logits"][0, index])
    for body in by_format.values():
        assert body["image_size"] == [HEIGHT, WIDTH]
        assert body["cache_hit"] is True
        assert body["weights"]["untrained"] is True
    # The fake's masks are discs around the click, larger with the mask index, less the
    # background point's neighbourhood: the answer is the one for this prompt.
    assert masks[:, 30, 40].all()
    assert not masks[:, 70, 100].any()
    assert masks[0].sum() < masks[1].sum() < masks[2].sum()


def test_each_object_gets_the_masks_of_its_own_prompt(server: str, image_id: str) -> None:
    body = ok(
        post(
            server,
            "/v1/sam2/segment",
            {
                "image_id": image_id,
                "objects": [
                    {"points": [[10, 10]]},
                    {"box": [60, 40, 120, 90]},
                    {"points": [[110, 80]]},
                ],
                "multimask_output": False,
                "mask_format": "npz",
            },
        )
    )
    masks = decode_npz(body["masks_npz"])["masks"][:, 0]  # [3,H,W]
    assert masks.shape == (3, HEIGHT, WIDTH)
    assert masks[0, 10, 10]
    assert not masks[0, 80, 110]
    assert masks[2, 80, 110]
    assert not masks[2, 10, 10]
    rows, columns = np.nonzero(masks[1])
    assert rows.min() >= 39
    assert columns.min() >= 59
    assert rows.max() <= 90
    assert columns.max() <= 120
    assert masks[1, 65, 90]


def test_boxes_are_objects_and_single_mask_output(server: str, image_id: str) -> None:
    body = ok(
        post(
            server,
            "/v1/sam2/segment",
            {
                "image_id": image_id,
                "boxes": [[10, 10, 60, 50], [70, 20, 120, 90]],
                "multimask_output": False,
                "return_low_res_logits": False,
            },
        )
    )
    assert len(body["objects"]) == 2
    for item in body["objects"]:
        assert len(item["masks"]) == 1
        assert "low_res_logits" not in item["masks"][0]
        assert item["best_mask"] == 0


def test_second_prompt_on_the_same_image_hits_the_cache(fake: FakeServer) -> None:
    server = fake.url
    picture = np.roll(gradient_rgb(HEIGHT, WIDTH), 11, axis=0)
    image_b64 = base64.b64encode(encode(Image.fromarray(picture), "PNG")).decode()
    encodes = len(fake.model().encoder.batches)
    first = ok(post(server, "/v1/sam2/segment", {"image_b64": image_b64, "box": [5, 5, 50, 50]}))
    assert first["cache_hit"] is False
    assert "encode" in first["timings_ms"]
    again = ok(
        post(server, "/v1/sam2/segment", {"image_id": first["image_id"], "points": [[20, 20]]})
    )
    assert again["cache_hit"] is True
    assert "encode" not in again["timings_ms"]
    resent = ok(post(server, "/v1/sam2/segment", {"image_b64": image_b64, "points": [[9, 9]]}))
    assert resent["image_id"] == first["image_id"]
    assert resent["cache_hit"] is True
    assert len(fake.model().encoder.batches) == encodes + 1
    metrics = httpx.get(f"{server}/metrics", timeout=10).text
    assert metric(metrics, "imgembed_cache_events_total", event="hit") >= 2
    assert metric(metrics, "imgembed_cache_bytes") > 0


def test_embed_returns_an_image_id_that_segment_accepts(server: str) -> None:
    embedded = post(server, "/v1/sam2/embed", {"image_b64": PNG_B64, "encoding": "binary"})
    assert embedded.status_code == 200
    header_length = int(embedded.headers["inference-header-content-length"])
    header = json.loads(embedded.content[:header_length])
    body = ok(
        post(server, "/v1/sam2/segment", {"image_id": header["image_id"], "points": [[64, 48]]})
    )
    assert body["image_id"] == header["image_id"]


def test_segment_multipart_upload_with_json_form_values(server: str) -> None:
    response = post(
        server,
        "/v1/sam2/segment",
        files={"file": ("a.png", PNG, "image/png")},
        data={"points": "[[30, 40]]", "multimask_output": "false", "mask_format": "png"},
    )
    body = ok(response)
    assert len(body["objects"][0]["masks"]) == 1


MASK_OK = base64.b64encode(np.zeros((256, 256), "<f4").tobytes()).decode()
BAD_PROMPTS = [
    ({}, "points", "no prompt"),
    ({"points": []}, "points", "no prompt"),
    ({"mask_input": MASK_OK}, "points", "mask_input alone is not a prompt"),
    ({"points": [[500, 10]]}, "points", "outside the 128x96 image"),
    ({"points": [[-1, 10]]}, "points", "outside"),
    ({"box": [0, 0, 200, 50]}, "box", "outside"),
    ({"boxes": [[0, 0, 5, 5], [0, 0, 5, 500]]}, "boxes[1]", "outside"),
    ({"points": [[10, 10]], "point_labels": [5]}, "point_labels[0]", "must be one of"),
    ({"points": [[10, 10]], "point_labels": [True]}, "point_labels[0]", "must be one of"),
    ({"points": [[10, 10]], "point_labels": [1, 0]}, "point_labels", "2 labels for 1 points"),
    ({"points": [[10]]}, "points[0]", "must be [x, y]"),
    ({"points": [["a", 2]]}, "points[0]", "must be a number"),
    ({"points": [[float("nan"), 2]]}, "points[0]", "finite"),
    ({"points": [[float("inf"), 2]]}, "points[0]", "finite"),
    ({"box": [50, 10, 20, 40]}, "box", "x0 <= x1"),
    ({"box": [1, 2, 3]}, "box", "[x0, y0, x1, y1]"),
    ({"boxes": [[1, 2, 3, 4], [30, 40, 20, 50]]}, "boxes[1]", "x0 <= x1"),
    ({"boxes": []}, "boxes", "empty"),
    ({"box": [1, 2, 3, 4], "boxes": [[1, 2, 3, 4]]}, "box", "both given"),
    ({"points": [[1, 1]] * (MAX_POINTS + 1)}, "points", f"at most {MAX_POINTS}"),
    ({"boxes": [[1, 1, 2, 2]] * (MAX_OBJECTS + 1)}, "boxes", f"at most {MAX_OBJECTS}"),
    ({"points": [[1, 1]], "mask_input": "abc"}, "mask_input", "base64"),
    ({"points": [[1, 1]], "mask_input": MASK_OK[:100]}, "mask_input", "bytes"),
    ({"points": [[1, 1]], "mask_input": [[0.0] * 255] * 256}, "mask_input", "256x256"),
    ({"objects": []}, "objects", "empty"),
    ({"objects": [{"points": [[1, 1]]}], "points": [[1, 1]]}, "points", "both given"),
    (
        {"objects": [{"box": [1, 1, 2, 2]}, {"points": [[1, 1]], "point_labels": [9]}]},
        "objects[1].point_labels[0]",
        "must be one of",
    ),
    ({"objects": [{"points": [[1, 1]], "colour": 1}]}, "objects.0.colour", "unknown field"),
    ({"points": [[1, 1]], "mask_format": "gif"}, "mask_format", "rle"),
    ({"points": [[1, 1]], "max_hole_area": -1}, "max_hole_area", "greater than or equal"),
]


@pytest.mark.parametrize(("prompt", "field", "phrase"), BAD_PROMPTS)
def test_bad_prompts_are_refused(
    server: str, image_id: str, prompt: dict[str, Any], field: str, phrase: str
) -> None:
    body = json.dumps({"image_id": image_id, **prompt})  # json.dumps writes NaN and Infinity
    response = post(
        server, "/v1/sam2/segment", content=body, headers={"content-type": "application/json"}
    )
    assert_refused(response, 400, field, phrase, server)


def test_bad_image_sources_are_refused(server: str) -> None:
    def segment(body: dict[str, Any]) -> httpx.Response:
        return post(server, "/v1/sam2/segment", body)

    assert_refused(segment({"points": [[1, 1]]}), 400, "image_b64", "no image given", server)
    both = segment({"image_b64": PNG_B64, "image_id": "ab" * 16, "points": [[1, 1]]})
    assert_refused(both, 400, "image_b64", "both given", server)
    unknown = segment({"image_id": "0" * 32, "points": [[1, 1]]})
    assert_refused(unknown, 404, "image_id", "not in", server)
    garbage = segment({"image_b64": "bm90IGFuIGltYWdl", "points": [[1, 1]]})
    assert_refused(garbage, 400, "image_b64", "image", server)
    unknown_model = segment({"image_b64": PNG_B64, "points": [[1, 1]], "model": "sam9"})
    assert_refused(unknown_model, 404, "model", "not served", server)


def test_an_evicted_image_id_says_to_send_the_image_again() -> None:
    # Room for two images (16 MiB each in float32): the third pushes the first out.
    with fake_server(config(cache_bytes=2 * 16 * MEBIBYTE + 1024)) as small:
        first = ok(post(small.url, "/v1/sam2/segment", {"image_b64": PNG_B64, "points": [[5, 5]]}))
        for flip in (1, 2):
            picture = np.roll(gradient_rgb(HEIGHT, WIDTH), flip * 7, axis=1)
            png = base64.b64encode(encode(Image.fromarray(picture), "PNG")).decode()
            ok(post(small.url, "/v1/sam2/segment", {"image_b64": png, "points": [[5, 5]]}))
        response = post(
            small.url, "/v1/sam2/segment", {"image_id": first["image_id"], "points": [[5, 5]]}
        )
        assert_refused(response, 404, "image_id", "send the image again", small.url)


def test_python_client_returns_numpy_masks_and_refines(server: str) -> None:
    with ImgembedClient(server) as client:
        first = client.sam2_segment(PNG, points=np.array([[40.0, 30.0]]))
        assert first.masks.shape == (1, 3, HEIGHT, WIDTH)
        assert first.masks.dtype == bool
        assert first.masks[0, :, 30, 40].all()
        assert first.low_res_logits is not None
        best = int(first.scores[0].argmax())
        refined = client.sam2_segment(
            image_id=first.image_id,
            points=[[40, 30], [100, 70]],
            point_labels=[1, 0],
            mask_input=first.low_res_logits[0, best],
            multimask_output=False,
        )
        assert refined.cache_hit is True
        assert refined.best_masks().shape == (1, HEIGHT, WIDTH)
        np.testing.assert_array_equal(refined.areas[0], refined.masks[0].sum(axis=(1, 2)))
        with pytest.raises(ImgembedClientError) as caught:
            client.sam2_segment(image_id=first.image_id, points=[[1000, 1]])
        assert caught.value.status_code == 400
        assert caught.value.field == "points"


# Segment everything -----------------------------------------------------------------------------

OPEN = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
RECORD_KEYS = {
    "segmentation",
    "area",
    "bbox",
    "predicted_iou",
    "point_coords",
    "stability_score",
    "crop_box",
}


def test_everything_records_in_every_output_mode_describe_the_same_masks(server: str) -> None:
    by_mode = {
        mode: ok(
            post(
                server,
                "/v1/sam2/segment-everything",
                {"image_b64": PNG_B64, **OPEN, "output_mode": mode},
            )
        )
        for mode in ("coco_rle", "uncompressed_rle", "binary_mask")
    }
    masks = decode_npz(by_mode["binary_mask"]["masks_npz"])["masks"]
    count = by_mode["coco_rle"]["count"]
    assert count > 0
    assert masks.shape == (count, HEIGHT, WIDTH)
    for index in range(count):
        coco = by_mode["coco_rle"]["masks"][index]
        assert set(coco) == RECORD_KEYS
        rle = coco["segmentation"]
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), masks[index])
        assert coco["area"] == int(masks[index].sum())
        runs = by_mode["uncompressed_rle"]["masks"][index]["segmentation"]["counts"]
        assert sum(runs) == HEIGHT * WIDTH
        x, y, w, h = coco["bbox"]
        rows, columns = np.nonzero(masks[index])
        assert (x, y, x + w, y + h) == (columns.min(), rows.min(), columns.max(), rows.max())
        # Each record's mask is the fake's disc around its own grid point.
        (px, py) = coco["point_coords"][0]
        assert masks[index, min(int(py), HEIGHT - 1), min(int(px), WIDTH - 1)]
    body = by_mode["coco_rle"]
    assert body["image_size"] == [HEIGHT, WIDTH]
    assert body["crops"] == 1
    assert body["prompts"] >= 16
    assert body["weights"]["untrained"] is True


def test_everything_reads_the_whole_image_from_the_cache_and_encodes_every_crop(
    server: str,
) -> None:
    picture = np.ascontiguousarray(gradient_rgb(HEIGHT, WIDTH)[:, ::-1])
    image_b64 = base64.b64encode(encode(Image.fromarray(picture), "PNG")).decode()
    embedded = ok(post(server, "/v1/sam2/embed", {"image_b64": image_b64}))
    body = ok(
        post(
            server,
            "/v1/sam2/segment-everything",
            {"image_b64": image_b64, **OPEN, "points_per_side": 2},
        )
    )
    assert body["cache_hit"] is True
    assert body["image_id"] == embedded["image_id"]
    crops = ok(
        post(
            server,
            "/v1/sam2/segment-everything",
            {"image_b64": PNG_B64, **OPEN, "crop_n_layers": 1},
        )
    )
    assert crops["crops"] == 5
    assert all(len(record["crop_box"]) == 4 for record in crops["masks"])


@pytest.mark.parametrize(
    ("extra", "field", "phrase"),
    [
        ({"points_per_side": 0}, "points_per_side", "greater than or equal to 1"),
        ({"points_per_side": 1000}, "points_per_side", "less than or equal to 128"),
        ({"crop_n_layers": 9}, "crop_n_layers", "less than or equal to 3"),
        ({"box_nms_thresh": 2.0}, "box_nms_thresh", "box_nms_thresh"),
        ({"crop_n_layers": 2, "points_per_side": 2, "crop_n_points_downscale_factor": 2}, "crop_n_layers", "no points"),
        ({"output_mode": "png"}, "output_mode", "coco_rle"),
        ({"image_id": "ab" * 16}, "image_id", "unknown field"),
        ({"points_per_batch": 0}, "points_per_batch", "greater than or equal to 1"),
    ],
)  # fmt: skip
def test_bad_everything_settings_are_refused(
    server: str, extra: dict[str, Any], field: str, phrase: str
) -> None:
    response = post(server, "/v1/sam2/segment-everything", {"image_b64": PNG_B64, **extra})
    assert_refused(response, 400, field, phrase, server)
    no_image = post(server, "/v1/sam2/segment-everything", {"points_per_side": 4})
    assert_refused(no_image, 400, "image_b64", "no image", server)


def test_python_client_returns_everything_masks_with_records(server: str) -> None:
    with ImgembedClient(server) as client:
        masks, records = client.sam2_segment_everything(
            PNG, points_per_side=3, pred_iou_thresh=0, stability_score_thresh=0
        )
    assert masks.shape == (len(records), HEIGHT, WIDTH)
    assert len(records) > 0
