"""Connected components of masks, hole filling and sprinkle removal, in torch on CPU and GPU alike.

Meta's ``SAM2Transforms.postprocess_masks`` fills holes and removes sprinkles with a CUDA extension
(``sam2._C``) and silently skips both when it is missing (on every CPU). Here the same semantics
run on any device: :func:`connected_components` labels components with parallel min-label hooking
and pointer jumping (Shiloach-Vishkin style), a few whole-tensor passes, no per-pixel Python.

Two different clean-ups, both from the reference:

- :func:`fill_holes_and_remove_sprinkles`: SAM 2's, on mask *logits* (usually the 256x256
  low-resolution grid): every background component of at most ``max_hole_area`` pixels becomes
  foreground (logit ``threshold + 10``), and every foreground component of at most
  ``max_sprinkle_area`` pixels becomes background (``threshold - 10``). 8-connectivity. As in the
  reference, both sets of components are those of the incoming logits (a small island inside a
  filled hole is still removed), and a "hole" is any small background component, also one
  touching the border.
- :func:`remove_small_regions`: the automatic mask generator's ``min_mask_region_area`` clean-up
  of SAM 1 (``sam2.utils.amg.remove_small_regions``), on binary masks: components *below*
  ``area_threshold`` are filled (``"holes"``) or removed (``"islands"``; if all are small, the
  largest stays). 8-connectivity.
"""

from __future__ import annotations

from typing import Literal

import torch

CHUNK_PIXELS = 1 << 24
"""Pixels labelled at once; bounds the working memory to a few hundred MiB."""
HOLE_FILL_OFFSET = 10.0
"""Filled holes get logit ``threshold + 10``; removed sprinkles ``threshold - 10`` (as Meta)."""


