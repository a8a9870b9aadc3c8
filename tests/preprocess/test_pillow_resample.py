"""Pillow's reduce and resize reproduced in torch integer arithmetic (the device path of SigLIP 2
preprocessing), checked against Pillow itself on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fake_cuda import install, on_cuda
from PIL import Image

from imgembed.preprocess import pillow_resample
from imgembed.preprocess.siglip_pixels import _PILLOW_FILTERS

RNG = np.random.default_rng(18)


def noise(height: int, width: int) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def pillow_resize(pixels: np.ndarray, height: int, width: int, resample: str) -> np.ndarray:
    image = Image.fromarray(pixels)
    return np.asarray(image.resize((width, height), resample=_PILLOW_FILTERS[resample]))


@pytest.mark.parametrize(
    ("height", "width", "factor"),
    [
        (2049, 100, 2),
        (4097, 301, 3),
        (500, 7, 3),
        (61, 61, 4),
        (2, 900, 5),
        (1001, 3, 7),
        (9, 9, 9),
    ],
)
def test_reduce_equals_pillow_including_partial_edge_boxes(
    height: int, width: int, factor: int
) -> None:
    pixels = noise(height, width)
    expected = np.asarray(Image.fromarray(pixels).reduce(factor))
    actual = pillow_resample.reduce(torch.from_numpy(pixels), factor).numpy()
    np.testing.assert_array_equal(actual, expected)


def test_reduce_by_one_is_the_image_itself() -> None:
    pixels = torch.from_numpy(noise(5, 7))
    assert pillow_resample.reduce(pixels, 1) is pixels


@pytest.mark.parametrize("resample", ["bilinear", "bicubic", "box", "lanczos"])
@pytest.mark.parametrize(
    ("height", "width", "out_height", "out_width"),
    [
        (64, 500, 64, 224),  # width shrinks
        (64, 37, 64, 384),  # width grows
        (700, 40, 224, 40),  # height shrinks
        (1, 1, 224, 1),  # a single pixel
        (3000, 2, 16, 2),  # a huge aspect ratio
    ],
)
def test_one_axis_resize_equals_pillow(
    resample: str, height: int, width: int, out_height: int, out_width: int
) -> None:
    """One pass, so no pass order to disagree on: the weights and rounding are Pillow's."""
    pixels = noise(height, width)
    expected = pillow_resize(pixels, out_height, out_width, resample)
    actual = pillow_resample.resize(torch.from_numpy(pixels), out_height, out_width, resample)  # type: ignore[arg-type]
    np.testing.assert_array_equal(actual.numpy(), expected)


@pytest.mark.parametrize(
    ("height", "width", "out_height", "out_width"),
    [
        (480, 640, 224, 224),
        (1, 1, 224, 224),
        (2, 3000, 224, 224),
        (3000, 2, 16, 512),
        (100, 100, 224, 224),
        (1024, 750, 224, 224),
        (37, 91, 384, 384),
        (133, 277, 512, 512),
    ],
)
def test_bilinear_resize_is_within_one_level_of_pillow(
    height: int, width: int, out_height: int, out_width: int
) -> None:
    """Both axes change: Pillow may run the vertical pass first, which rounds a different
    intermediate image; the bilinear results still agree within one 8-bit level."""
    for pixels in (noise(height, width), _smooth(height, width)):
        expected = pillow_resize(pixels, out_height, out_width, "bilinear").astype(np.int16)
        actual = pillow_resample.resize(torch.from_numpy(pixels), out_height, out_width, "bilinear")
        assert actual.dtype == torch.uint8
        assert actual.shape == (out_height, out_width, 3)
        assert np.abs(actual.numpy().astype(np.int16) - expected).max() <= 1


def _smooth(height: int, width: int) -> np.ndarray:
    rows, columns = np.mgrid[0:height, 0:width]
    red = columns * 255 // max(width - 1, 1)
    green = rows * 255 // max(height - 1, 1)
    blue = (rows + columns) % 256
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def test_same_size_is_a_copy() -> None:
    pixels = torch.from_numpy(noise(9, 11))
    resized = pillow_resample.resize(pixels, 9, 11, "bilinear")
    assert torch.equal(resized, pixels)
    assert resized.data_ptr() != pixels.data_ptr()


def test_weights_sum_to_one_in_fixed_point() -> None:
    first, weights = pillow_resample.coefficients(1000, 224, "bilinear")
    assert first.shape == (224,)
    assert weights.dtype == np.int32
    sums = weights.astype(np.int64).sum(axis=1)
    assert np.abs(sums - (1 << pillow_resample.PRECISION_BITS)).max() <= weights.shape[1]


def test_nearest_is_refused_with_the_supported_filters() -> None:
    with pytest.raises(ValueError, match="bilinear"):
        pillow_resample.coefficients(10, 5, "nearest")


def test_device_tables_are_made_once_per_sizes_filter_and_device() -> None:
    pillow_resample.device_coefficients.cache_clear()
    cpu = torch.device("cpu")
    first = pillow_resample.device_coefficients(1600, 224, "bilinear", cpu)
    again = pillow_resample.device_coefficients(1600, 224, "bilinear", cpu)
    assert first[0] is again[0]
    assert first[1] is again[1]
    other = pillow_resample.device_coefficients(1200, 224, "bilinear", cpu)
    assert other[0] is not first[0]
    start, weights = pillow_resample.coefficients(1600, 224, "bilinear")
    assert torch.equal(first[1], torch.from_numpy(weights))
    assert torch.equal(first[0][:, 0], torch.from_numpy(start))


def test_shared_tables_are_claimed_by_the_stream_that_reads_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tables cached across worker threads are read on each thread's own stream: each read marks
    them (record_stream) so that an evicted table is not reused while a stream still reads it."""
    cuda = install(monkeypatch)
    on_device = on_cuda(torch.zeros(4, 3))
    on_host = torch.zeros(4, 3)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        pillow_resample.claim(on_device, on_host)
    assert cuda.entries("record_stream") == [("record_stream", on_device, stream)]
