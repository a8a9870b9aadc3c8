"""SigLIP 2 image preprocessing on the pixels' device: what :mod:`imgembed.preprocess.siglip_pixels`
does with Pillow and NumPy on the CPU, in torch, for uint8 pixels already uploaded to a GPU.

Same steps, same values: the intermediate box reduction (Pillow's ``reduce``, reproduced exactly),
the model's resize (Pillow's fixed-point resampling, :mod:`imgembed.preprocess.pillow_resample`:
equal to Pillow when one axis changes, within one 8-bit level when both do), then the processor's
normalisation by table lookup (``value * (1/255)`` in float64 stored as float32, then
``(x - mean) / std`` in float32), so an 8-bit value that matches gives a bit-identical input.
NaFlex patches are cut and padded as :func:`~imgembed.preprocess.siglip_pixels.naflex_patches`
cuts them.

Only the filters in :data:`~imgembed.preprocess.pillow_resample.DEVICE_FILTERS` (bilinear, what the
released SigLIP 2 checkpoints use) are done here; :func:`supported` says whether a model's settings
are, and the pipeline keeps the CPU path for the others.
"""

from __future__ import annotations

import functools

import torch

from imgembed.errors import InvalidInputError
from imgembed.models.siglip_variants import ImageProcessing
from imgembed.preprocess import pillow_resample
from imgembed.preprocess.siglip_pixels import (
    MAX_INTERMEDIATE_SIDE,
    NaflexPatches,
    intermediate_reduction_factor,
    naflex_budget,
    naflex_grid,
    normalisation_table,
)


def supported(processing: ImageProcessing) -> bool:
    """Whether these image settings can be prepared on the device (their resize filter can)."""
    return processing.resample in pillow_resample.DEVICE_FILTERS


def _check_pixels(pixels: torch.Tensor) -> None:
    """Refuses anything but ``[H,W,3]`` uint8 with both sides at least 1."""
    if pixels.dtype != torch.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise InvalidInputError(
            f"expected decoded RGB pixels [H,W,3] uint8, got {list(pixels.shape)} "
            f"{pixels.dtype}; pass the pixels decode_image returns",
            field="image",
        )
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise InvalidInputError(
            f"expected an image at least 1x1 pixels, got {pixels.shape[1]}x{pixels.shape[0]}; "
            "send an image with pixels in it",
            field="image",
        )


def reduce_long_side(
    pixels: torch.Tensor, max_side: int | None = MAX_INTERMEDIATE_SIDE
) -> torch.Tensor:
    """:func:`~imgembed.preprocess.siglip_pixels.reduce_long_side` on the pixels' device.

    Args:
        pixels: ``[H,W,3]`` uint8 RGB on any device.
        max_side: Longest side allowed; ``None`` for no limit.

    Returns:
        ``pixels`` itself when it fits, else ``[ceil(H/k),ceil(W/k),3]`` uint8 on the same device,
        ``k = ceil(max(H,W) / max_side)``, equal to Pillow's ``reduce(k)``.
    """
    _check_pixels(pixels)
    factor = intermediate_reduction_factor(int(pixels.shape[0]), int(pixels.shape[1]), max_side)
    return pillow_resample.reduce(pixels, factor)


@functools.lru_cache(maxsize=32)
def _device_normalisation_table(processing: ImageProcessing, device: torch.device) -> torch.Tensor:
    """``[3,256]`` float32 :func:`normalisation_table` on ``device``, uploaded once per
    settings and device, complete before it is handed out (see
    :func:`~imgembed.preprocess.pillow_resample.device_coefficients`). Read-only."""
    table = torch.from_numpy(normalisation_table(processing)).to(device)
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    return table


def _normalise_channels_first(resized: torch.Tensor, processing: ImageProcessing) -> torch.Tensor:
    """``[H,W,3]`` uint8 to ``[3,H,W]`` normalised float32 on the same device, by table lookup."""
    table = _device_normalisation_table(processing, resized.device)  # [3,256]
    pillow_resample.claim(table)
    indices = resized.permute(2, 0, 1).reshape(3, -1).to(torch.int64)  # [H,W,3] -> [3,H*W]
    values = torch.gather(table, 1, indices)  # [3,H*W]
    return values.view(3, resized.shape[0], resized.shape[1])  # [3,H,W]


