"""``POST /v1/sam2/segment`` through a real HTTP server: formats, the cache, and every bad input.

Untrained (``--weights dummy``) weights: these tests are about the request path; mask correctness
is proven against Meta's predictor in tests/pipelines/test_sam2_segment_parity.py.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from imagefactory import encode, gradient_rgb
from PIL import Image
from prometheus import metric
from servers import imgembed_server

pytestmark = pytest.mark.e2e

HEIGHT, WIDTH = 96, 128
PNG = encode(Image.fromarray(gradient_rgb(HEIGHT, WIDTH)), "PNG")
PNG_B64 = base64.b64encode(PNG).decode()
MAX_POINTS = 8
MAX_OBJECTS = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "IMGEMBED_MAX_PROMPT_POINTS": str(MAX_POINTS),
        "IMGEMBED_MAX_PROMPT_OBJECTS": str(MAX_OBJECTS),
        # Room for two images: the eviction test pushes the first one out with two more.
        "IMGEMBED_CACHE_BYTES": str(2 * 16 * 1024 * 1024 + 1024),
    }
    log = tmp_path_factory.mktemp("server") / "server.log"
    with imgembed_server(["--weights", "dummy"], env, log_path=log) as base_url:
        yield base_url


def segment(server: str, body: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
    if body is not None:
        kwargs["json"] = body
    return httpx.post(f"{server}/v1/sam2/segment", timeout=120, **kwargs)


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def image_id(server: str) -> str:
    return ok(segment(server, {"image_b64": PNG_B64, "points": [[40, 30]]}))["image_id"]


def decode_npz(text: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(base64.b64decode(text))) as archive:
        return dict(archive)


def test_every_mask_format_describes_the_same_masks(server: str, image_id: str) -> None:
    mask_utils = pytest.importorskip("pycocotools.mask")
    prompt = {"image_id": image_id, "points": [[40, 30], [100, 70]], "point_labels": [1, 0]}
    by_format = {
        mask_format: ok(segment(server, {**prompt, "mask_format": mask_format}))
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


def test_boxes_are_objects_and_single_mask_output(server: str, image_id: str) -> None:
    body = ok(
        segment(
            server,
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


def test_second_prompt_on_the_same_image_hits_the_cache(server: str) -> None:
    other = encode(Image.fromarray(gradient_rgb(HEIGHT, WIDTH)[::-1].copy()), "PNG")
    first = ok(
        segment(server, {"image_b64": base64.b64encode(other).decode(), "box": [5, 5, 50, 50]})
    )
    assert first["cache_hit"] is False
    assert "encode" in first["timings_ms"]
    again = ok(segment(server, {"image_id": first["image_id"], "points": [[20, 20]]}))
    assert again["cache_hit"] is True
    assert "encode" not in again["timings_ms"]
    resent = ok(
        segment(server, {"image_b64": base64.b64encode(other).decode(), "points": [[9, 9]]})
    )
    assert resent["image_id"] == first["image_id"]
    assert resent["cache_hit"] is True
    metrics = httpx.get(f"{server}/metrics", timeout=10).text
    assert metric(metrics, "imgembed_cache_events_total", event="hit") >= 2
    assert metric(metrics, "imgembed_cache_bytes") > 0


def test_embed_returns_an_image_id_that_segment_accepts(server: str) -> None:
    embedded = httpx.post(
        f"{server}/v1/sam2/embed", json={"image_b64": PNG_B64, "encoding": "binary"}, timeout=120
    )
    assert embedded.status_code == 200
    header_length = int(embedded.headers["inference-header-content-length"])
    header = json.loads(embedded.content[:header_length])
    body = ok(segment(server, {"image_id": header["image_id"], "points": [[64, 48]]}))
    assert body["image_id"] == header["image_id"]


def test_multipart_upload_with_json_form_values(server: str) -> None:
    response = segment(
        server,
        files={"file": ("a.png", PNG, "image/png")},
        data={"points": "[[30, 40]]", "multimask_output": "false", "mask_format": "png"},
    )
    body = ok(response)
    assert len(body["objects"][0]["masks"]) == 1


def assert_refused(
    response: httpx.Response, status: int, field: str | None, phrase: str, server: str
) -> None:
    """The response is the documented error, and the server still answers."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert phrase in error["message"], error
    assert "Traceback" not in response.text
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200


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
    response = segment(server, content=body, headers={"content-type": "application/json"})
    assert_refused(response, 400, field, phrase, server)


def test_bad_image_sources_are_refused(server: str) -> None:
    assert_refused(
        segment(server, {"points": [[1, 1]]}), 400, "image_b64", "no image given", server
    )
    both = segment(server, {"image_b64": PNG_B64, "image_id": "ab" * 16, "points": [[1, 1]]})
    assert_refused(both, 400, "image_b64", "both given", server)
    unknown = segment(server, {"image_id": "0" * 32, "points": [[1, 1]]})
    assert_refused(unknown, 404, "image_id", "not in", server)
    garbage = segment(server, {"image_b64": "bm90IGFuIGltYWdl", "points": [[1, 1]]})
    assert_refused(garbage, 400, "image_b64", "image", server)
    unknown_model = segment(server, {"image_b64": PNG_B64, "points": [[1, 1]], "model": "sam9"})
    assert_refused(unknown_model, 404, "model", "not served", server)


def test_openapi_documents_the_segment_route(server: str) -> None:
    spec = httpx.get(f"{server}/openapi.json", timeout=10).json()
    content = spec["paths"]["/v1/sam2/segment"]["post"]["requestBody"]["content"]
    assert "application/json" in content


def test_last_an_evicted_image_id_says_to_send_the_image_again(server: str, image_id: str) -> None:
    """Runs last: it pushes the module's image out of the two-image cache."""
    for flip in (1, 2):
        picture = np.roll(gradient_rgb(HEIGHT, WIDTH), flip * 7, axis=1)
        png = base64.b64encode(encode(Image.fromarray(picture), "PNG")).decode()
        ok(segment(server, {"image_b64": png, "points": [[5, 5]]}))
    response = segment(server, {"image_id": image_id, "points": [[5, 5]]})
    assert_refused(response, 404, "image_id", "send the image again", server)


def test_python_client_returns_numpy_masks_and_refines(server: str, image_id: str) -> None:
    from imgembed.client import ImgembedClient, ImgembedClientError

    with ImgembedClient(server) as client:
        first = client.sam2_segment(PNG, points=np.array([[40.0, 30.0]]))
        assert first.masks.shape == (1, 3, HEIGHT, WIDTH)
        assert first.masks.dtype == bool
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
