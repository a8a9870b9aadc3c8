"""SigLIP 2 image preprocessing: decoded RGB pixels to model input, as the model's processor does it.

FixRes, exactly what ``transformers``' ``SiglipImageProcessor`` does on its Pillow path: squash the
image to the model's square size with Pillow's resize (the checkpoint's filter: bilinear for the
released SigLIP 2 models), take the 8-bit values to float as ``value * (1/255)`` computed in
float64 and stored as float32, then ``(x - mean) / std`` in float32 with mean and std 0.5.

NaFlex, exactly what ``Siglip2ImageProcessor`` does: keep the aspect ratio and resize so that the
patch grid is as large as fits ``max_num_patches`` (each side a multiple of the patch size, at
least one patch), normalise the same way, cut into patches (each flattened in row, column,
channel order) and pad with zero patches to ``max_num_patches``, with a mask and the grid shape.

Before either, like the seed worker, an image whose long side exceeds ``max_intermediate_side``
(2048 px by default) is first reduced to at most that: a box average over k x k pixels,
``k = ceil(long side / 2048)``, done strip by strip so the full-resolution image is never copied.
Images within the limit are not touched, so their input is bit-identical to the processor's.

No torchvision: Pillow and NumPy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from imgembed.errors import InvalidInputError
from imgembed.models.siglip_variants import ImageProcessing, Resample

MAX_INTERMEDIATE_SIDE = 2048
"""The seed worker's limit on the long side before the model's own resize."""
STRIP_PIXELS = 1 << 20
"""Source pixels per strip of the intermediate reduction (about 4 MiB in Pillow's RGB storage)."""
_PILLOW_FILTERS: dict[Resample, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
_NAFLEX_SEARCH_EPSILON = 1e-5
"""Precision of ``Siglip2ImageProcessor``'s bisection over the scale; reproduced exactly because
the grid it settles on depends on where the bisection stops."""
_NAFLEX_MAX_SCALE = 100.0


@dataclass(frozen=True)
class NaflexPatches:
    """One image as NaFlex input.

    Attributes:
        pixel_values: ``[N,P*P*3]`` float32, N = ``max_num_patches``; the first
            ``rows * columns`` rows are the image's patches in raster order, each flattened in
            (row, column, channel) order; the rest are zero padding.
        attention_mask: ``[N]`` int32, 1 for image patches, 0 for padding.
        spatial_shape: Patch grid ``(rows, columns)`` of the image.
    """

    pixel_values: torch.Tensor
    attention_mask: torch.Tensor
    spatial_shape: tuple[int, int]


def _check_pixels(pixels: np.ndarray) -> None:
    """Refuses anything but ``[H,W,3]`` uint8 with both sides at least 1."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise InvalidInputError(
            f"expected decoded RGB pixels [H,W,3] uint8, got {list(pixels.shape)} {pixels.dtype}",
            field="image",
        )
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise InvalidInputError(f"the image is empty ({pixels.shape[1]}x{pixels.shape[0]})")


def intermediate_reduction_factor(height: int, width: int, max_side: int | None) -> int:
    """The box size k of the intermediate reduction: 1 (none) when the long side fits.

    Args:
        height: Image height in pixels.
        width: Image width in pixels.
        max_side: Longest side allowed; ``None`` for no limit.
    """
    if max_side is None:
        return 1
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    return max(1, math.ceil(max(height, width) / max_side))


def reduce_long_side(
    pixels: np.ndarray, max_side: int | None = MAX_INTERMEDIATE_SIDE
) -> np.ndarray:
    """Shrinks an image whose long side exceeds ``max_side`` by a k x k box average.

    The result equals Pillow's ``Image.reduce(k)`` of the whole image (edge boxes average the
    pixels they hold), computed in strips of ``k * m`` rows so that at most one strip is copied
    into Pillow at a time.

    Args:
        pixels: ``[H,W,3]`` uint8 RGB.
        max_side: Longest side allowed; ``None`` for no limit.

    Returns:
        ``pixels`` itself when it fits, else ``[ceil(H/k),ceil(W/k),3]`` uint8 RGB with
        ``k = ceil(max(H,W) / max_side)``, long side at most ``max_side``. Pixel ``(i, j)`` of the
        result covers pixels ``[i*k, (i+1)*k) x [j*k, (j+1)*k)`` of the input.
    """
    _check_pixels(pixels)
    height, width = pixels.shape[:2]
    factor = intermediate_reduction_factor(height, width, max_side)
    if factor == 1:
        return pixels
    rows_per_strip = factor * max(1, STRIP_PIXELS // (width * factor))
    reduced = np.empty((math.ceil(height / factor), math.ceil(width / factor), 3), np.uint8)
    for top in range(0, height, rows_per_strip):
        strip = Image.fromarray(pixels[top : top + rows_per_strip])  # copies this strip only
        reduced_rows = np.asarray(strip.reduce(factor))  # [ceil(rows/k),ceil(W/k),3]
        first_row = top // factor
        reduced[first_row : first_row + reduced_rows.shape[0]] = reduced_rows
    return reduced


def normalisation_table(processing: ImageProcessing) -> np.ndarray:
    """``[3,256]`` float32: the normalised value of each 8-bit value, per channel.

    Computed with the processor's own arithmetic (``value * factor`` in float64, stored as float32,
    then ``(x - mean) / std`` in float32), so looking values up equals computing them.
    """
    rescaled = (np.arange(256, dtype=np.float64) * processing.rescale_factor).astype(np.float32)
    mean = np.asarray(processing.image_mean, dtype=np.float32)[:, None]  # [3,1]
    std = np.asarray(processing.image_std, dtype=np.float32)[:, None]  # [3,1]
    return (rescaled[None, :] - mean) / std  # [3,256]


def _resize(pixels: np.ndarray, height: int, width: int, resample: Resample) -> np.ndarray:
    """Pillow's resize of ``[H,W,3]`` uint8 to ``[height,width,3]`` uint8."""
    resized = Image.fromarray(pixels).resize((width, height), resample=_PILLOW_FILTERS[resample])
    return np.asarray(resized)


