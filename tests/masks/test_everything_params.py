"""Segment-everything settings and the generator's pure steps, against Meta's ``amg`` helpers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from imgembed.errors import InvalidInputError
from imgembed.pipelines import sam2_everything_params as params_module
from imgembed.pipelines.sam2_everything import generate_everything, stability_scores
from imgembed.pipelines.sam2_everything_params import (
    CPU_MAX_POINTS_PER_BATCH,
    Sam2EverythingParams,
    auto_points_per_batch,
    crop_boxes,
    layer_point_grids,
    postprocess_chunk,
)

amg = pytest.importorskip("sam2.utils.amg", reason="Meta's sam2 is test-only")


def test_defaults_are_the_reference_generators() -> None:
    import inspect

    from torchvision_shim import import_meta_predictors

    _, generator = import_meta_predictors()
    signature = inspect.signature(generator.SAM2AutomaticMaskGenerator.__init__)
    ours = {spec.name: spec.default for spec in dataclasses.fields(Sam2EverythingParams)}
    for name, default in ours.items():
        if name == "points_per_batch":
            assert default is None, "sized to the device unless given"
            continue
        assert signature.parameters[name].default == default, name


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"points_per_side": 0}, "points_per_side"),
        ({"points_per_side": 8.5}, "points_per_side"),
        ({"points_per_batch": 0}, "points_per_batch"),
        ({"pred_iou_thresh": float("nan")}, "pred_iou_thresh"),
        ({"stability_score_thresh": "high"}, "stability_score_thresh"),
        ({"box_nms_thresh": 1.5}, "box_nms_thresh"),
        ({"crop_nms_thresh": -0.1}, "crop_nms_thresh"),
        ({"crop_overlap_ratio": 1.0}, "crop_overlap_ratio"),
        ({"crop_n_layers": -1}, "crop_n_layers"),
        ({"crop_n_points_downscale_factor": 0}, "crop_n_points_downscale_factor"),
        ({"min_mask_region_area": -5}, "min_mask_region_area"),
        ({"output_mode": "png"}, "output_mode"),
        ({"use_m2m": 1}, "use_m2m"),
        (
            {"points_per_side": 4, "crop_n_layers": 3, "crop_n_points_downscale_factor": 2},
            "crop_n_layers",
        ),
    ],
)
def test_bad_settings_are_refused_naming_the_field(settings: dict, field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        Sam2EverythingParams(**settings)
    assert caught.value.field == field
    assert field in caught.value.message


@pytest.mark.parametrize(
    ("image_hw", "layers", "overlap"),
    [
        ((240, 304), 0, 512 / 1500),
        ((240, 304), 1, 512 / 1500),
        ((1000, 700), 2, 0.2),
        ((7, 5), 3, 0.5),
    ],
)
def test_crop_boxes_are_the_references(
    image_hw: tuple[int, int], layers: int, overlap: float
) -> None:
    boxes, layer_indices = amg.generate_crop_boxes(image_hw, layers, overlap)
    ours = crop_boxes(image_hw, layers, overlap)
    assert [list(box) for box, _ in ours] == boxes
    assert [layer for _, layer in ours] == layer_indices


@pytest.mark.parametrize(("per_side", "layers", "factor"), [(32, 0, 1), (16, 2, 2), (9, 1, 3)])
def test_point_grids_are_the_references(per_side: int, layers: int, factor: int) -> None:
    expected = amg.build_all_layer_point_grids(per_side, layers, factor)
    ours = layer_point_grids(
        Sam2EverythingParams(
            points_per_side=per_side, crop_n_layers=layers, crop_n_points_downscale_factor=factor
        )
    )
    assert len(ours) == len(expected)
    for grid, reference in zip(ours, expected, strict=True):
        np.testing.assert_array_equal(grid, reference)


def test_stability_scores_are_the_references() -> None:
    logits = torch.randn(6, 37, 45, generator=torch.Generator().manual_seed(0)) * 3
    logits[5] = -10  # both masks empty: NaN, as the reference
    for threshold, offset in [(0.0, 1.0), (0.5, 0.25)]:
        torch.testing.assert_close(
            stability_scores(logits, threshold, offset),
            amg.calculate_stability_score(logits, threshold, offset),
            equal_nan=True,
        )


def test_cpu_batch_is_sized_to_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert 1 <= auto_points_per_batch(cpu) <= CPU_MAX_POINTS_PER_BATCH
    monkeypatch.setattr(params_module, "_available_ram", lambda: 8 * (48 << 20) * 4)
    assert auto_points_per_batch(cpu) == 8
    monkeypatch.setattr(params_module, "_available_ram", lambda: 1 << 20)
    assert auto_points_per_batch(cpu) == 1
    assert postprocess_chunk(cpu, (100, 100)) >= 1


def test_bad_images_are_refused() -> None:
    def never(*_: object, **__: object) -> None:
        raise AssertionError("nothing may run for a bad image")

    for image in (
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 3), np.float32),
        np.zeros((0, 4, 3), np.uint8),
    ):
        with pytest.raises(InvalidInputError, match=r"\[H,W,3\] uint8"):
            generate_everything(image, never, never)


def test_stability_scores_of_rows_wider_than_int16_counts() -> None:
    logits = torch.full((2, 2, 1 << 15), -5.0)
    logits[0, 0, : 40000 - (1 << 15)] = 5.0
    logits[0, 1] = 0.5  # inside the outer cut only
    logits[1] = 5.0
    torch.testing.assert_close(
        stability_scores(logits, 0.0, 1.0),
        torch.tensor([(40000 - (1 << 15)) / (40000 - (1 << 15) + (1 << 15)), 1.0]),
    )
