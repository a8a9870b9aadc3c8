"""COCO polygons from masks: re-rasterised by pycocotools and by our own rasteriser, they give back
exactly the mask, holes included; one polygon per 4-connected component."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgembed.masks.polygons import mask_to_polygons, polygons_to_mask
from imgembed.masks.regions import connected_components

mask_utils = pytest.importorskip("pycocotools.mask", reason="pycocotools is a test-only dependency")
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def pycocotools_rasterise(polygons: list[list[int]], height: int, width: int) -> np.ndarray:
    if not polygons:
        return np.zeros((height, width), bool)
    rles = mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def nested_rings() -> np.ndarray:
    """A square with a hole holding an island that has its own hole, and a diagonal neighbour."""
    mask = np.zeros((21, 24), bool)
    mask[1:20, 1:20] = True
    mask[4:17, 4:17] = False
    mask[6:15, 6:15] = True
    mask[9:12, 9:12] = False
    mask[20, 20] = True  # touches the square's corner only: a separate 4-component
    mask[0, 22:24] = True  # touches the border
    return mask


def shaped_masks() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    masks = [
        np.ones((1, 1), bool),
        np.ones((6, 9), bool),
        np.eye(6, dtype=bool),
        nested_rings(),
        np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], bool),
        np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], bool),  # one-pixel hole
        np.array([[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1], [1, 1, 1, 1]], bool),  # diagonal hole
    ]
    for _ in range(150):
        height, width = rng.integers(1, 40, 2)
        noisy = rng.random((height, width)) < rng.random()
        blob = np.zeros((height, width), bool)
        blob[1:-1, 1:-1] = True
        masks.extend([noisy, blob & (rng.random((height, width)) > 0.2)])
    return masks


def signed_area(polygon: list[int]) -> float:
    x, y = np.asarray(polygon, dtype=np.float64).reshape(-1, 2).T
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def test_polygons_rasterise_back_to_the_mask_with_pycocotools_and_our_rasteriser() -> None:
    for mask in shaped_masks():
        polygons = mask_to_polygons(mask)
        height, width = mask.shape
        np.testing.assert_array_equal(pycocotools_rasterise(polygons, height, width), mask)
        np.testing.assert_array_equal(polygons_to_mask(polygons, height, width), mask)


def test_one_clockwise_polygon_per_4_connected_component_holes_included() -> None:
    for mask in shaped_masks():
        polygons = mask_to_polygons(mask)
        labels, areas = connected_components(torch.from_numpy(mask)[None], connectivity=4)
        component_labels, first = np.unique(labels.numpy()[labels.numpy() > 0], return_index=True)
        component_sizes = areas.numpy()[labels.numpy() > 0][first]
        # The shoelace area of each polygon (clockwise on screen: positive; slits add nothing,
        # holes subtract) is its component's pixel count.
        assert sorted(signed_area(polygon) for polygon in polygons) == sorted(component_sizes)
        assert len(polygons) == len(component_labels)


def test_vertices_are_integer_corners_without_collinear_points() -> None:
    for mask in shaped_masks()[:40]:
        for polygon in mask_to_polygons(mask):
            assert all(isinstance(value, int) for value in polygon)
            assert len(polygon) % 2 == 0
            assert len(polygon) >= 8
            points = np.asarray(polygon).reshape(-1, 2)
            steps = np.roll(points, -1, axis=0) - points
            assert np.all((steps[:, 0] == 0) != (steps[:, 1] == 0)), "axis-aligned steps only"
            turns = np.sign(steps) != np.sign(np.roll(steps, 1, axis=0))
            assert turns.any(axis=1).all(), "no vertex between two steps in the same direction"


def test_known_polygons() -> None:
    assert mask_to_polygons(np.zeros((3, 3), bool)) == []
    assert mask_to_polygons(np.ones((1, 1), bool)) == [[0, 0, 1, 0, 1, 1, 0, 1]]
    square = np.zeros((4, 5), bool)
    square[1:3, 2:5] = True
    assert mask_to_polygons(square) == [[2, 1, 5, 1, 5, 3, 2, 3]]
    diagonal = np.eye(2, dtype=bool)
    assert mask_to_polygons(diagonal) == [[0, 0, 1, 0, 1, 1, 0, 1], [1, 1, 2, 1, 2, 2, 1, 2]]
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    # Clockwise from the top-left corner, down the slit at x = 1 and on down the hole's left
    # side, round the hole anticlockwise, back up the slit, then on round the outside.
    slit_and_hole = [1, 2, 2, 2, 2, 1, 1, 1, 1, 0]
    assert mask_to_polygons(ring) == [[0, 0, 1, 0, *slit_and_hole, 3, 0, 3, 3, 0, 3]]


def test_tensor_input_and_wrong_rank() -> None:
    mask = np.eye(3, dtype=bool)
    assert mask_to_polygons(torch.from_numpy(mask)) == mask_to_polygons(mask)
    with pytest.raises(ValueError, match=r"\[H,W\]"):
        mask_to_polygons(np.zeros((1, 2, 2), bool))
