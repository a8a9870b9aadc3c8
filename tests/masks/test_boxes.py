"""Boxes of masks and non-maximum suppression, against Meta's box code and a brute-force NMS."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision_shim import batched_nms as brute_force_batched_nms

from imgembed.masks import boxes as boxes_module
from imgembed.masks.boxes import (
    batched_nms,
    box_area,
    box_iou,
    box_xyxy_to_xywh,
    mask_areas,
    masks_to_boxes,
    nms,
)


def random_masks(seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    masks = np.zeros((40, 23, 31), bool)
    for index, mask in enumerate(masks):
        if index % 10 == 3:
            continue  # empty
        y0, x0 = rng.integers(0, 23), rng.integers(0, 31)
        mask[y0 : y0 + rng.integers(1, 12), x0 : x0 + rng.integers(1, 12)] = True
        mask &= rng.random(mask.shape) < 0.8
    masks[5] = False
    masks[5, 22, 30] = True  # one pixel in the bottom-right corner
    return torch.from_numpy(masks)


def test_boxes_match_meta_batched_mask_to_box() -> None:
    amg = pytest.importorskip("sam2.utils.amg", reason="Meta's sam2 is test-only")
    masks = random_masks(0)
    ours = masks_to_boxes(masks)
    assert ours.dtype == torch.int64
    torch.testing.assert_close(ours, amg.batched_mask_to_box(masks).long())
    torch.testing.assert_close(
        masks_to_boxes(masks.view(4, 10, 23, 31)), ours.view(4, 10, 4)
    )  # [40,4] -> [4,10,4]


def test_exclusive_boxes_and_areas() -> None:
    masks = random_masks(1)
    inclusive, exclusive = masks_to_boxes(masks), masks_to_boxes(masks, exclusive=True)
    empty = ~masks.flatten(1).any(dim=1)
    torch.testing.assert_close(exclusive[empty], torch.zeros_like(exclusive[empty]))
    torch.testing.assert_close(exclusive[~empty], inclusive[~empty] + torch.tensor([0, 0, 1, 1]))
    assert exclusive[5].tolist() == [30, 22, 31, 23]
    torch.testing.assert_close(mask_areas(masks), masks.flatten(1).sum(1))
    assert masks_to_boxes(torch.zeros(3, 0, 5, dtype=torch.bool)).shape == (3, 4)


def test_box_helpers() -> None:
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 4.0]])
    torch.testing.assert_close(box_area(boxes), torch.tensor([4.0, 6.0]))
    torch.testing.assert_close(
        box_xyxy_to_xywh(boxes), torch.tensor([[0.0, 0, 2, 2], [1, 1, 2, 3]])
    )
    iou = box_iou(boxes, boxes)
    torch.testing.assert_close(iou, torch.tensor([[1.0, 1 / 9], [1 / 9, 1.0]]))
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert torch.isnan(box_iou(point, point)).all(), "0/0, never above a threshold"


def random_boxes(seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(count, 2, generator=generator) * 100
    sides = torch.rand(count, 2, generator=generator) * 30
    boxes = torch.cat([corners, corners + sides], dim=1)
    scores = torch.rand(count, generator=generator).round(decimals=1)  # many ties
    categories = torch.randint(0, 3, (count,), generator=generator)
    return boxes, scores, categories


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("count", [0, 1, 2, 57, 300])
def test_nms_equals_brute_force(threshold: float, count: int) -> None:
    boxes, scores, categories = random_boxes(count, count)
    expected = brute_force_batched_nms(boxes, scores, categories, threshold)
    assert batched_nms(boxes, scores, categories, threshold).tolist() == expected.tolist()
    single = torch.zeros_like(categories)
    expected_single = brute_force_batched_nms(boxes, scores, single, threshold)
    assert nms(boxes, scores, threshold).tolist() == expected_single.tolist()


def test_nms_across_blocks_equals_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boxes_module, "NMS_BLOCK", 16)
    boxes, scores, categories = random_boxes(9, 200)
    expected = brute_force_batched_nms(boxes, scores, categories, 0.4)
    assert batched_nms(boxes, scores, categories, 0.4).tolist() == expected.tolist()


def test_nms_ties_and_the_threshold_itself() -> None:
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 2.0]])
    scores = torch.tensor([0.5, 0.5, 0.9])
    # Equal scores keep their given order; IoU exactly 0.5 does not suppress at 0.5.
    assert nms(boxes, scores, 0.5).tolist() == [2, 0]
    assert nms(boxes, scores, 0.49).tolist() == [2]
    assert nms(boxes, scores, 1.0).tolist() == [2, 0, 1]


def test_nms_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[N,4\]"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="categories"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2), 0.5)
