"""SAM 2 segment everything: the request (Meta's ``SAM2AutomaticMaskGenerator`` settings, with its
names and defaults) and the response (the generator's records)."""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from imgembed.api.sam2.segment_response import image_fields
from imgembed.codecs import encode_npz
from imgembed.engine import Sam2EverythingResult
from imgembed.errors import InvalidInputError
from imgembed.pipelines.sam2_everything_params import Sam2EverythingParams

_EVERYTHING_DEFAULTS = Sam2EverythingParams()
MAX_POINTS_PER_SIDE = 128
"""Largest grid a request may ask for (16384 prompts for the whole image)."""
MAX_CROP_LAYERS = 3
# Ranges Sam2EverythingParams checks (with its own messages), as the JSON Schema documents them.
_AT_LEAST_0: dict[str, Any] = {"minimum": 0}
_FROM_0_TO_1: dict[str, Any] = {"minimum": 0, "maximum": 1}


class Sam2EverythingRequest(BaseModel):
    """Body of ``POST /v1/sam2/segment-everything`` and input of the RunPod ``segment_everything``
    action. Settings have the names, meanings and defaults of Meta's
    ``SAM2AutomaticMaskGenerator``."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["segment_everything"] | None = Field(default=None, description="RunPod action.")
    image_b64: str | None = Field(default=None, description="Image file bytes as base64.")
    input_image_url: str | None = Field(default=None, description="http(s) URL of the image.")
    model: str | None = Field(default=None, description="Model name; the default when omitted.")
    points_per_side: int = Field(
        default=_EVERYTHING_DEFAULTS.points_per_side, ge=1, le=MAX_POINTS_PER_SIDE
    )
    points_per_batch: int | None = Field(
        default=None, ge=1, le=4096, description="Prompts per decoder pass; sized to the device."
    )
    pred_iou_thresh: float = Field(default=_EVERYTHING_DEFAULTS.pred_iou_thresh)
    stability_score_thresh: float = Field(default=_EVERYTHING_DEFAULTS.stability_score_thresh)
    stability_score_offset: float = Field(
        default=_EVERYTHING_DEFAULTS.stability_score_offset, json_schema_extra=_AT_LEAST_0
    )
    mask_threshold: float = Field(default=_EVERYTHING_DEFAULTS.mask_threshold)
    box_nms_thresh: float = Field(
        default=_EVERYTHING_DEFAULTS.box_nms_thresh, json_schema_extra=_FROM_0_TO_1
    )
    crop_n_layers: int = Field(default=_EVERYTHING_DEFAULTS.crop_n_layers, ge=0, le=MAX_CROP_LAYERS)
    crop_nms_thresh: float = Field(
        default=_EVERYTHING_DEFAULTS.crop_nms_thresh, json_schema_extra=_FROM_0_TO_1
    )
    crop_overlap_ratio: float = Field(
        default=_EVERYTHING_DEFAULTS.crop_overlap_ratio,
        json_schema_extra={"minimum": 0, "exclusiveMaximum": 1},
    )
    crop_n_points_downscale_factor: int = Field(
        default=_EVERYTHING_DEFAULTS.crop_n_points_downscale_factor,
        description="Layer i uses points_per_side / factor**i points per side; the last crop "
        "layer must keep at least one.",
        json_schema_extra={"minimum": 1},
    )
    min_mask_region_area: int = Field(
        default=_EVERYTHING_DEFAULTS.min_mask_region_area, json_schema_extra=_AT_LEAST_0
    )
    use_m2m: bool = Field(default=_EVERYTHING_DEFAULTS.use_m2m)
    multimask_output: bool = Field(default=_EVERYTHING_DEFAULTS.multimask_output)
    output_mode: Literal["coco_rle", "uncompressed_rle", "binary_mask"] = Field(
        default="coco_rle",
        description="coco_rle (pycocotools' string counts), uncompressed_rle (run lengths), or "
        "binary_mask (all masks in one base64 .npz, masks_npz).",
    )

    def params(self, prefix: str = "") -> Sam2EverythingParams:
        """The generator settings, validated there.

        Raises:
            InvalidInputError: A setting is out of range; the field is named with ``prefix``.
        """
        values = self.model_dump(exclude={"action", "image_b64", "input_image_url", "model"})
        try:
            return Sam2EverythingParams(**values)
        except InvalidInputError as error:
            field = f"{prefix}{error.field}" if error.field else None
            raise InvalidInputError(error.message, field=field) from error


def sam2_everything_json(result: Sam2EverythingResult, output_mode: str) -> dict[str, Any]:
    """The JSON response of a segment-everything request.

    ``masks`` holds the reference generator's records (``segmentation``, ``area``, ``bbox`` XYWH,
    ``predicted_iou``, ``point_coords``, ``stability_score``, ``crop_box``) in its order. With
    ``binary_mask`` their ``segmentation`` is left out and ``masks_npz`` holds one base64 ``.npz``
    whose ``masks`` is ``[N,H,W]`` bool, in the same order.
    """
    everything = result.everything
    served = result.model
    records = []
    for record in everything.records:
        entry = record.as_dict()
        if output_mode == "binary_mask":
            del entry["segmentation"]
        records.append(entry)
    body: dict[str, Any] = {
        **image_fields(result.image_id, result.cache_hit, served),
        "image_size": list(everything.image_hw),
        "output_mode": output_mode,
        "count": len(records),
        "masks": records,
        "points_per_batch": everything.points_per_batch,
        "crops": everything.crops,
        "prompts": everything.prompts,
        "timings_ms": {
            **result.timings_ms,
            **{f"generate_{k}": round(v, 2) for k, v in everything.timings_ms.items()},
        },
    }
    if output_mode == "binary_mask":
        height, width = everything.image_hw
        masks = np.zeros((len(records), height, width), dtype=bool)
        for index, record in enumerate(everything.records):
            masks[index] = record.segmentation
        body["masks_npz"] = base64.b64encode(encode_npz({"masks": masks}, compress=True)).decode(
            "ascii"
        )
    return body