def _normalise_channels_first(resized: np.ndarray, processing: ImageProcessing) -> np.ndarray:
    """``[H,W,3]`` uint8 to ``[3,H,W]`` normalised float32."""
    table = normalisation_table(processing)
    normalised = np.empty((3, *resized.shape[:2]), dtype=np.float32)  # [3,H,W]
    for channel in range(3):
        np.take(table[channel], resized[:, :, channel], out=normalised[channel])
    return normalised


def fixres_pixel_values(
    pixels: np.ndarray,
    processing: ImageProcessing,
    *,
    max_intermediate_side: int | None = MAX_INTERMEDIATE_SIDE,
) -> torch.Tensor:
    """A decoded image as FixRes model input.

    Args:
        pixels: ``[H,W,3]`` uint8 RGB, as :class:`~imgembed.preprocess.image.DecodedImage` holds.
        processing: The model's image settings (``family`` ``fixres``).
        max_intermediate_side: Long side above which the image is first box-reduced (see
            :func:`reduce_long_side`); ``None`` to resize from full resolution, exactly as
            ``transformers``' processor.

    Returns:
        ``[3,S,S]`` float32 on the CPU, S = ``processing.image_size``; the whole image squashed
        (aspect ratio not kept), channels RGB, values ``(v/255 - mean) / std``.
    """
    if processing.family != "fixres" or processing.image_size is None:
        raise ValueError(f"fixres_pixel_values needs FixRes settings, got {processing.family}")
    source = reduce_long_side(pixels, max_intermediate_side)
    side = processing.image_size
    resized = _resize(source, side, side, processing.resample)  # [S,S,3] uint8
    return torch.from_numpy(_normalise_channels_first(resized, processing))


def naflex_grid(height: int, width: int, patch_size: int, max_num_patches: int) -> tuple[int, int]:
    """The patch grid ``(rows, columns)`` an image is resized to, as ``Siglip2ImageProcessor``.

    The largest scale (found by the processor's bisection, reproduced step for step) at which
    ``ceil(side * scale / patch) * patch``, at least one patch, gives no more than
    ``max_num_patches`` patches; the aspect ratio is kept up to rounding to whole patches.

    Args:
        height: Image height in pixels.
        width: Image width in pixels.
        patch_size: Side of a patch in pixels.
        max_num_patches: Patch budget.

    Returns:
        Patch rows and columns; the resized image is ``rows * patch_size`` pixels high.
    """

    def scaled_side(scale: float, side: int) -> int:
        return max(patch_size, math.ceil(side * scale / patch_size) * patch_size)

    low, high = _NAFLEX_SEARCH_EPSILON / 10, _NAFLEX_MAX_SCALE
    while high - low >= _NAFLEX_SEARCH_EPSILON:
        middle = (low + high) / 2
        patches = (scaled_side(middle, height) / patch_size) * (
            scaled_side(middle, width) / patch_size
        )
        if patches <= max_num_patches:
            low = middle
        else:
            high = middle
    return scaled_side(low, height) // patch_size, scaled_side(low, width) // patch_size


def naflex_budget(processing: ImageProcessing, max_num_patches: int | None) -> int:
    """The patch budget of one NaFlex input: the request's ``max_num_patches``, else the model's.

    Raises:
        InvalidInputError: The budget is not a positive number of patches.
    """
    budget = max_num_patches or processing.max_num_patches
    if budget is None or budget < 1:
        raise InvalidInputError(
            f"max_num_patches must be a positive number of patches, got {budget}",
            field="max_num_patches",
        )
    return budget


def naflex_patches(
    pixels: np.ndarray,
    processing: ImageProcessing,
    *,
    max_num_patches: int | None = None,
    max_intermediate_side: int | None = MAX_INTERMEDIATE_SIDE,
) -> NaflexPatches:
    """A decoded image as NaFlex model input.

    Args:
        pixels: ``[H,W,3]`` uint8 RGB.
        processing: The model's image settings (``family`` ``naflex``).
        max_num_patches: Patch budget instead of ``processing.max_num_patches``.
        max_intermediate_side: Long side above which the image is first box-reduced; ``None``
            for none.

    Returns:
        The padded patches, their mask and the grid, on the CPU.
    """
    if processing.family != "naflex":
        raise ValueError(f"naflex_patches needs NaFlex settings, got {processing.family}")
    budget = naflex_budget(processing, max_num_patches)
    source = reduce_long_side(pixels, max_intermediate_side)
    patch = processing.patch_size
    rows, columns = naflex_grid(source.shape[0], source.shape[1], patch, budget)
    resized = _resize(source, rows * patch, columns * patch, processing.resample)
    normalised = _normalise_channels_first(resized, processing)  # [3,rows*P,columns*P]
    grid = normalised.reshape(3, rows, patch, columns, patch)  # [3,rows,P,columns,P]
    flat = grid.transpose(1, 3, 2, 4, 0).reshape(rows * columns, patch * patch * 3)  # [n,P*P*3]
    padded = np.zeros((budget, patch * patch * 3), dtype=np.float32)  # [N,P*P*3]
    padded[: rows * columns] = flat
    mask = np.zeros(budget, dtype=np.int32)  # [N]
    mask[: rows * columns] = 1
    return NaflexPatches(
        pixel_values=torch.from_numpy(padded),
        attention_mask=torch.from_numpy(mask),
        spatial_shape=(rows, columns),
    )
