"""A binary mask as COCO polygons that re-rasterise to exactly the same pixels.

Polygons follow the pixel edges ("cracks"), not the pixel centres: vertices are pixel corners in
continuous coordinates of the mask's frame (``(0, 0)`` is the top-left corner of the top-left
pixel, ``(W, H)`` the bottom-right corner), so a mask of the single pixel ``(0, 0)`` is
``[[0, 0, 1, 0, 1, 1, 0, 1]]``. Only corners are kept (no collinear vertices). Each polygon is
one 4-connected component, traced clockwise on screen (y down) from its top-left corner.

COCO polygons cannot have holes: ``pycocotools`` fills each polygon and takes the union. A hole is
therefore joined to the boundary above it by a zero-width slit (the polygon runs up one side of a
pixel edge and back down the other), which covers no pixel centre, so a component with holes is
still one polygon and ``pycocotools.mask.frPyObjects`` gives back exactly the mask's pixels.
:func:`polygons_to_mask` rasterises the same way (a pixel is inside when its centre is, even-odd
rule per polygon, union over polygons) without ``pycocotools``.

Own contour tracing in NumPy, no OpenCV: every boundary edge finds its successor at once from the
pixels around its end (keep the foreground on the right, turn right when possible), and rings are
numbered and ordered by pointer doubling.
"""

from __future__ import annotations

import numpy as np
import torch

from imgembed.masks.regions import connected_components

_TOP, _RIGHT, _BOTTOM, _LEFT = range(4)
"""Pixel sides in clockwise order; a side's edge is walked with the pixel on its right."""
_WALK = ((0, 1), (1, 0), (0, -1), (-1, 0))
"""``(dy, dx)`` walking direction along each side's edge."""
_OUTWARD = ((-1, 0), (0, 1), (1, 0), (0, -1))
"""``(dy, dx)`` from the pixel to its neighbour across each side."""
_START_CORNER = ((0, 0), (0, 1), (1, 1), (1, 0))
"""``(dy, dx)`` from a pixel's top-left corner to where each side's edge starts."""


def _shift(array: np.ndarray, dy: int, dx: int, fill: bool = False) -> np.ndarray:
    """``result[y, x] = array[y + dy, x + dx]``, ``fill`` outside."""
    result = np.full_like(array, fill)
    height, width = array.shape
    result[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)] = array[
        max(0, dy) : height - max(0, -dy), max(0, dx) : width - max(0, -dx)
    ]
    return result


def _hole_slits(foreground: np.ndarray) -> np.ndarray:
    """Where to cut the foreground so that no hole stays enclosed.

    Holes are background components (8-connected, the dual of 4-connected foreground) that do not
    reach the border. From each hole's first pixel in raster order (whose left, upper and upper-left
    neighbours are foreground), the vertical pixel edge at its left goes up between foreground
    pixels until it meets background: another hole, whose own slit goes higher, or the outside.

    Args:
        foreground: ``[H,W]`` bool with a background border.

    Returns:
        ``[H,W]`` bool: ``cut[y, x]`` separates pixels ``(y, x - 1)`` and ``(y, x)``.
    """
    cut = np.zeros_like(foreground)
    labels, _ = connected_components(torch.from_numpy(~foreground)[None], connectivity=8)
    labels = labels[0].numpy()  # [H,W]: 1 + raster index of each component's first pixel
    first_pixels = np.unique(labels[labels > 0]) - 1
    first_pixels = first_pixels[first_pixels != 0]  # the outside starts at (0, 0)
    if first_pixels.size == 0:
        return cut
    height, width = foreground.shape
    hole_rows, hole_columns = np.divmod(first_pixels, width)
    both = foreground & _shift(foreground, 0, -1)  # [H,W]: pixels (y, x - 1) and (y, x) inside
    rows = np.arange(height)[:, None]
    last_gap = np.maximum.accumulate(np.where(both, -1, rows), axis=0)  # [H,W]
    reach = rows - last_gap  # [H,W]: consecutive `both` rows ending at each row
    lengths = reach[hole_rows - 1, hole_columns]  # [K] >= 1
    slit_rows = np.repeat(hole_rows, lengths) - (
        np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths) + 1
    )
    cut[slit_rows, np.repeat(hole_columns, lengths)] = True
    return cut


