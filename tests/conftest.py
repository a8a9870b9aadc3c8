"""Fixtures shared by every test level."""

from __future__ import annotations

import numpy as np
import pytest
from imagefactory import encode, gradient_rgb
from PIL import Image


@pytest.fixture
def rgb_pixels() -> np.ndarray:
    return gradient_rgb()


@pytest.fixture
def png_bytes(rgb_pixels: np.ndarray) -> bytes:
    return encode(Image.fromarray(rgb_pixels), "PNG")


@pytest.fixture
def jpeg_bytes(rgb_pixels: np.ndarray) -> bytes:
    return encode(Image.fromarray(rgb_pixels), "JPEG", quality=95)
