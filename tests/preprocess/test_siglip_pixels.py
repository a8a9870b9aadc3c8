"""SigLIP 2 image preprocessing against ``transformers``' own Pillow image processors.

Within the intermediate limit the input must be bit-identical to ``SiglipImageProcessorPil``
(FixRes) and ``Siglip2ImageProcessorPil`` (NaFlex); above it, close to the full-resolution path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from siglip_checkpoints import photo_like
from transformers import Siglip2ImageProcessorPil, SiglipImageProcessorPil

from imgembed.errors import InvalidInputError
from imgembed.models.siglip_variants import ImageProcessing
from imgembed.preprocess import siglip_pixels
from imgembed.preprocess.siglip_pixels import (
    fixres_pixel_values,
    intermediate_reduction_factor,
    naflex_grid,
    naflex_patches,
    reduce_long_side,
)

IMAGENET = {"image_mean": (0.485, 0.456, 0.406), "image_std": (0.229, 0.224, 0.225)}
FILTERS = {"bilinear": 2, "bicubic": 3, "lanczos": 1}
SHAPES = [(48, 64), (300, 200), (37, 1000), (1, 1), (1000, 7), (224, 224)]


def random_pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def cosine(first: torch.Tensor, second: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(
        first.flatten().double(), second.flatten().double(), dim=0
    ).item()


@pytest.mark.parametrize(("height", "width"), SHAPES)
@pytest.mark.parametrize("resample", list(FILTERS))
def test_fixres_is_bit_identical_to_the_processor(height: int, width: int, resample: str) -> None:
    pixels = random_pixels(height, width)
    processing = ImageProcessing("fixres", 64, 16, None, resample)  # type: ignore[arg-type]
    reference = SiglipImageProcessorPil(
        size={"height": 64, "width": 64},
        resample=FILTERS[resample],
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )

    expected = reference(images=Image.fromarray(pixels), return_tensors="pt")["pixel_values"][0]
    actual = fixres_pixel_values(pixels, processing)

    assert actual.dtype == torch.float32
    assert actual.shape == (3, 64, 64)
    assert torch.equal(actual, expected)


def test_fixres_per_channel_mean_and_std() -> None:
    pixels = random_pixels(90, 70, seed=1)
    processing = ImageProcessing("fixres", 32, 16, None, "bicubic", **IMAGENET)
    reference = SiglipImageProcessorPil(
        size={"height": 32, "width": 32},
        resample=3,
        image_mean=list(IMAGENET["image_mean"]),
        image_std=list(IMAGENET["image_std"]),
    )
    expected = reference(images=Image.fromarray(pixels), return_tensors="pt")["pixel_values"][0]
    assert torch.equal(fixres_pixel_values(pixels, processing), expected)


@pytest.mark.parametrize(("height", "width"), SHAPES)
@pytest.mark.parametrize("max_num_patches", [16, 37, 256])
def test_naflex_is_bit_identical_to_the_processor(
    height: int, width: int, max_num_patches: int
) -> None:
    pixels = random_pixels(height, width, seed=2)
    processing = ImageProcessing("naflex", None, 16, max_num_patches, "bilinear")
    reference = Siglip2ImageProcessorPil(patch_size=16, max_num_patches=max_num_patches)

    expected = reference(images=Image.fromarray(pixels), return_tensors="pt")
    actual = naflex_patches(pixels, processing)

    assert actual.pixel_values.shape == (max_num_patches, 16 * 16 * 3)
    assert torch.equal(actual.pixel_values, expected["pixel_values"][0])
    assert torch.equal(actual.attention_mask, expected["pixel_attention_mask"][0])
    assert actual.spatial_shape == tuple(expected["spatial_shapes"][0].tolist())


def test_naflex_budget_can_be_overridden() -> None:
    processing = ImageProcessing("naflex", None, 16, 256, "bilinear")
    patches = naflex_patches(random_pixels(100, 300), processing, max_num_patches=12)
    rows, columns = patches.spatial_shape
    assert patches.pixel_values.shape[0] == 12
    assert rows * columns <= 12
    assert int(patches.attention_mask.sum()) == rows * columns
    with pytest.raises(InvalidInputError, match="max_num_patches"):
        naflex_patches(random_pixels(10, 10), replace_budget(processing, None))


def replace_budget(processing: ImageProcessing, budget: int | None) -> ImageProcessing:
    return ImageProcessing("naflex", None, processing.patch_size, budget, processing.resample)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (16, 16), (720, 1280), (1, 10_000)])
@pytest.mark.parametrize("budget", [1, 4, 256, 1024])
def test_naflex_grid_fits_the_budget(height: int, width: int, budget: int) -> None:
    rows, columns = naflex_grid(height, width, 16, budget)
    assert rows >= 1
    assert columns >= 1
    assert rows * columns <= max(budget, 1)


def test_naflex_grid_keeps_the_aspect_ratio() -> None:
    assert naflex_grid(720, 1280, 16, 256) == (12, 21)
    assert naflex_grid(1280, 720, 16, 256) == (21, 12)


# The intermediate reduction of huge images.


@pytest.mark.parametrize(
    ("height", "width", "factor"),
    [(2048, 1000, 1), (2049, 10, 2), (4000, 6000, 3), (6000, 4000, 3), (1, 2049, 2)],
)
def test_reduction_factor(height: int, width: int, factor: int) -> None:
    assert intermediate_reduction_factor(height, width, 2048) == factor
    assert intermediate_reduction_factor(height, width, None) == 1


def test_images_within_the_limit_are_not_copied() -> None:
    pixels = random_pixels(2048, 1536)
    assert reduce_long_side(pixels, 2048) is pixels
    assert reduce_long_side(pixels, None) is pixels


@pytest.mark.parametrize(("height", "width", "max_side"), [(103, 61, 20), (61, 103, 7), (50, 9, 8)])
def test_strips_equal_one_whole_reduction(
    height: int, width: int, max_side: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many strips (a tiny strip budget) give exactly Pillow's reduction of the whole image."""
    monkeypatch.setattr(siglip_pixels, "STRIP_PIXELS", 200)
    pixels = random_pixels(height, width, seed=3)
    factor = intermediate_reduction_factor(height, width, max_side)

    reduced = reduce_long_side(pixels, max_side)

    expected = np.asarray(Image.fromarray(pixels).reduce(factor))
    assert np.array_equal(reduced, expected)
    assert max(reduced.shape[:2]) <= max_side


def test_huge_photo_stays_close_to_the_full_resolution_path() -> None:
    """A 6000x4000 photo-like image at the seed's 512: reduced first, or resized from full size."""
    pixels = photo_like(4000, 6000, seed=4)
    processing = ImageProcessing("fixres", 512, 16, None, "bilinear")

    reduced_path = fixres_pixel_values(pixels, processing)
    full_path = fixres_pixel_values(pixels, processing, max_intermediate_side=None)

    assert cosine(reduced_path, full_path) > 1 - 1e-3
    assert (reduced_path - full_path).abs().mean() < 0.02  # of a [-1, 1] range


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((4, 4, 3), np.float32),
        np.zeros((0, 4, 3), np.uint8),
    ],
)
def test_refuses_what_is_not_decoded_rgb(pixels: np.ndarray) -> None:
    with pytest.raises(InvalidInputError):
        fixres_pixel_values(pixels, ImageProcessing("fixres", 32, 16, None))
