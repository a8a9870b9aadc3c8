"""Connected components, hole filling and sprinkle removal against OpenCV, a flood fill and Meta's
own post-processing code (its CUDA kernel replaced by an OpenCV labelling with the same contract)."""

from __future__ import annotations

import sys
import types
import warnings
from collections import deque
from collections.abc import Callable

import numpy as np
import pytest
import torch

from imgembed.masks import regions as regions_module
from imgembed.masks.regions import (
    connected_components,
    fill_holes_and_remove_sprinkles,
    remove_small_regions,
)

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is a test-only dependency")

Postprocess = Callable[[torch.Tensor, float, float, float], torch.Tensor]


def flood_fill_components(mask: np.ndarray, connectivity: int) -> list[set[tuple[int, int]]]:
    """Components as pixel sets, by breadth-first search: the definition, nothing clever."""
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    seen = np.zeros_like(mask)
    components = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, members = deque([start]), set()
        while queue:
            y, x = queue.popleft()
            members.add((int(y), int(x)))
            for dy, dx in steps:
                ny, nx = y + dy, x + dx
                inside = 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1]
                if inside and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        components.append(members)
    return components


def spiral(side: int) -> np.ndarray:
    """One long path, the worst case for label propagation."""
    mask = np.zeros((side, side), bool)
    top, left, bottom, right = 0, 0, side - 1, side - 1
    while top <= bottom and left <= right:
        mask[top, left : right + 1] = True
        mask[top : bottom + 1, right] = True
        if bottom - top >= 2:
            mask[bottom, left : right + 1] = True
        if right - left >= 2 and bottom - top >= 4:
            mask[top + 2 : bottom + 1, left] = True
            mask[top + 2, left : left + 2] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
    return mask


