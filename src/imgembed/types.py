"""Plain request-side types shared by the engine and its shells (HTTP, RunPod, CLI, client).

A leaf module: standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageBytes:
    """An encoded image file's bytes (an upload, a file on disk).

    Attributes:
        data: The file contents.
        field: Request field the image came from, named in error messages.
    """

    data: bytes
    field: str = "file"


@dataclass(frozen=True)
class ImageBase64:
    """An image as base64 text, with or without a ``data:`` URI prefix."""

    text: str
    field: str = "image_b64"


@dataclass(frozen=True)
class ImageURL:
    """An image to download (``http``/``https``), or a ``data:`` URI given where a URL goes."""

    url: str
    field: str = "input_image_url"


ImageInput = ImageBytes | ImageBase64 | ImageURL
