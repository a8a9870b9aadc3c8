"""Images in every format and mode, made in memory, for tests at every level."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def gradient_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    """``[H,W,3]`` uint8 with distinct values per channel, so channel mix-ups show."""
    rows = np.linspace(0, 255, height, dtype=np.float64)[:, None]
    cols = np.linspace(0, 255, width, dtype=np.float64)[None, :]
    red = np.broadcast_to(rows, (height, width))
    green = np.broadcast_to(cols, (height, width))
    blue = (red + green) / 2
    return np.stack([red, green, blue], axis=2).round().astype(np.uint8)  # [H,W,3]


def encode(image: Image.Image, image_format: str, **save_options: object) -> bytes:
    """The image saved in ``image_format``, as bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **save_options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` but holds one row: a decompression-bomb stand-in."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1)))
        + chunk(b"IEND", b"")
    )