def sample_masks(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    masks = rng.random((24, 29, 33)) < rng.random((24, 1, 1))
    masks[0] = False
    masks[1] = True
    masks[2] = spiral(33)[:29]
    return masks


@pytest.mark.parametrize("connectivity", [4, 8])
def test_components_match_flood_fill(connectivity: int) -> None:
    masks = sample_masks(connectivity)
    labels, areas = connected_components(torch.from_numpy(masks), connectivity)
    assert labels.dtype == areas.dtype == torch.int64
    for mask, mask_labels, mask_areas in zip(masks, labels.numpy(), areas.numpy(), strict=True):
        assert (mask_labels[~mask] == 0).all()
        assert (mask_areas[~mask] == 0).all()
        components = flood_fill_components(mask, connectivity)
        assert len(np.unique(mask_labels[mask])) == len(components)
        for members in components:
            rows, columns = np.array(sorted(members)).T
            (label,) = np.unique(mask_labels[rows, columns])
            first_y, first_x = min(members)  # raster order: row, then column
            assert label == first_y * mask.shape[1] + first_x + 1
            assert (mask_areas[rows, columns] == len(members)).all()


@pytest.mark.parametrize("connectivity", [4, 8])
def test_components_match_opencv_on_larger_masks(connectivity: int) -> None:
    rng = np.random.default_rng(11)
    masks = rng.random((6, 256, 256)) < np.array([0.1, 0.4, 0.5, 0.6, 0.9, 0.55])[:, None, None]
    masks[5] = spiral(256)
    labels, areas = connected_components(torch.from_numpy(masks), connectivity)
    for mask, ours, our_areas in zip(masks, labels.numpy(), areas.numpy(), strict=True):
        count, theirs, stats, _ = cv2.connectedComponentsWithStats(
            mask.astype(np.uint8), connectivity=connectivity
        )
        pairs = set(zip(ours[mask].tolist(), theirs[mask].tolist(), strict=True))
        assert len(pairs) == count - 1 == len(np.unique(ours[mask]))
        np.testing.assert_array_equal(our_areas[mask], stats[theirs[mask], cv2.CC_STAT_AREA])


def test_components_in_chunks_equal_all_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    masks = torch.from_numpy(sample_masks(3))
    whole = connected_components(masks)
    monkeypatch.setattr(regions_module, "CHUNK_PIXELS", 29 * 33 * 5)
    chunked = connected_components(masks)
    for ours, expected in zip(chunked, whole, strict=True):
        torch.testing.assert_close(ours, expected)


def test_components_of_empty_inputs() -> None:
    labels, areas = connected_components(torch.zeros(0, 4, 4, dtype=torch.bool))
    assert labels.shape == areas.shape == (0, 4, 4)
    labels, areas = connected_components(torch.zeros(2, 4, 4, dtype=torch.bool))
    assert labels.sum() == areas.sum() == 0
    with pytest.raises(ValueError, match=r"\[N,H,W\]"):
        connected_components(torch.zeros(4, 4, dtype=torch.bool))


def opencv_cuda_kernel_stand_in(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sam2._C.get_connected_componnets``' contract, with OpenCV: ``[N,1,H,W]`` uint8 in,
    int32 labels (> 0 on foreground) and per-pixel component areas out."""
    labels = np.zeros(masks.shape, np.int32)
    counts = np.zeros(masks.shape, np.int32)
    assert masks.dtype == torch.uint8, "Meta's wrapper hands the kernel uint8"
    for index, mask in enumerate(masks[:, 0].numpy()):
        _, mask_labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        labels[index, 0] = mask_labels
        counts[index, 0] = np.where(mask_labels > 0, stats[mask_labels, cv2.CC_STAT_AREA], 0)
    return torch.from_numpy(labels), torch.from_numpy(counts)


@pytest.fixture
def meta_postprocess(monkeypatch: pytest.MonkeyPatch) -> Postprocess:
    """Meta's ``SAM2Transforms.postprocess_masks`` (fill, remove), its CUDA kernel lent by OpenCV.

    The stand-in goes where the kernel lives (``sam2._C``), so Meta's own wrapper
    ``get_connected_components`` runs unchanged. Meta skips the step with a warning when the kernel
    fails; warnings are errors here, so a skipped step cannot pass as a match.
    """
    from torchvision_shim import import_meta_predictors

    import_meta_predictors()  # lends torchvision while sam2.utils.transforms imports
    sam2 = pytest.importorskip("sam2", reason="Meta's sam2 is test-only")
    transforms = pytest.importorskip("sam2.utils.transforms")
    kernel = types.ModuleType("sam2._C")
    kernel.get_connected_componnets = opencv_cuda_kernel_stand_in  # Meta's spelling
    monkeypatch.setitem(sys.modules, "sam2._C", kernel)
    monkeypatch.setattr(sam2, "_C", kernel, raising=False)

    def run(logits: torch.Tensor, hole: float, sprinkle: float, threshold: float) -> torch.Tensor:
        meta = transforms.SAM2Transforms(1024, threshold, hole, sprinkle)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return meta.postprocess_masks(logits, logits.shape[-2:])  # same size: no resize

    return run


@pytest.mark.parity
@pytest.mark.parametrize(
    ("hole", "sprinkle", "threshold"),
    [(0, 0, 0.0), (4, 0, 0.0), (0, 4, 0.0), (6, 3, 0.0), (30, 30, 0.5), (2.5, 100, -1.0)],
)
def test_fill_holes_and_remove_sprinkles_match_meta(
    meta_postprocess: Postprocess, hole: float, sprinkle: float, threshold: float
) -> None:
    generator = torch.Generator().manual_seed(int(hole * 10 + sprinkle))
    noise = torch.randn(2, 3, 1, 48, 64, generator=generator)
    # Smooth blobs with speckles: logits like a decoder's, with holes and sprinkles of many sizes.
    logits = torch.nn.functional.avg_pool2d(noise.view(6, 1, 48, 64), 5, 1, 2).view(2, 3, 48, 64)
    logits = logits * 8 + torch.randn(2, 3, 48, 64, generator=generator)
    ours = fill_holes_and_remove_sprinkles(logits, hole, sprinkle, threshold)
    expected = meta_postprocess(logits, hole, sprinkle, threshold)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    if hole or sprinkle:
        assert not torch.equal(ours, logits), "the case must change something"


def test_fill_holes_does_not_change_its_input() -> None:
    logits = torch.full((1, 5, 5), 3.0)
    logits[0, 2, 2] = -3.0
    before = logits.clone()
    filled = fill_holes_and_remove_sprinkles(logits, 1, 0)
    torch.testing.assert_close(logits, before)
    assert filled[0, 2, 2] == 10.0


@pytest.mark.parity
@pytest.mark.parametrize("mode", ["holes", "islands"])
@pytest.mark.parametrize("threshold", [1, 3, 8, 40])
def test_remove_small_regions_matches_meta(mode: str, threshold: int) -> None:
    amg = pytest.importorskip("sam2.utils.amg", reason="Meta's sam2 is test-only")
    rng = np.random.default_rng(threshold)
    masks = rng.random((20, 26, 31)) < rng.random((20, 1, 1))
    masks[0] = False
    masks[1] = True
    masks[2] = False
    masks[2, ::4, ::5] = True  # only equal-sized small islands: the tie rule keeps OpenCV's first
    masks[3] = False
    masks[3, 20:23, 1:4] = True
    masks[3, 2:5, 25:28] = True  # two equal islands, the lower-left one first in 2x2 blocks
    ours, changed = remove_small_regions(torch.from_numpy(masks), threshold, mode)
    for index, mask in enumerate(masks):
        expected, expected_changed = amg.remove_small_regions(mask, threshold, mode)
        np.testing.assert_array_equal(ours[index].numpy(), expected)
        assert bool(changed[index]) == expected_changed


def test_remove_small_regions_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="holes"):
        remove_small_regions(torch.zeros(1, 2, 2, dtype=torch.bool), 1, "gaps")  # type: ignore[arg-type]
