"""Segment everything's masks as it keeps them: candidates while crops are processed, and the
reference generator's records at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from imgembed.masks.rle import RleDict, encode_counts, rle_to_mask
from imgembed.pipelines.sam2_everything_params import Sam2EverythingParams


@dataclass(frozen=True)
class MaskRecord:
    """One mask, with the reference generator's fields.

    Attributes:
        segmentation: ``[H,W]`` bool array, ``{"size": [H, W], "counts": [runs]}`` or
            ``{"size": [H, W], "counts": "<COCO string>"}``, per ``output_mode``.
        area: Pixels in the mask.
        bbox: ``[x, y, w, h]`` box in image pixels: ``x + w`` is the last column inside.
        predicted_iou: The decoder's quality estimate.
        point_coords: ``[[x, y]]``, the prompt point in image pixels.
        stability_score: IoU of the mask cut at ``mask_threshold +- stability_score_offset``.
        crop_box: ``[x, y, w, h]`` of the crop the mask came from.
    """

    segmentation: np.ndarray | RleDict
    area: int
    bbox: list[float]
    predicted_iou: float
    point_coords: list[list[float]]
    stability_score: float
    crop_box: list[float]

    def as_dict(self) -> dict[str, Any]:
        """The record as the reference's dict (same keys, same order)."""
        return {
            "segmentation": self.segmentation,
            "area": self.area,
            "bbox": self.bbox,
            "predicted_iou": self.predicted_iou,
            "point_coords": self.point_coords,
            "stability_score": self.stability_score,
            "crop_box": self.crop_box,
        }


_ROW_SHAPES: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
    "boxes": ((4,), torch.int64),
    "iou": ((), torch.float32),
    "stability": ((), torch.float32),
    "points": ((2,), torch.float32),
    "crop_boxes": ((4,), torch.int64),
}
"""Shape of one row and dtype of each tensor field of :class:`Candidates`."""


@dataclass
class Candidates:
    """Masks kept so far, one row each, the rows of every field aligned.

    Boxes (XYXY, inclusive) and points (XY) are in the crop's frame while a crop is processed and
    in the image's after it; RLE counts are always the image's.
    """

    counts: list[list[int]] = field(default_factory=list)
    boxes: list[torch.Tensor] = field(default_factory=list)  # [n,4] int64
    iou: list[torch.Tensor] = field(default_factory=list)  # [n] float32
    stability: list[torch.Tensor] = field(default_factory=list)  # [n] float32
    points: list[torch.Tensor] = field(default_factory=list)  # [n,2] float32
    crop_boxes: list[torch.Tensor] = field(default_factory=list)  # [n,4] int64 XYXY

    def tensors(self) -> dict[str, torch.Tensor]:
        """Each tensor field as one CPU tensor (empty with the right shape when there are none)."""
        result = {}
        for name, (row_shape, dtype) in _ROW_SHAPES.items():
            parts = [part.cpu() for part in getattr(self, name)]
            result[name] = torch.cat(parts) if parts else torch.zeros((0, *row_shape), dtype=dtype)
        return result

    def add(self, other: Candidates) -> None:
        self.counts.extend(other.counts)
        for name in _ROW_SHAPES:
            getattr(self, name).extend(getattr(other, name))

    def select(self, keep: torch.Tensor) -> Candidates:
        """The rows at ``keep`` (indices), in that order."""
        tensors = self.tensors()
        indices = keep.cpu()
        return Candidates(
            counts=[self.counts[index] for index in indices.tolist()],
            **{name: [tensor[indices]] for name, tensor in tensors.items()},
        )


def records_of(
    kept: Candidates, image_hw: tuple[int, int], params: Sam2EverythingParams
) -> list[MaskRecord]:
    tensors = kept.tensors()
    size = [image_hw[0], image_hw[1]]
    records = []
    for index, counts in enumerate(kept.counts):
        plain: RleDict = {"size": size, "counts": counts}
        if params.output_mode == "coco_rle":
            segmentation: np.ndarray | RleDict = {"size": size, "counts": encode_counts(counts)}
        elif params.output_mode == "binary_mask":
            segmentation = rle_to_mask(plain)
        else:
            segmentation = plain
        records.append(
            MaskRecord(
                segmentation=segmentation,
                area=int(sum(counts[1::2])),
                bbox=_xywh(tensors["boxes"][index]),
                predicted_iou=float(tensors["iou"][index]),
                point_coords=[tensors["points"][index].tolist()],
                stability_score=float(tensors["stability"][index]),
                crop_box=_xywh(tensors["crop_boxes"][index]),
            )
        )
    return records


def _xywh(box: torch.Tensor) -> list[float]:
    left, top, right, bottom = (float(value) for value in box.tolist())
    return [left, top, right - left, bottom - top]
