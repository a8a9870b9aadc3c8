"""Inputs shared by the SAM 2 benchmarks: a test photo, and the same weights in both models."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sam2_reference import build_reference, reference_pixel_values
from transformers import Sam2Model

from imgembed.models.sam2_loading import load_sam2
from imgembed.models.sam2_registry import resolve_variant

PHOTO_SIZE = (1600, 1200)
"""Width and height of the test photo: a typical phone or camera export."""


def make_photo(width: int = PHOTO_SIZE[0], height: int = PHOTO_SIZE[1], seed: int = 0) -> bytes:
    """A JPEG (quality 90) of smooth random colour blobs over a gradient, with a little grain."""
    rng = np.random.default_rng(seed)
    blobs = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8))
    blobs = blobs.resize((width, height), Image.Resampling.BICUBIC)
    rows, cols = np.mgrid[0:height, 0:width]
    gradient = (cols / width * 60 + rows / height * 40)[..., None]  # [H,W,1]
    grain = rng.normal(0.0, 3.0, (height, width, 3))
    pixels = np.asarray(blobs, dtype=np.float64) * 0.75 + gradient + grain
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def photo_rgb() -> np.ndarray:
    """The test photo decoded: ``[H,W,3]`` uint8 RGB."""
    with Image.open(io.BytesIO(make_photo())) as image:
        return np.array(image.convert("RGB"))


def photo_pixel_values() -> torch.Tensor:
    """The test photo as the encoders take it: ``[1,3,1024,1024]`` normalised float32."""
    return reference_pixel_values(photo_rgb())


def reference_and_imgembed(
    model_name: str, folder: Path, seed: int = 0, device: torch.device | None = None
) -> tuple[torch.nn.Module, Sam2Model, Path]:
    """Meta's model with seeded random weights, and imgembed's model loaded from the same weights.

    Args:
        model_name: Any name imgembed resolves (``sam2.1-hiera-tiny``).
        folder: Where to write the Meta checkpoint.
        seed: Seed of the random weights.
        device: Where both models run (the CPU when ``None``); the weights are drawn on the CPU,
            so they are the same on every device.

    Returns:
        Meta's ``SAM2Base``, imgembed's ``Sam2Model`` (both eval, on ``device``, float32
        parameters), and the checkpoint
        file, laid out as Meta releases them (``{"model": state_dict}``).
    """
    variant = resolve_variant(model_name)
    torch.manual_seed(seed)
    reference = build_reference(variant.meta_config)
    checkpoint = folder / variant.meta_checkpoint
    torch.save({"model": reference.state_dict()}, checkpoint)
    device = device or torch.device("cpu")
    model = load_sam2(variant.name, str(checkpoint), device=device).model
    return reference.to(device), model, checkpoint
