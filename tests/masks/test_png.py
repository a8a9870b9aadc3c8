"""Masks as PNG: 8-bit greyscale, 255 inside; Pillow reads them back exactly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imgembed.errors import InvalidInputError
from imgembed.masks.png import decode_png, encode_png


@pytest.mark.parametrize("shape", [(1, 1), (17, 5), (64, 96)])
def test_png_round_trip_is_exact(shape: tuple[int, int]) -> None:
    mask = np.random.default_rng(0).random(shape) < 0.4
    data = encode_png(mask)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "L"
        assert image.size == (shape[1], shape[0])
        grey = np.asarray(image)
    np.testing.assert_array_equal(grey, mask.astype(np.uint8) * 255)
    np.testing.assert_array_equal(decode_png(data), mask)


def test_png_of_an_integer_mask_and_of_a_colour_png() -> None:
    mask = np.array([[0, 1, 2], [0, 0, 7]])
    np.testing.assert_array_equal(decode_png(encode_png(mask)), mask != 0)
    colour = np.zeros((2, 3, 3), np.uint8)
    colour[0, 1] = (255, 255, 255)
    buffer = io.BytesIO()
    Image.fromarray(colour).save(buffer, format="PNG")
    np.testing.assert_array_equal(decode_png(buffer.getvalue()), [[0, 1, 0], [0, 0, 0]])


def test_wrong_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[H,W\]"):
        encode_png(np.zeros((2, 2, 2), bool))
    with pytest.raises(InvalidInputError, match="not a readable PNG"):
        decode_png(b"not a png")
    buffer = io.BytesIO()
    Image.new("L", (2, 2)).save(buffer, format="BMP")
    with pytest.raises(InvalidInputError, match="expected a PNG"):
        decode_png(buffer.getvalue())
