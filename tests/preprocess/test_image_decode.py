"""Decoding: every mode to RGB by the documented rule, and every bad input refused clearly."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from imagefactory import encode, gradient_rgb, png_header_only
from PIL import Image

from imgembed.errors import ImageDecodeError, InvalidInputError, PayloadTooLargeError
from imgembed.preprocess.image import decode_base64_image, decode_image
from imgembed.server.errors import http_status
from imgembed.settings import InputLimits

LIMITS = InputLimits()


def test_rgb_png_round_trips_exactly(rgb_pixels: np.ndarray, png_bytes: bytes) -> None:
    decoded = decode_image(png_bytes, LIMITS)
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.shape == (48, 64, 3)
    np.testing.assert_array_equal(decoded.pixels, rgb_pixels)
    assert decoded.source_format == "PNG"
    assert not decoded.exif_transposed


def test_grayscale_is_replicated_to_three_channels() -> None:
    gray = gradient_rgb()[:, :, 0]
    decoded = decode_image(encode(Image.fromarray(gray, mode="L"), "PNG"), LIMITS)
    assert decoded.source_mode == "L"
    for channel in range(3):
        np.testing.assert_array_equal(decoded.pixels[:, :, channel], gray)


def test_sixteen_bit_grayscale_is_scaled_by_255_over_65535() -> None:
    values = np.array([[0, 257, 65535, 32896]], dtype=np.uint16).repeat(4, axis=0)
    decoded = decode_image(encode(Image.fromarray(values), "PNG"), LIMITS)
    assert decoded.source_mode.startswith("I")
    np.testing.assert_array_equal(decoded.pixels[0, :, 0], [0, 1, 255, 128])


def test_alpha_is_composited_over_white_by_default() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red, fully transparent in the left half, opaque in the right half
    rgba[:, 2:, 3] = 255
    data = encode(Image.fromarray(rgba, mode="RGBA"), "PNG")
    pixels = decode_image(data, LIMITS).pixels
    np.testing.assert_array_equal(pixels[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(pixels[0, 3], [200, 0, 0])
    black = decode_image(data, LIMITS, alpha_background=(0, 0, 0)).pixels
    np.testing.assert_array_equal(black[0, 0], [0, 0, 0])


def test_palette_with_transparency_is_composited() -> None:
    palette_image = Image.new("P", (4, 4), 0)
    palette_image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette_image.putpixel((3, 3), 1)
    data = encode(palette_image, "PNG", transparency=0)
    pixels = decode_image(data, LIMITS).pixels
    np.testing.assert_array_equal(pixels[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(pixels[3, 3], [200, 100, 50])


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (8, 8), (0, 255, 0, 0)), "JPEG", quality=100)
    decoded = decode_image(data, LIMITS)
    assert decoded.source_mode == "CMYK"
    red, green, blue = decoded.pixels[4, 4].astype(int)
    assert red > 240  # magenta
    assert green < 15
    assert blue > 240


def test_exif_orientation_is_applied() -> None:
    pixels = gradient_rgb(height=20, width=40)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(encode(image, "JPEG", quality=95, exif=exif), LIMITS)
    assert decoded.exif_transposed
    assert decoded.pixels.shape == (40, 20, 3)


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(decode_image(data, LIMITS).pixels[0, 0], [255, 0, 0])


@pytest.mark.parametrize(
    ("data", "phrase"),
    [
        (b"", "empty"),
        (b"this is plain text, not an image at all", "not a recognised image"),
        (b"%PDF-1.7\n" + b"0" * 100, "not a recognised image"),
    ],
)
def test_non_images_are_refused(data: bytes, phrase: str) -> None:
    with pytest.raises(ImageDecodeError, match=phrase) as caught:
        decode_image(data, LIMITS, field="image_b64")
    assert http_status(caught.value) == 400
    assert caught.value.field == "image_b64"


def test_truncated_jpeg_is_refused(jpeg_bytes: bytes) -> None:
    with pytest.raises(ImageDecodeError, match="truncated or corrupt") as caught:
        decode_image(jpeg_bytes[: len(jpeg_bytes) // 2], LIMITS, field="file")
    assert caught.value.field == "file"


def test_unsupported_container_format_is_refused() -> None:
    data = encode(Image.new("RGB", (8, 8)), "ICO")
    with pytest.raises(ImageDecodeError, match="expected one of JPEG, PNG"):
        decode_image(data, LIMITS)


@pytest.mark.parametrize("size", [(1, 1), (1, 50), (50, 1)])
def test_too_small_images_are_refused(size: tuple[int, int]) -> None:
    data = encode(Image.new("RGB", size), "PNG")
    with pytest.raises(InvalidInputError, match="at least 2 pixels") as caught:
        decode_image(data, LIMITS, field="image_b64")
    assert http_status(caught.value) == 400


def test_zero_pixel_image_is_refused() -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(png_header_only(0, 0), LIMITS)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    limits = InputLimits(max_image_pixels=1_000_000)
    with pytest.raises(PayloadTooLargeError, match="2000x2000") as caught:
        decode_image(png_header_only(2000, 2000), limits, field="image_b64")
    assert http_status(caught.value) == 413
    assert "IMGEMBED_MAX_IMAGE_PIXELS" in caught.value.message


def test_bomb_beyond_pillows_own_limit_is_refused_too() -> None:
    with pytest.raises(PayloadTooLargeError, match="too many pixels"):
        decode_image(png_header_only(30000, 30000), LIMITS)


@pytest.mark.parametrize(
    "prefix", ["", "data:image/png;base64,", "data:;base64,", "  data:image/png;base64,"]
)
def test_base64_with_or_without_data_prefix(png_bytes: bytes, prefix: str) -> None:
    text = prefix + base64.b64encode(png_bytes).decode()
    assert decode_base64_image(text) == png_bytes


def test_base64_tolerates_line_breaks_missing_padding_and_urlsafe(png_bytes: bytes) -> None:
    standard = base64.b64encode(png_bytes).decode()
    wrapped = "\n".join(standard[i : i + 76] for i in range(0, len(standard), 76))
    assert decode_base64_image(wrapped) == png_bytes
    assert (
        decode_base64_image(base64.urlsafe_b64encode(png_bytes).decode().rstrip("=")) == png_bytes
    )


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("data:image/png;base64,", "empty"),
        ("not base64 at all!!", "not valid base64"),
        ("data:image/png,iVBORw0KGgo=", "without ';base64'"),
        ("data:garbage", "not a data URI"),
    ],
)
def test_bad_base64_is_refused_naming_the_field(text: str, phrase: str) -> None:
    with pytest.raises(InvalidInputError, match=phrase) as caught:
        decode_base64_image(text, field="image_b64")
    assert caught.value.field == "image_b64"
    assert http_status(caught.value) == 400
