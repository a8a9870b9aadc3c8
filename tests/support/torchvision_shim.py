"""A test-only stand-in for the few ``torchvision`` pieces Meta's ``sam2`` predictor classes import.

torchvision cannot be installed beside the CPU torch build (an unpinned install replaces torch), yet
Meta's ``SAM2ImagePredictor`` and ``SAM2AutomaticMaskGenerator`` import it at module level. This
module lends a minimal ``torchvision`` to ``sys.modules`` while the reference classes import, so
they run unchanged in parity tests (:func:`import_meta_predictors`):

- ``transforms.ToTensor`` / ``Resize`` / ``Normalize``: what torchvision does for the inputs Meta
  passes (HWC uint8 arrays; float ``[3,H,W]`` tensors resized with bilinear interpolation and
  antialiasing, ``align_corners=False``);
- ``ops.boxes.batched_nms`` / ``box_area``: a deliberately plain greedy NMS written from the
  definition (stable descending sort by score, suppress IoU above the threshold within a class),
  independent of imgembed's own implementation so parity tests compare two separate codes.

Never import this from library code.
"""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


class ToTensor:
    """HWC uint8 (array or PIL image) -> CHW float32 in [0, 1], as torchvision's ToTensor."""

    def __call__(self, picture: object) -> torch.Tensor:
        array = np.asarray(picture)
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)  # HWC -> CHW
        return tensor.float().div(255) if tensor.dtype == torch.uint8 else tensor.float()


class Resize(nn.Module):
    """Resizes a ``[C,H,W]`` float tensor to a fixed size, bilinear with antialiasing."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = [int(size[0]), int(size[1])]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        resized = F.interpolate(
            image.unsqueeze(0),  # [C,H,W] -> [1,C,H,W]
            size=self.size,
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        return resized.squeeze(0)  # [1,C,h,w] -> [C,h,w]


class Normalize(nn.Module):
    """``(image - mean) / std`` per channel of a ``[C,H,W]`` tensor."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1))  # [C] -> [C,1,1]
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1))  # [C] -> [C,1,1]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean) / self.std


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of ``[N,4]`` XYXY boxes."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _iou(first: list[float], second: list[float]) -> float:
    width = max(0.0, min(first[2], second[2]) - max(first[0], second[0]))
    height = max(0.0, min(first[3], second[3]) - max(first[1], second[1]))
    intersection = width * height
    area_first = (first[2] - first[0]) * (first[3] - first[1])
    area_second = (second[2] - second[0]) * (second[3] - second[1])
    union = area_first + area_second - intersection
    return intersection / union if union > 0 else 0.0


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Greedy per-class NMS; kept indices (int64) in decreasing score order."""
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    box_list = boxes.double().tolist()
    classes = idxs.tolist()
    kept: list[int] = []
    for candidate in order:
        if all(
            classes[candidate] != classes[other]
            or _iou(box_list[candidate], box_list[other]) <= iou_threshold
            for other in kept
        ):
            kept.append(candidate)
    return torch.tensor(kept, dtype=torch.int64)


def import_meta_predictors() -> tuple[types.ModuleType, types.ModuleType]:
    """Imports Meta's ``sam2.sam2_image_predictor`` and ``sam2.automatic_mask_generator``.

    The stand-in is in ``sys.modules`` only while they import (they bind the names they use), and
    is removed afterwards: ``transformers`` probes for torchvision and must keep finding none.

    Returns:
        The two modules.
    """
    names = ("torchvision", "torchvision.transforms", "torchvision.ops", "torchvision.ops.boxes")
    if any(name in sys.modules for name in names):
        raise RuntimeError(
            "a torchvision module is already imported; the stand-in would mix with it"
        )
    package = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    transforms.ToTensor = ToTensor
    transforms.Resize = Resize
    transforms.Normalize = Normalize
    boxes.batched_nms = batched_nms
    boxes.box_area = box_area
    ops.boxes = boxes
    package.transforms = transforms
    package.ops = ops
    sys.modules.update(dict(zip(names, (package, transforms, ops, boxes), strict=True)))
    try:
        predictor = importlib.import_module("sam2.sam2_image_predictor")
        generator = importlib.import_module("sam2.automatic_mask_generator")
    finally:
        for name in names:
            sys.modules.pop(name, None)
    return predictor, generator
