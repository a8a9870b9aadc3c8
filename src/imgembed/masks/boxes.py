"""Boxes of masks, box IoU and non-maximum suppression, in torch on any device (no torchvision).

Boxes are ``[...,4]`` XYXY. Two conventions for a box around mask pixels, both in pixels of the
mask's own frame:

- **inclusive** (Meta's ``batched_mask_to_box``, what the automatic mask generator reports):
  ``(first column, first row, last column, last row)``; a mask that is only pixel ``(0, 0)`` has
  box ``(0, 0, 0, 0)``;
- **exclusive** (continuous pixel coordinates): the right and bottom edges one further, ``(0, 0,
  1, 1)`` for that mask.

An empty mask has box ``(0, 0, 0, 0)`` in both.
"""

from __future__ import annotations

import numpy as np
import torch

NMS_BLOCK = 1024
"""Boxes compared at once by :func:`batched_nms`: memory is ``O(NMS_BLOCK * N)``, not ``O(N**2)``."""


def masks_to_boxes(masks: torch.Tensor, *, exclusive: bool = False) -> torch.Tensor:
    """XYXY boxes around ``[...,H,W]`` masks.

    Args:
        masks: ``[...,H,W]`` bool masks on any device.
        exclusive: Right and bottom edges one past the last pixel (continuous coordinates)
            instead of on it (Meta's convention, the default).

    Returns:
        ``[...,4]`` int64 XYXY pixels of the mask's frame, on the masks' device; zeros for an empty
        mask.
    """
    height, width = masks.shape[-2:]
    if height == 0 or width == 0:
        return torch.zeros(*masks.shape[:-2], 4, dtype=torch.int64, device=masks.device)
    rows = masks.any(dim=-1)  # [...,H]
    columns = masks.any(dim=-2)  # [...,W]
    row_index = torch.arange(height, device=masks.device)
    column_index = torch.arange(width, device=masks.device)
    top = torch.where(rows, row_index, height).amin(dim=-1)
    bottom = torch.where(rows, row_index, -1).amax(dim=-1)
    left = torch.where(columns, column_index, width).amin(dim=-1)
    right = torch.where(columns, column_index, -1).amax(dim=-1)
    end = 1 if exclusive else 0
    boxes = torch.stack([left, top, right + end, bottom + end], dim=-1)  # [...,4]
    empty = ~rows.any(dim=-1, keepdim=True)  # [...,1]
    return boxes.masked_fill(empty, 0)


def mask_areas(masks: torch.Tensor) -> torch.Tensor:
    """``[...]`` int64 pixel counts of ``[...,H,W]`` bool masks."""
    return masks.flatten(-2).sum(dim=-1, dtype=torch.int64)  # [...,H,W] -> [...,H*W] -> [...]


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """``[N]`` areas of ``[N,4]`` XYXY boxes, in the boxes' dtype."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """``[...,4]`` XYXY -> ``[...,4]`` XYWH (top-left corner, width, height)."""
    return torch.cat([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], dim=-1)


def box_iou(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``[N,M]`` IoU of ``[N,4]`` and ``[M,4]`` XYXY boxes.

    Computed in the boxes' dtype in the order torchvision's NMS kernel uses
    (``inter / (area_i + area_j - inter)``), so decisions at the threshold agree with it. Two boxes
    of zero area give NaN (never above a threshold), as there.
    """
    area_first = box_area(first)  # [N]
    area_second = box_area(second)  # [M]
    top_left = torch.maximum(first[:, None, :2], second[None, :, :2])  # [N,M,2]
    bottom_right = torch.minimum(first[:, None, 2:], second[None, :, 2:])  # [N,M,2]
    sides = (bottom_right - top_left).clamp(min=0)  # [N,M,2]
    intersection = sides[..., 0] * sides[..., 1]  # [N,M]
    return intersection / (area_first[:, None] + area_second[None, :] - intersection)


def batched_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    categories: torch.Tensor,
    iou_threshold: float,
) -> torch.Tensor:
    """Greedy non-maximum suppression within each category, as ``torchvision.ops.batched_nms``.

    Boxes are visited by decreasing score (ties in their given order: a stable sort); a box is kept
    unless a kept box of its category overlaps it with IoU above ``iou_threshold``. IoU is computed
    on the device, in blocks of :data:`NMS_BLOCK` boxes against the boxes kept so far; the greedy
    pass over each block's small overlap matrix runs on the CPU.

    Args:
        boxes: ``[N,4]`` float XYXY.
        scores: ``[N]`` float.
        categories: ``[N]`` integer category of each box; boxes of different categories never
            suppress each other.
        iou_threshold: Overlaps strictly above this suppress.

    Returns:
        ``[K]`` int64 indices into ``boxes`` of the kept boxes, by decreasing score, on the boxes'
        device.
    """
    count = boxes.shape[0]
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (count,):
        raise ValueError(
            f"boxes must be [N,4] and scores [N], got {list(boxes.shape)} and {list(scores.shape)}"
        )
    if categories.shape != (count,):
        raise ValueError(f"categories must be [{count}], got {list(categories.shape)}")
    order = torch.sort(scores, descending=True, stable=True).indices  # [N]
    sorted_boxes = boxes[order]  # [N,4]
    sorted_categories = categories[order]  # [N]
    kept: list[torch.Tensor] = []  # positions in sorted order, one tensor per block
    kept_boxes = sorted_boxes[:0]
    kept_categories = sorted_categories[:0]
    for start in range(0, count, NMS_BLOCK):
        block_boxes = sorted_boxes[start : start + NMS_BLOCK]  # [b,4]
        block_categories = sorted_categories[start : start + NMS_BLOCK]  # [b]
        against_kept = (box_iou(block_boxes, kept_boxes) > iou_threshold) & (
            block_categories[:, None] == kept_categories[None, :]
        )  # [b,k]
        suppressed = against_kept.any(dim=1).cpu().numpy()  # [b]
        within = (box_iou(block_boxes, block_boxes) > iou_threshold) & (
            block_categories[:, None] == block_categories[None, :]
        )  # [b,b]
        within = within.cpu().numpy()
        survivors = []
        for position in range(len(suppressed)):
            if suppressed[position]:
                continue
            survivors.append(position)
            suppressed |= within[position]
        survivors_tensor = torch.as_tensor(
            np.asarray(survivors, dtype=np.int64), device=boxes.device
        )
        kept.append(survivors_tensor + start)
        kept_boxes = torch.cat([kept_boxes, block_boxes[survivors_tensor]])
        kept_categories = torch.cat([kept_categories, block_categories[survivors_tensor]])
    if not kept:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    return order[torch.cat(kept)]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """:func:`batched_nms` with every box in one category."""
    categories = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
    return batched_nms(boxes, scores, categories, iou_threshold)
