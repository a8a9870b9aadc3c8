"""SAM 2 input preprocessing and the mapping between original-image pixels and the 1024 frame.

Exactly what Meta's ``SAM2Transforms`` does for an image: RGB to float in [0, 1], resize to
1024x1024 with bilinear interpolation and antialiasing (``align_corners=False``), then normalise
with ImageNet mean and std. ``stretch`` (the default, what SAM 2 was trained on) resizes each axis
independently; ``letterbox`` keeps the aspect ratio, resizes the longer side to 1024 and pads the
bottom and right with zeros after normalisation (SAM 1's convention).

Coordinates: a point ``(x, y)`` in pixels of the original image (after EXIF orientation) maps into
the 1024 frame as ``x' = x * scale_w + pad_left`` and ``y' = y * scale_h + pad_top``; back with
``x = (x' - pad_left) / scale_w``. Pixel coordinates are continuous: ``(0, 0)`` is the top-left
corner of the top-left pixel, ``(W, H)`` the bottom-right corner of the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from imgembed.models.sam2 import IMAGENET_MEAN, IMAGENET_STD
from imgembed.settings import ResizeMode


@dataclass(frozen=True)
class FrameMapping:
    """How an original image sits in the square model input frame.

    Attributes:
        orig_hw: Original image height and width in pixels (after EXIF orientation).
        input_size: Side of the square model input, 1024 for SAM 2.
        resized_hw: Height and width the image content occupies in the input frame.
        pad: Zero padding ``(top, left, bottom, right)`` in input-frame pixels.
        scale_h: Input-frame pixels per original pixel, vertically.
        scale_w: Input-frame pixels per original pixel, horizontally.
        resize_mode: How the image was resized.
    """

    orig_hw: tuple[int, int]
    input_size: int
    resized_hw: tuple[int, int]
    pad: tuple[int, int, int, int]
    scale_h: float
    scale_w: float
    resize_mode: ResizeMode

    @classmethod
    def for_image(cls, height: int, width: int, input_size: int, mode: ResizeMode) -> FrameMapping:
        """The mapping for an image of ``height`` x ``width`` pixels."""
        if mode == "stretch":
            return cls(
                orig_hw=(height, width),
                input_size=input_size,
                resized_hw=(input_size, input_size),
                pad=(0, 0, 0, 0),
                scale_h=input_size / height,
                scale_w=input_size / width,
                resize_mode=mode,
            )
        scale = input_size / max(height, width)
        # At least one row and column: a 2 x 5000 image would otherwise round to none.
        resized_h = max(1, min(input_size, int(height * scale + 0.5)))
        resized_w = max(1, min(input_size, int(width * scale + 0.5)))
        return cls(
            orig_hw=(height, width),
            input_size=input_size,
            resized_hw=(resized_h, resized_w),
            pad=(0, 0, input_size - resized_h, input_size - resized_w),
            scale_h=scale,
            scale_w=scale,
            resize_mode=mode,
        )

    def to_frame(self, points_xy: np.ndarray) -> np.ndarray:
        """Maps ``[...,2]`` XY points in original-image pixels to input-frame pixels (same shape)."""
        scale = np.array([self.scale_w, self.scale_h], dtype=np.float64)
        offset = np.array([self.pad[1], self.pad[0]], dtype=np.float64)
        return np.asarray(points_xy, dtype=np.float64) * scale + offset

    def to_original(self, points_xy: np.ndarray) -> np.ndarray:
        """Maps ``[...,2]`` XY points in input-frame pixels back to original-image pixels."""
        scale = np.array([self.scale_w, self.scale_h], dtype=np.float64)
        offset = np.array([self.pad[1], self.pad[0]], dtype=np.float64)
        return (np.asarray(points_xy, dtype=np.float64) - offset) / scale

    def to_meta(self) -> dict[str, object]:
        """The seed worker's metadata fields plus the resize mode and the mapping formula."""
        height, width = self.orig_hw
        top, left, _, _ = self.pad
        return {
            "orig_size": [height, width],
            "input_size": [self.input_size, self.input_size],
            "resized_size": list(self.resized_hw),
            "pad": list(self.pad),
            "scale": {"h": self.scale_h, "w": self.scale_w},
            "resize_mode": self.resize_mode,
            "coordinate_transform": {
                "to_input_frame": "x_in = x * scale.w + pad[1]; y_in = y * scale.h + pad[0]",
                "to_original": "x = (x_in - pad[1]) / scale.w; y = (y_in - pad[0]) / scale.h",
                "origin": "top-left corner of the top-left pixel; (W, H) is the bottom-right corner",
                "pad_order": "top, left, bottom, right",
                "example": {
                    "original_xy": [width / 2, height / 2],
                    "input_xy": [width / 2 * self.scale_w + left, height / 2 * self.scale_h + top],
                },
            },
        }


def sam2_pixel_values(
    pixels: torch.Tensor, input_size: int, mode: ResizeMode
) -> tuple[torch.Tensor, FrameMapping]:
    """Resizes and normalises one RGB image as SAM 2's reference transforms do.

    Args:
        pixels: ``[H,W,3]`` uint8 RGB, on whichever device should do the resize.
        input_size: Side of the square model input (1024 for SAM 2).
        mode: ``stretch`` or ``letterbox``.

    Returns:
        ``[3,input_size,input_size]`` float32 normalised pixels on ``pixels``' device, and the mapping
        from original pixels to that frame.
    """
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    mapping = FrameMapping.for_image(height, width, input_size, mode)
    image = pixels.permute(2, 0, 1).unsqueeze(0).to(torch.float32) / 255.0  # [H,W,3] -> [1,3,H,W]
    resized = F.interpolate(
        image, size=mapping.resized_hw, mode="bilinear", align_corners=False, antialias=True
    )
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    normalised = (resized - mean) / std
    if mode == "letterbox":
        _, _, bottom, right = mapping.pad
        normalised = F.pad(normalised, (0, right, 0, bottom), value=0.0)
    return normalised[0], mapping
