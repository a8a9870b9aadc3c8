"""SAM 2 preprocessing: the reference transform, and the coordinate mapping both ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from imgembed.preprocess.sam2_frame import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrameMapping,
    sam2_pixel_values,
)


def reference_transform(pixels: np.ndarray) -> torch.Tensor:
    """Meta's SAM2Transforms for an image, written out: ToTensor, Resize(1024) with antialias,
    Normalize. (torchvision's tensor resize calls this interpolate.)"""
    image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0  # [H,W,3] -> [3,H,W]
    resized = F.interpolate(
        image[None], size=(1024, 1024), mode="bilinear", align_corners=False, antialias=True
    )[0]
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (resized - mean) / std


def test_stretch_matches_reference_transform(rgb_pixels: np.ndarray) -> None:
    values, mapping = sam2_pixel_values(torch.from_numpy(rgb_pixels), 1024, "stretch")
    assert values.shape == (3, 1024, 1024)
    assert values.dtype == torch.float32
    torch.testing.assert_close(values, reference_transform(rgb_pixels), rtol=0, atol=1e-6)
    assert mapping.pad == (0, 0, 0, 0)
    assert mapping.resized_hw == (1024, 1024)
    assert mapping.scale_w == pytest.approx(1024 / 64)
    assert mapping.scale_h == pytest.approx(1024 / 48)


def test_downscaling_uses_antialias() -> None:
    """A 1-pixel checkerboard averages to grey with antialias; without it, it aliases."""
    checker = ((np.indices((2048, 2048)).sum(axis=0) % 2) * 255).astype(np.uint8)
    pixels = np.repeat(checker[:, :, None], 3, axis=2)
    values, _ = sam2_pixel_values(torch.from_numpy(pixels), 1024, "stretch")
    grey = (0.5 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert values[0].std().item() < 0.01
    assert values[0].mean().item() == pytest.approx(grey, abs=0.01)


def test_letterbox_keeps_aspect_and_pads_bottom_right_with_zeros(rgb_pixels: np.ndarray) -> None:
    values, mapping = sam2_pixel_values(torch.from_numpy(rgb_pixels), 1024, "letterbox")
    assert mapping.resized_hw == (768, 1024)
    assert mapping.pad == (0, 0, 256, 0)
    assert mapping.scale_h == mapping.scale_w == pytest.approx(16.0)
    assert torch.count_nonzero(values[:, 768:, :]) == 0
    content = F.interpolate(
        (torch.from_numpy(rgb_pixels).permute(2, 0, 1).float() / 255)[None],
        size=(768, 1024),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )[0]
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(values[:, :768], (content - mean) / std, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
@pytest.mark.parametrize(("height", "width"), [(48, 64), (1000, 10), (3, 2000), (1024, 1024)])
def test_mapping_round_trips_and_corners_land_on_frame_edges(
    mode: str, height: int, width: int
) -> None:
    mapping = FrameMapping.for_image(height, width, 1024, mode)  # type: ignore[arg-type]
    points = np.array([[0.0, 0.0], [width, height], [width / 3, height / 7]])
    frame = mapping.to_frame(points)
    np.testing.assert_allclose(mapping.to_original(frame), points, rtol=1e-12)
    np.testing.assert_allclose(frame[0], [0, 0])
    if mode == "stretch":
        np.testing.assert_allclose(frame[1], [1024, 1024])
    else:
        assert max(frame[1]) == pytest.approx(1024)
        assert mapping.resized_hw[0] + mapping.pad[2] == 1024
        assert mapping.resized_hw[1] + mapping.pad[3] == 1024


def test_meta_holds_seed_fields_and_a_worked_example() -> None:
    meta = FrameMapping.for_image(480, 640, 1024, "letterbox").to_meta()
    assert meta["orig_size"] == [480, 640]
    assert meta["input_size"] == [1024, 1024]
    assert meta["resized_size"] == [768, 1024]
    assert meta["pad"] == [0, 0, 256, 0]
    assert meta["scale"] == {"h": 1.6, "w": 1.6}
    assert meta["resize_mode"] == "letterbox"
    example = meta["coordinate_transform"]["example"]  # type: ignore[index]
    assert example == {"original_xy": [320.0, 240.0], "input_xy": [512.0, 384.0]}
