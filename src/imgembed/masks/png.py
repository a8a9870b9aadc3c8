"""A binary mask as a PNG file: 8-bit greyscale, 255 inside, 0 outside (base64 is the caller's)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from imgembed.errors import InvalidInputError

INSIDE = 255
"""Grey level of mask pixels."""


def encode_png(mask: np.ndarray, *, compress_level: int = 6) -> bytes:
    """PNG bytes of a ``[H,W]`` bool (or 0/1) mask: mode ``L``, 255 inside, 0 outside.

    Args:
        mask: ``[H,W]`` mask.
        compress_level: zlib level 0 (fastest) to 9 (smallest).
    """
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"mask must be [H,W], got shape {list(array.shape)}")
    grey = (array != 0).astype(np.uint8) * INSIDE  # [H,W] uint8
    buffer = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """``[H,W]`` bool mask of a PNG: any non-zero grey level is inside (colour converted to grey).

    Raises:
        InvalidInputError: The bytes are not a PNG image.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise InvalidInputError(
                    f"mask is a {image.format} image; expected a PNG", field="mask"
                )
            array = np.asarray(image if image.mode in ("1", "L") else image.convert("L"))
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidInputError(
            f"mask is not a readable PNG ({error}); expected PNG bytes", field="mask"
        ) from error
    return array != 0