def _boundary_edges(foreground: np.ndarray, cut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which pixel sides are boundary edges, and each edge's successor along its ring.

    Args:
        foreground: ``[H,W]`` bool with a background border.
        cut: ``[H,W]`` slits from :func:`_hole_slits`.

    Returns:
        ``exists [4,H,W]`` bool and ``successor [4,H,W]`` int64 edge ids
        (``side * H * W + y * W + x``), meaningful where ``exists``.
    """
    height, width = foreground.shape
    joined_right = foreground & _shift(foreground, 0, 1) & ~_shift(cut, 0, 1)
    joined_down = foreground & _shift(foreground, 1, 0)
    joined = (  # [4,H,W]: pixel joined to its neighbour across each side
        _shift(joined_down, -1, 0),
        joined_right,
        joined_down,
        _shift(joined_right, 0, -1),
    )
    exists = np.stack([foreground & ~side for side in joined])  # [4,H,W]
    pixel = np.arange(height * width).reshape(height, width)
    successor = np.zeros((4, height, width), dtype=np.int64)
    for side in range(4):
        turn_right, turn_left = (side + 1) % 4, (side + 3) % 4
        (walk_y, walk_x), (out_y, out_x) = _WALK[side], _OUTWARD[side]
        ahead = _shift(pixel, walk_y, walk_x, fill=0)
        diagonal = _shift(pixel, walk_y + out_y, walk_x + out_x, fill=0)
        straight_exists = _shift(exists[side], walk_y, walk_x)
        successor[side] = np.where(
            exists[turn_right],
            turn_right * height * width + pixel,
            np.where(
                straight_exists,
                side * height * width + ahead,
                turn_left * height * width + diagonal,
            ),
        )
    return exists, successor


def _ring_order(successor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ring of each edge (its smallest edge) and the edge's position from there, by doubling.

    Args:
        successor: ``[E]`` next edge of each edge; the edges form disjoint rings.

    Returns:
        ``ring [E]`` (smallest edge index in the ring) and ``position [E]`` (steps from it).
    """
    count = successor.size
    ring = np.arange(count)
    jump = successor.copy()
    for _ in range(max(1, int(count).bit_length())):
        ring = np.minimum(ring, ring[jump])
        jump = jump[jump]
    # Wyllie's list ranking on rings cut before their smallest edge: steps to the ring's last edge.
    is_last = successor == ring[successor]  # the edge whose successor is the ring's smallest
    following = np.where(is_last, np.arange(count), successor)
    to_last = (~is_last).astype(np.int64)
    for _ in range(max(1, int(count).bit_length())):
        to_last = to_last + to_last[following]
        following = following[following]
    ring_length = np.bincount(ring, minlength=count)[ring]
    return ring, ring_length - 1 - to_last


def mask_to_polygons(mask: np.ndarray | torch.Tensor) -> list[list[int]]:
    """COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` of a ``[H,W]`` mask, exact (module docstring).

    Args:
        mask: ``[H,W]`` bool (or 0/1).

    Returns:
        One polygon per 4-connected foreground component, holes joined by slits; vertices are
        integer pixel-corner coordinates. Empty for an empty mask.
    """
    array = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"mask must be [H,W], got shape {list(array.shape)}")
    inside = array != 0
    rows, columns = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        return []
    top, left = rows[0], columns[0]
    # The mask's bounding box with a background border: [h+2,w+2].
    foreground = np.pad(inside[top : rows[-1] + 1, left : columns[-1] + 1], 1)
    height, width = foreground.shape
    exists, successor = _boundary_edges(foreground, _hole_slits(foreground))
    edge_ids = np.flatnonzero(exists)  # [E] ascending: tops first, raster order
    compact = np.full(exists.size, -1, dtype=np.int64)
    compact[edge_ids] = np.arange(edge_ids.size)
    ring, position = _ring_order(compact[successor.reshape(-1)[edge_ids]])
    order = np.lexsort((position, ring))  # by ring, then along it
    side, pixel = np.divmod(edge_ids[order], height * width)
    pixel_y, pixel_x = np.divmod(pixel, width)
    corner = np.asarray(_START_CORNER)[side]  # [E,2] (dy, dx)
    vertex_x = pixel_x + corner[:, 1] - 1 + left  # back from the padded box to the mask
    vertex_y = pixel_y + corner[:, 0] - 1 + top
    ring_sorted = ring[order]
    ring_start = np.r_[True, ring_sorted[1:] != ring_sorted[:-1]]  # [E]
    ring_last = np.r_[np.flatnonzero(ring_start)[1:], side.size] - 1  # per ring
    previous = np.arange(side.size) - 1
    previous[ring_start] = ring_last  # each ring closes on itself
    turns = side != side[previous]  # a corner where the walking direction changes
    polygons = []
    starts = np.flatnonzero(ring_start)
    for begin, end in zip(starts, np.r_[starts[1:], side.size], strict=True):
        keep = np.flatnonzero(turns[begin:end]) + begin
        polygons.append(np.stack([vertex_x[keep], vertex_y[keep]], axis=1).reshape(-1).tolist())
    return polygons


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """``[H,W]`` bool: pixels whose centre is inside a polygon (even-odd rule), any polygon.

    Args:
        polygons: COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` in continuous pixel coordinates.
        height: Mask height.
        width: Mask width.
    """
    mask = np.zeros((height, width), dtype=bool)
    centres_y = np.arange(height) + 0.5  # [H]
    centres_x = np.arange(width) + 0.5  # [W]
    for polygon in polygons:
        points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)  # [V,2] (x, y)
        start, end = points, np.roll(points, -1, axis=0)  # [V,2] each edge
        below_start = start[None, :, 1] <= centres_y[:, None]  # [H,V]
        spans = below_start != (end[None, :, 1] <= centres_y[:, None])  # [H,V]
        rising = end[:, 1] - start[:, 1]  # [V]
        slope = (end[:, 0] - start[:, 0]) / np.where(rising == 0, 1.0, rising)  # [V]
        crossing_x = start[None, :, 0] + (centres_y[:, None] - start[None, :, 1]) * slope
        crossing_x = np.sort(np.where(spans, crossing_x, np.inf), axis=1)  # [H,V]
        for row in np.flatnonzero(spans.any(axis=1)):
            crossings_left = np.searchsorted(crossing_x[row], centres_x)  # [W]
            mask[row] |= crossings_left % 2 == 1
    return mask