def _check_filter(processing: ImageProcessing) -> None:
    if not supported(processing):
        raise ValueError(
            f"the {processing.resample!r} resize is prepared on the CPU, not on the device; "
            f"device preprocessing supports {sorted(pillow_resample.DEVICE_FILTERS)}"
        )


def fixres_pixel_values(
    pixels: torch.Tensor,
    processing: ImageProcessing,
    *,
    max_intermediate_side: int | None = MAX_INTERMEDIATE_SIDE,
) -> torch.Tensor:
    """A decoded image as FixRes model input, computed on the pixels' device.

    Args:
        pixels: ``[H,W,3]`` uint8 RGB on any device.
        processing: The model's image settings (``family`` ``fixres``, a filter in
            :data:`~imgembed.preprocess.pillow_resample.DEVICE_FILTERS`).
        max_intermediate_side: Long side above which the image is first box-reduced; ``None``
            for none.

    Returns:
        ``[3,S,S]`` float32 on ``pixels``' device, S = ``processing.image_size``, channels RGB,
        values ``(v/255 - mean) / std``: what
        :func:`~imgembed.preprocess.siglip_pixels.fixres_pixel_values` returns on the CPU.
    """
    if processing.family != "fixres" or processing.image_size is None:
        raise ValueError(f"fixres_pixel_values needs FixRes settings, got {processing.family}")
    _check_filter(processing)
    source = reduce_long_side(pixels, max_intermediate_side)
    side = processing.image_size
    resized = pillow_resample.resize(source, side, side, processing.resample)  # [S,S,3] uint8
    return _normalise_channels_first(resized, processing)


def naflex_patches(
    pixels: torch.Tensor,
    processing: ImageProcessing,
    *,
    max_num_patches: int | None = None,
    max_intermediate_side: int | None = MAX_INTERMEDIATE_SIDE,
) -> NaflexPatches:
    """A decoded image as NaFlex model input, computed on the pixels' device.

    Args:
        pixels: ``[H,W,3]`` uint8 RGB on any device.
        processing: The model's image settings (``family`` ``naflex``).
        max_num_patches: Patch budget instead of ``processing.max_num_patches``.
        max_intermediate_side: Long side above which the image is first box-reduced; ``None``
            for none.

    Returns:
        ``[N,P*P*3]`` float32 patches and ``[N]`` int32 mask on ``pixels``' device, and the grid;
        laid out as :func:`~imgembed.preprocess.siglip_pixels.naflex_patches` lays them out.
    """
    if processing.family != "naflex":
        raise ValueError(f"naflex_patches needs NaFlex settings, got {processing.family}")
    _check_filter(processing)
    budget = naflex_budget(processing, max_num_patches)
    source = reduce_long_side(pixels, max_intermediate_side)
    patch = processing.patch_size
    rows, columns = naflex_grid(int(source.shape[0]), int(source.shape[1]), patch, budget)
    resized = pillow_resample.resize(source, rows * patch, columns * patch, processing.resample)
    normalised = _normalise_channels_first(resized, processing)  # [3,rows*P,columns*P]
    grid = normalised.reshape(3, rows, patch, columns, patch)  # [3,rows,P,columns,P]
    flat = grid.permute(1, 3, 2, 4, 0).reshape(rows * columns, patch * patch * 3)  # [n,P*P*3]
    device = pixels.device
    padded = torch.zeros((budget, patch * patch * 3), dtype=torch.float32, device=device)
    padded[: rows * columns] = flat
    mask = torch.zeros(budget, dtype=torch.int32, device=device)  # [N]
    mask[: rows * columns] = 1
    return NaflexPatches(pixel_values=padded, attention_mask=mask, spatial_shape=(rows, columns))