def _runs_and_contacts(
    foreground: torch.Tensor, connectivity: Literal[4, 8]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Horizontal runs of foreground pixels and the pairs of runs that touch across rows.

    A run is a maximal stretch of foreground pixels in one row; runs are numbered in raster order.
    Two runs in neighbouring rows touch iff the later-starting one's first pixel has a pixel of
    the other among its neighbours in that row (``x - 1 .. x + 1`` for 8-connectivity, ``x``
    for 4), so looking only from each run's first pixel up and down finds every touching pair.

    Args:
        foreground: ``[N,H,W]`` bool.
        connectivity: 4 or 8.

    Returns:
        ``run_number [N*H*W]`` int64 (the run of each foreground pixel, raster order; for a
        background pixel the run before it, or -1), ``run_start [R]`` int64 (flat index of each
        run's first pixel), ``run_length [R]`` int64, and two ``[E]`` int64 tensors of touching
        run pairs.
    """
    _, height, width = foreground.shape
    starts = foreground.clone()
    starts[..., 1:] &= ~foreground[..., :-1]  # [N,H,W]: first pixel of each run
    flat_foreground = foreground.reshape(-1)  # [N*H*W]
    flat_starts = starts.reshape(-1)  # [N*H*W]
    run_number = torch.cumsum(flat_starts, dim=0) - 1  # [N*H*W]
    run_start = torch.nonzero(flat_starts).squeeze(1)  # [R]
    # Every foreground pixel from one run's start to the next run's start belongs to the run.
    foreground_before = torch.cumsum(flat_foreground, dim=0) - flat_foreground.long()  # [N*H*W]
    total = foreground_before[-1:] + flat_foreground[-1:].long()  # [1]
    run_length = torch.diff(torch.cat([foreground_before[run_start], total]))  # [R]
    row = torch.div(run_start, width, rounding_mode="floor") % height  # [R]
    column = run_start % width  # [R]
    run_index = torch.arange(run_start.numel(), device=foreground.device)  # [R]
    shifts = (-1, 0, 1) if connectivity == 8 else (0,)
    firsts, seconds = [], []
    for dy in (-1, 1):
        for dx in shifts:
            inside = (row + dy >= 0) & (row + dy < height) & (column + dx >= 0)
            inside &= column + dx < width
            neighbour = (run_start + dy * width + dx)[inside]
            touching = flat_foreground[neighbour]
            firsts.append(run_index[inside][touching])
            seconds.append(run_number[neighbour[touching]])
    return run_number, run_start, run_length, torch.cat(firsts), torch.cat(seconds)


def _component_roots(size: int, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The smallest member of each node's component, for ``size`` nodes joined by pair edges.

    Every node points at a smaller-or-equal node (``parent[i] <= i``), so no cycles can form. Each
    round hooks the larger root of every edge whose ends disagree onto the smaller one, then jumps
    pointers until every node points at its root; rounds stop when every edge agrees.
    """
    parent = torch.arange(size, device=first.device)
    while True:
        root_first, root_second = parent[first], parent[second]
        disagree = root_first != root_second
        if not bool(disagree.any()):
            return parent
        high = torch.maximum(root_first[disagree], root_second[disagree])
        low = torch.minimum(root_first[disagree], root_second[disagree])
        parent.scatter_reduce_(0, high, low, reduce="amin")
        while True:
            grandparent = parent[parent]
            if bool((grandparent == parent).all()):
                break
            parent = grandparent


def connected_components(
    masks: torch.Tensor, connectivity: Literal[4, 8] = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels the connected foreground components of each mask.

    Args:
        masks: ``[N,H,W]`` bool on any device.
        connectivity: 8 (pixels touching at an edge or a corner are connected, as Meta's CUDA
            kernel and OpenCV's default) or 4 (edges only).

    Returns:
        ``labels [N,H,W]`` int64: 0 on background, else 1 + the raster index (``y * W + x``) of the
        component's first pixel, so labels number components in the order a raster scan meets
        them; ``areas [N,H,W]`` int64: the pixel count of the pixel's component, 0 on background.
        Both on the masks' device.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N,H,W], got {list(masks.shape)}")
    foreground = masks if masks.dtype == torch.bool else masks != 0
    count, height, width = foreground.shape
    labels = torch.zeros(foreground.shape, dtype=torch.int64, device=foreground.device)
    areas = torch.zeros_like(labels)
    per_chunk = max(1, CHUNK_PIXELS // max(1, height * width))
    for start in range(0, count, per_chunk):
        chunk = foreground[start : start + per_chunk]  # [n,H,W]
        run_number, run_start, run_length, first, second = _runs_and_contacts(chunk, connectivity)
        if run_start.numel() == 0:
            continue
        roots = _component_roots(run_start.numel(), first, second)  # [R]: smallest run joined
        component_size = torch.zeros_like(run_length).index_add_(0, roots, run_length)  # [R]
        pixel_root = roots[run_number.clamp(min=0)]  # [n*H*W]
        chunk_foreground = chunk.reshape(-1)  # [n*H*W]
        # The smallest run of a component holds its first pixel in raster order.
        first_pixel = run_start[pixel_root] % (height * width)  # raster index in its own mask
        chunk_labels = torch.where(chunk_foreground, first_pixel + 1, 0)
        chunk_areas = torch.where(chunk_foreground, component_size[pixel_root], 0)
        labels[start : start + per_chunk] = chunk_labels.view(chunk.shape)  # [n*H*W] -> [n,H,W]
        areas[start : start + per_chunk] = chunk_areas.view(chunk.shape)  # [n*H*W] -> [n,H,W]
    return labels, areas


def fill_holes_and_remove_sprinkles(
    logits: torch.Tensor,
    max_hole_area: float,
    max_sprinkle_area: float,
    threshold: float = 0.0,
) -> torch.Tensor:
    """SAM 2's hole filling and sprinkle removal on mask logits (``postprocess_masks`` semantics).

    Args:
        logits: ``[...,H,W]`` mask logits (usually ``[B,K,256,256]`` low-resolution), any device.
        max_hole_area: Background components (logit ``<= threshold``) of at most this many pixels
            get logit ``threshold + 10``; 0 turns filling off.
        max_sprinkle_area: Foreground components (``> threshold``) of at most this many pixels
            get ``threshold - 10`` (after the filling, so they win); 0 turns removal off.
        threshold: The mask threshold on the logits.

    Returns:
        ``[...,H,W]`` float32 logits (a new tensor; the input is not changed).
    """
    original = logits.float()
    flat = original.reshape(-1, *original.shape[-2:])  # [...,H,W] -> [M,H,W]
    result = flat
    if max_hole_area > 0:
        labels, areas = connected_components(flat <= threshold)
        is_hole = (labels > 0) & (areas <= max_hole_area)
        result = torch.where(is_hole, threshold + HOLE_FILL_OFFSET, result)
    if max_sprinkle_area > 0:
        # Components of the logits as they came in, before any hole was filled (as Meta's).
        labels, areas = connected_components(flat > threshold)
        is_sprinkle = (labels > 0) & (areas <= max_sprinkle_area)
        result = torch.where(is_sprinkle, threshold - HOLE_FILL_OFFSET, result)
    return result.reshape(original.shape)  # [M,H,W] -> [...,H,W]


def _largest_component(labels: torch.Tensor, areas: torch.Tensor) -> torch.Tensor:
    """``[N,H,W]`` bool: each mask's largest component; among equals, the one OpenCV numbers first.

    OpenCV's default 8-connectivity labelling scans 2x2 blocks in raster order, so it numbers
    components by the first 2x2 block (``(y // 2, x // 2)`` in raster order) they touch.
    """
    count, height, width = labels.shape
    rows = torch.arange(height, device=labels.device)[:, None] // 2  # [H,1]
    columns = torch.arange(width, device=labels.device)[None, :] // 2  # [1,W]
    block_key = (rows * ((width + 1) // 2) + columns).expand(height, width).reshape(-1)  # [H*W]
    flat_labels = labels.reshape(count, -1)  # [N,H,W] -> [N,H*W]
    foreground = flat_labels > 0
    no_key = height * width
    component_key = torch.full_like(flat_labels, no_key)  # [N,H*W], indexed by label - 1
    component_key.scatter_reduce_(
        1,
        (flat_labels - 1).clamp(min=0),
        torch.where(foreground, block_key.expand(count, -1), no_key),
        reduce="amin",
    )
    pixel_key = component_key.gather(1, (flat_labels - 1).clamp(min=0))  # [N,H*W]
    rank = torch.where(foreground, areas.reshape(count, -1) * (no_key + 1) - pixel_key, -1)
    best = rank.argmax(dim=1, keepdim=True)  # [N,1]
    best_label = flat_labels.gather(1, best)  # [N,1]
    return (flat_labels == best_label).reshape(labels.shape)  # [N,H*W] -> [N,H,W]


def remove_small_regions(
    masks: torch.Tensor, area_threshold: float, mode: Literal["holes", "islands"]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fills small holes or removes small islands of binary masks (Meta's ``remove_small_regions``).

    Args:
        masks: ``[N,H,W]`` bool, any device.
        area_threshold: Components with fewer pixels than this are small.
        mode: ``"holes"``: background components that are small become foreground (also ones
            touching the border). ``"islands"``: foreground components that are small become
            background, except that when every component is small the largest one stays (among
            equals, the one OpenCV numbers first).

    Returns:
        ``[N,H,W]`` bool masks and ``[N]`` bool: whether each mask had a small component (Meta's
        ``changed``, true even when the only small island is the one kept).
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    working = ~masks if holes else masks
    labels, areas = connected_components(working)
    small = (labels > 0) & (areas < area_threshold)  # [N,H,W]
    changed = small.flatten(1).any(dim=1)  # [N,H,W] -> [N,H*W] -> [N]
    if holes:
        return masks | small, changed
    kept = (labels > 0) & ~small
    all_small = ~kept.flatten(1).any(dim=1) & changed  # [N]
    if bool(all_small.any()):
        kept = torch.where(all_small[:, None, None], _largest_component(labels, areas), kept)
    return kept, changed
