"""The segment response, shared by HTTP and RunPod: masks in the encoding the client picked.

.. code-block:: json

    {"image_id": "...", "cache_hit": false, "model": "sam2.1-hiera-tiny",
     "image_size": [H, W], "mask_format": "rle",
     "objects": [{"masks": [{"segmentation": {...}, "score": 0.91, "box": [x0, y0, x1, y1],
                             "area": 1234, "low_res_logits": "<base64 float32 256x256>"}, ...],
                  "best_mask": 0}]}

- ``segmentation`` is a COCO RLE ``{"size": [H, W], "counts": "..."}`` (``pycocotools`` decodes
  it), a base64 PNG (8-bit, 255 inside), or COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` in
  pixel coordinates. With ``npz`` it is absent and ``masks_npz`` holds one base64 ``.npz``:
  ``masks [O,K,H,W]`` bool, ``scores [O,K]``, ``boxes [O,K,4]``, ``areas [O,K]`` and, when asked,
  ``low_res_logits [O,K,256,256]`` float32 (objects with fewer masks are padded with empty ones).
- ``box`` is XYXY in continuous pixel coordinates of the original image; ``area`` in pixels.
- ``low_res_logits`` goes back as ``mask_input`` for a refinement round.
- ``best_mask`` indexes the highest predicted IoU.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from imgembed.api.sam2.segment import MaskFormat
from imgembed.codecs import encode_npz
from imgembed.engine import Sam2SegmentResult, ServedSam2
from imgembed.masks.png import encode_png
from imgembed.masks.polygons import mask_to_polygons
from imgembed.masks.rle import encode_coco_rle
from imgembed.pipelines.sam2_segment import ObjectMasks


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _segmentation(mask: np.ndarray, mask_format: MaskFormat) -> Any:
    if mask_format == "rle":
        return encode_coco_rle(mask)
    if mask_format == "png":
        return _b64(encode_png(mask))
    if mask_format == "polygons":
        return mask_to_polygons(mask)
    raise ValueError(f"no per-mask segmentation for {mask_format!r}")


def _object_json(item: ObjectMasks, mask_format: MaskFormat, with_logits: bool) -> dict[str, Any]:
    masks = []
    for index in range(len(item.scores)):
        entry: dict[str, Any] = {
            "score": round(float(item.scores[index]), 6),
            "box": [round(float(value), 3) for value in item.boxes[index]],
            "area": int(item.areas[index]),
        }
        if mask_format != "npz":
            entry["segmentation"] = _segmentation(item.masks[index], mask_format)
        if with_logits:
            entry["low_res_logits"] = _b64(item.low_res_logits[index].astype("<f4").tobytes())
        masks.append(entry)
    return {"masks": masks, "best_mask": int(np.argmax(item.scores))}


def _npz(objects: list[ObjectMasks], with_logits: bool) -> str:
    count = max(len(item.scores) for item in objects)

    def stack(name: str) -> np.ndarray:
        arrays = [getattr(item, name) for item in objects]
        padded = np.zeros((len(arrays), count, *arrays[0].shape[1:]), dtype=arrays[0].dtype)
        for index, array in enumerate(arrays):
            padded[index, : len(array)] = array
        return padded

    arrays = {name: stack(name) for name in ("masks", "scores", "boxes", "areas")}
    if with_logits:
        arrays["low_res_logits"] = stack("low_res_logits")
    return _b64(encode_npz(arrays, compress=True))


def image_fields(image_id: str, cache_hit: bool, served: ServedSam2) -> dict[str, Any]:
    """The fields every SAM 2 mask response starts with: the image's id, whether its features
    came from the store, and the model that made the masks (with the precision it computed in)."""
    return {
        "image_id": image_id,
        "cache_hit": cache_hit,
        "model": served.name,
        "device": served.placement.device_name,
        "compute_dtype": served.placement.compute_dtype,
        "weights": {"source": served.source, "untrained": served.untrained},
    }


def sam2_segment_json(
    result: Sam2SegmentResult, mask_format: MaskFormat, *, with_logits: bool
) -> dict[str, Any]:
    """The JSON response of a segment request (see the module docstring)."""
    body: dict[str, Any] = {
        **image_fields(result.image_id, result.cache_hit, result.model),
        "image_size": list(result.mapping.orig_hw),
        "resize_mode": result.mapping.resize_mode,
        "mask_format": mask_format,
        "objects": [_object_json(item, mask_format, with_logits) for item in result.objects],
        "timings_ms": result.timings_ms,
    }
    if mask_format == "npz":
        body["masks_npz"] = _npz(result.objects, with_logits)
    return body
