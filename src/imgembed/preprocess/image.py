"""Image bytes to an RGB pixel array, deliberately and defensively.

Every input path (base64, upload, URL) ends here. Decoding checks the pixel count before any pixel
is decoded (decompression bombs), applies EXIF orientation, and converts every mode to 8-bit RGB by
a documented rule:

- grayscale (``L``, ``1``) is replicated to three channels;
- 16-bit and 32-bit integer images (``I;16*``, ``I``) are read as 16-bit and scaled by 255/65535;
- 32-bit float images (``F``) are read as values in [0, 1], clipped, and scaled by 255;
- palette, CMYK, YCbCr, LAB and HSV images are converted with Pillow's own conversion;
- images with alpha (``RGBA``, ``LA``, ``PA``, palette with transparency, premultiplied modes) are
  composited over an opaque background, white by default (:data:`DEFAULT_ALPHA_BACKGROUND`), the
  colour a browser shows behind a transparent image;
- animated images (GIF, WebP, multi-page TIFF) use their first frame.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgembed.errors import ImageDecodeError, InvalidInputError, PayloadTooLargeError
from imgembed.settings import InputLimits

logger = logging.getLogger(__name__)

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
"""Container formats Pillow may open; others (PSD, EPS, ICO, ...) are refused to keep the attack
surface small."""

DEFAULT_ALPHA_BACKGROUND = (255, 255, 255)
"""RGB colour transparent pixels are composited over."""

_DATA_URI = re.compile(
    r"^data:(?P<media>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,"
)
_WHITESPACE = re.compile(r"\s+")
_EXIF_ORIENTATION = 0x0112
_DECODE_FAILURES = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
"""What Pillow raises on malformed files, beyond its own UnidentifiedImageError."""
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


@dataclass(frozen=True)
class DecodedImage:
    """An image ready for model preprocessing.

    Attributes:
        pixels: ``[H,W,3]`` uint8 RGB, H and W after EXIF orientation.
        source_format: Container format Pillow detected, for example ``JPEG``.
        source_mode: Pillow mode before conversion, for example ``RGBA`` or ``I;16``.
        exif_transposed: Whether EXIF orientation changed the pixel layout.
    """

    pixels: np.ndarray
    source_format: str
    source_mode: str
    exif_transposed: bool

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def decode_base64_image(text: str, *, field: str = "image_b64") -> bytes:
    """Decodes base64 text, with or without a ``data:`` URI prefix, into bytes.

    Whitespace and line breaks are ignored, missing ``=`` padding is restored, and both the standard
    and the URL-safe alphabets are accepted.

    Args:
        text: The base64 text or data URI.
        field: Request field name used in error messages.

    Returns:
        The decoded bytes (not yet known to be an image).

    Raises:
        InvalidInputError: The text is empty, a data URI that is not base64, or not valid base64.
    """
    if not isinstance(text, str):
        raise InvalidInputError(
            f"{field} must be a base64 string, got {type(text).__name__}", field=field
        )
    payload = text.strip()
    if payload.startswith("data:"):
        match = _DATA_URI.match(payload)
        if match is None:
            raise InvalidInputError(
                f"{field} starts with 'data:' but is not a data URI; expected "
                "'data:image/<type>;base64,<data>'",
                field=field,
            )
        if not match.group("b64"):
            raise InvalidInputError(
                f"{field} is a data URI without ';base64'; only base64 data URIs are accepted",
                field=field,
            )
        payload = payload[match.end() :]
    payload = _WHITESPACE.sub("", payload)
    if not payload:
        raise InvalidInputError(f"{field} is empty; send the image bytes as base64", field=field)
    if "-" in payload or "_" in payload:
        payload = payload.replace("-", "+").replace("_", "/")
    payload += "=" * (-len(payload) % 4)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidInputError(
            f"{field} is not valid base64 ({error}); send the file's bytes encoded with standard "
            "base64, optionally prefixed with 'data:image/jpeg;base64,'",
            field=field,
        ) from error


def decode_image(
    data: bytes,
    limits: InputLimits,
    *,
    field: str = "image",
    alpha_background: tuple[int, int, int] = DEFAULT_ALPHA_BACKGROUND,
) -> DecodedImage:
    """Decodes image bytes to RGB pixels, enforcing size limits before decoding pixels.

    Args:
        data: Encoded image file contents.
        limits: Pixel-count and side-length limits.
        field: Request field name used in error messages.
        alpha_background: RGB colour that transparent pixels are composited over.

    Returns:
        The decoded image, EXIF orientation applied.

    Raises:
        ImageDecodeError: Not an image, an unsupported format, or a truncated/corrupt file.
        PayloadTooLargeError: More pixels than ``limits.max_image_pixels``.
        InvalidInputError: A side shorter than ``limits.min_image_side``.
    """
    if not data:
        raise ImageDecodeError(f"{field} is empty (0 bytes); expected an image file", field=field)
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError as error:
        raise ImageDecodeError(
            f"{field} is not a recognised image ({len(data)} bytes starting {data[:8]!r}); "
            f"expected one of {', '.join(ACCEPTED_FORMATS)}",
            field=field,
        ) from error
    except Image.DecompressionBombError as error:
        raise _too_many_pixels(field, limits, detail=str(error)) from error
    except _DECODE_FAILURES as error:
        raise _corrupt(field, "image", error) from error
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise _too_many_pixels(field, limits, detail=f"{width}x{height}")
    if min(width, height) < limits.min_image_side:
        raise InvalidInputError(
            f"{field} is {width}x{height} pixels; each side must be at least "
            f"{limits.min_image_side} pixels",
            field=field,
        )
    source_format = image.format or "unknown"
    source_mode = image.mode
    try:
        image.seek(0)
        image.load()
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        oriented = ImageOps.exif_transpose(image) if orientation != 1 else image
    except Image.DecompressionBombError as error:
        raise _too_many_pixels(field, limits, detail=str(error)) from error
    except _DECODE_FAILURES as error:
        raise _corrupt(field, source_format, error) from error
    exif_transposed = orientation != 1
    pixels = _to_rgb_array(oriented, alpha_background)
    return DecodedImage(
        pixels=pixels,
        source_format=source_format,
        source_mode=source_mode,
        exif_transposed=exif_transposed,
    )


def _corrupt(field: str, source_format: str, error: BaseException) -> ImageDecodeError:
    return ImageDecodeError(
        f"{field} could not be decoded as {source_format}: {error}. The file may be truncated "
        "or corrupt; re-send the complete file",
        field=field,
    )


def _too_many_pixels(field: str, limits: InputLimits, *, detail: str) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"{field} has too many pixels ({detail}); the limit is {limits.max_image_pixels:,} "
        "pixels (IMGEMBED_MAX_IMAGE_PIXELS). Downscale the image before sending it",
        field=field,
    )


def _to_rgb_array(image: Image.Image, alpha_background: tuple[int, int, int]) -> np.ndarray:
    """Converts any Pillow mode to ``[H,W,3]`` uint8 RGB by the rules in the module docstring."""
    mode = image.mode
    if mode == "RGB":
        return np.array(image, dtype=np.uint8)
    if mode.startswith("I"):
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(values, 0, 65535) * (255.0 / 65535.0)
        return _gray_to_rgb(np.rint(gray).astype(np.uint8))
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        gray = np.clip(values, 0.0, 1.0) * 255.0
        return _gray_to_rgb(np.rint(gray).astype(np.uint8))
    if (mode == "P" and "transparency" in image.info) or mode in ("RGBa", "La"):
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*alpha_background, 255))
        return np.array(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)
    return np.array(image.convert("RGB"), dtype=np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """``[H,W]`` uint8 to ``[H,W,3]`` uint8 by channel replication."""
    return np.repeat(gray[:, :, None], 3, axis=2)  # [H,W] -> [H,W,3]
