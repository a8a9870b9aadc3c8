"""``POST /v1/sam2/segment-everything`` through a real HTTP server: records, formats, bad input.

Untrained (``--weights dummy``) weights, so the quality filters are opened (thresholds 0) to get
masks out; agreement with Meta's generator is proven in tests/pipelines/test_sam2_everything_parity.py.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from imagefactory import encode, gradient_rgb
from PIL import Image
from servers import imgembed_server

pytestmark = pytest.mark.e2e

HEIGHT, WIDTH = 72, 96
PNG_B64 = base64.b64encode(encode(Image.fromarray(gradient_rgb(HEIGHT, WIDTH)), "PNG")).decode()
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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    with imgembed_server(["--weights", "dummy"], {}, log_path=log) as base_url:
        yield base_url


def everything(server: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server}/v1/sam2/segment-everything", json=body, timeout=300)


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def test_records_in_every_output_mode_describe_the_same_masks(server: str) -> None:
    mask_utils = pytest.importorskip("pycocotools.mask")
    by_mode = {
        mode: ok(everything(server, {"image_b64": PNG_B64, **OPEN, "output_mode": mode}))
        for mode in ("coco_rle", "uncompressed_rle", "binary_mask")
    }
    with np.load(io.BytesIO(base64.b64decode(by_mode["binary_mask"]["masks_npz"]))) as archive:
        masks = archive["masks"]
    count = by_mode["coco_rle"]["count"]
    assert count > 0, "open thresholds must let masks through, or the test proves nothing"
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
        assert "segmentation" not in by_mode["binary_mask"]["masks"][index]
    body = by_mode["coco_rle"]
    assert body["image_size"] == [HEIGHT, WIDTH]
    assert body["crops"] == 1
    assert body["prompts"] >= 16
    assert body["weights"]["untrained"] is True


def test_the_whole_image_features_come_from_the_cache(server: str) -> None:
    picture = np.ascontiguousarray(gradient_rgb(HEIGHT, WIDTH)[:, ::-1])
    image_b64 = base64.b64encode(encode(Image.fromarray(picture), "PNG")).decode()
    embedded = httpx.post(f"{server}/v1/sam2/embed", json={"image_b64": image_b64}, timeout=300)
    assert embedded.status_code == 200
    body = ok(everything(server, {"image_b64": image_b64, **OPEN, "points_per_side": 2}))
    assert body["cache_hit"] is True
    assert body["image_id"] == embedded.json()["image_id"]


def test_crop_layers_encode_every_crop(server: str) -> None:
    body = ok(everything(server, {"image_b64": PNG_B64, **OPEN, "crop_n_layers": 1}))
    assert body["crops"] == 5
    assert all(len(record["crop_box"]) == 4 for record in body["masks"])


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
def test_bad_settings_are_refused(
    server: str, extra: dict[str, Any], field: str, phrase: str
) -> None:
    response = everything(server, {"image_b64": PNG_B64, **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    assert phrase in error["message"], error
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200


def test_no_image_is_refused(server: str) -> None:
    response = everything(server, {"points_per_side": 4})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "image_b64"


def test_python_client_returns_numpy_masks_with_records(server: str) -> None:
    from imgembed.client import ImgembedClient

    with ImgembedClient(server) as client:
        masks, records = client.sam2_segment_everything(
            base64.b64decode(PNG_B64),
            points_per_side=3,
            pred_iou_thresh=0,
            stability_score_thresh=0,
        )
    assert masks.shape == (len(records), HEIGHT, WIDTH)
    assert len(records) > 0
    assert [record["area"] for record in records] == [int(mask.sum()) for mask in masks]
