"""Pillow's 8-bit ``Image.reduce`` and ``Image.resize`` in torch integer arithmetic, on any device.

The SigLIP 2 processor resizes with Pillow on the CPU. To move that work next to the model (a GPU)
while keeping the processor's input values, this module reproduces Pillow's integer arithmetic
(``libImaging/Reduce.c`` and ``libImaging/Resample.c``):

- ``reduce(k)``: the sum of each k x k box (boxes at the right and bottom edges hold fewer pixels),
  plus half the box's pixel count, times ``floor(2**24 / count)``, shifted right by 24 bits. Equal
  to Pillow's result.
- ``resize``: two separable passes, each rounded to 8 bits. Each output pixel's weights are
  Pillow's filter, normalised to sum 1 in float64, then scaled by ``2**22`` and rounded away from
  zero to integers; a pass accumulates ``2**21 + sum(pixel * weight)`` in 32-bit integers and keeps
  ``clamp(acc >> 22, 0, 255)``. An axis whose size does not change is not resampled. When only one
  axis changes the result equals Pillow's. When both change, this module runs the horizontal pass
  first, as ``Resample.c`` reads; recent Pillow releases (13.0 measured) run the vertical pass
  first for some sizes, and there the two differ by the rounding of the intermediate image: for
  the bilinear filter at most one 8-bit level, at a small fraction of pixels (tests/preprocess/
  test_pillow_resample.py); filters with negative lobes (bicubic, lanczos) can differ by more,
  which is why the device path uses this module for bilinear only (:data:`DEVICE_FILTERS`).

The weights are computed on the CPU with NumPy (a few kilobytes per axis); the pixel arithmetic
runs on the pixels' device in integers, so a GPU computes exactly what the CPU computes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from imgembed.models.siglip_variants import Resample

PRECISION_BITS = 32 - 8 - 2
"""Fixed-point precision of Pillow's 8-bit resampling weights."""
GATHER_BYTES = 64 * 1024 * 1024
"""Most bytes of gathered taps one resampling step holds at once (the taps are gathered in chunks
of output columns' taps below this)."""


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _box(x: np.ndarray) -> np.ndarray:
    return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)


def _sinc_scalar(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x  # the C library's sin, as Pillow's C code calls it


def _hamming_scalar(x: float) -> float:
    x = abs(x)
    if x == 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    x = x * math.pi
    return math.sin(x) / x * (0.54 + 0.46 * math.cos(x))


def _lanczos_scalar(x: float) -> float:
    if -3.0 <= x < 3.0:
        return _sinc_scalar(x) * _sinc_scalar(x / 3)
    return 0.0


_hamming = np.vectorize(_hamming_scalar, otypes=[np.float64])
_lanczos = np.vectorize(_lanczos_scalar, otypes=[np.float64])


FILTERS: dict[Resample, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "bilinear": (_bilinear, 1.0),
    "bicubic": (_bicubic, 2.0),
    "box": (_box, 0.5),
    "hamming": (_hamming, 1.0),
    "lanczos": (_lanczos, 3.0),
}
"""Pillow's filters (``Resample.c``) and their support, by the names the model settings use."""
DEVICE_FILTERS: frozenset[Resample] = frozenset({"bilinear"})
"""Filters the device path resamples with this module: within one 8-bit level of Pillow whatever
order Pillow runs its passes in (the released SigLIP 2 checkpoints use bilinear)."""


def coefficients(in_size: int, out_size: int, resample: Resample) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's fixed-point weights for resampling one axis (``precompute_coeffs``).

    Args:
        in_size: Source length in pixels.
        out_size: Destination length in pixels.
        resample: The filter.

    Returns:
        ``[out_size]`` int64 first source pixel of each output pixel, and ``[out_size,K]`` int32
        weights in units of ``2**-22`` (zero past each output pixel's last tap), K the filter's
        tap count at this scale.
    """
    if resample not in FILTERS:
        raise ValueError(
            f"Pillow's {resample!r} resize is not reproduced; expected one of {sorted(FILTERS)}"
        )
    kernel, filter_support = FILTERS[resample]
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = filter_support * filter_scale
    taps = math.ceil(support) * 2 + 1
    centres = (np.arange(out_size, dtype=np.float64) + 0.5) * scale  # [out]
    first = np.maximum((centres - support + 0.5).astype(np.int64), 0)  # [out]
    stop = np.minimum((centres + support + 0.5).astype(np.int64), in_size)  # [out]
    count = stop - first  # [out]
    offsets = np.arange(taps, dtype=np.int64)  # [K]
    reciprocal = 1.0 / filter_scale  # Pillow multiplies by the reciprocal, and so must we
    weights = kernel(
        (first[:, None] + offsets[None, :] - centres[:, None] + 0.5) * reciprocal
    )  # [out,K]
    weights = np.where(offsets[None, :] < count[:, None], weights, 0.0)
    totals = np.cumsum(weights, axis=1)[:, -1:]  # [out,1], summed in order as Pillow does
    weights = np.divide(weights, totals, out=weights.copy(), where=totals != 0.0)
    scaled = weights * (1 << PRECISION_BITS)
    fixed = np.where(scaled < 0, -0.5 + scaled, 0.5 + scaled).astype(np.int32)  # C's (int) cast
    return first, fixed


@functools.lru_cache(maxsize=256)
def device_coefficients(
    in_size: int, out_size: int, resample: Resample, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`coefficients` as gather indices and weights on ``device``, made once per sizes,
    filter and device (photos come in a few sizes; uploading the tables per image would cost a
    synchronous host-to-device copy each). Read-only: never write into them. Shared by every
    worker thread's stream: on CUDA the upload is complete before they are handed out, and each
    user marks them with :func:`claim` so that an evicted table's memory outlives its readers.

    Returns:
        ``[out_size,K]`` int64 source index of each tap (clamped to the last pixel) and
        ``[out_size,K]`` int32 weights, both on ``device``.
    """
    first, weights = coefficients(in_size, out_size, resample)
    taps = weights.shape[1]
    index = np.minimum(first[:, None] + np.arange(taps)[None, :], in_size - 1)  # [out,K]
    tables = torch.from_numpy(index).to(device), torch.from_numpy(weights).to(device)
    if device.type == "cuda":
        # A copy from pageable memory may still be in flight when .to() returns; other threads'
        # streams do not wait for this one, so it completes before anyone reads the tables.
        torch.cuda.current_stream(device).synchronize()
    return tables


def claim(*tensors: torch.Tensor) -> None:
    """Marks shared device tables as read by the current stream (``record_stream``): freeing
    them (an LRU eviction) then waits for this stream's queued work. A no-op off CUDA."""
    for tensor in tensors:
        if tensor.device.type == "cuda":
            tensor.record_stream(torch.cuda.current_stream(tensor.device))


def _resample_axis(
    image: torch.Tensor, axis: int, out_size: int, resample: Resample
) -> torch.Tensor:
    """One Pillow pass along ``axis`` of a ``[3,H,W]`` int32 image; int32 values 0..255 out."""
    device = image.device
    index_t, weights_t = device_coefficients(image.shape[axis], out_size, resample, device)
    claim(index_t, weights_t)
    taps = weights_t.shape[1]
    other = image.shape[3 - axis]  # the length of the axis not resampled (axis is 1 or 2)
    columns_per_chunk = max(1, GATHER_BYTES // (3 * other * taps * 4))
    shape = [3, other, other]
    shape[axis] = out_size
    result = torch.empty(shape, dtype=torch.int32, device=device)
    for start in range(0, out_size, columns_per_chunk):
        stop = min(out_size, start + columns_per_chunk)
        chunk = index_t[start:stop]  # [n,K]
        gathered = image.index_select(axis, chunk.reshape(-1))  # [3,n*K,W] or [3,H,n*K]
        if axis == 1:
            gathered = gathered.view(3, stop - start, taps, other)  # [3,n,K,W]
            weighted = gathered * weights_t[start:stop].view(1, -1, taps, 1)  # [n,K] -> [1,n,K,1]
            acc = weighted.sum(dim=2, dtype=torch.int32)  # [3,n,W]
            result[:, start:stop] = acc
        else:
            gathered = gathered.view(3, other, stop - start, taps)  # [3,H,n,K]
            weighted = gathered * weights_t[start:stop].view(1, 1, -1, taps)  # [n,K] -> [1,1,n,K]
            acc = weighted.sum(dim=3, dtype=torch.int32)  # [3,H,n]
            result[:, :, start:stop] = acc
    result += 1 << (PRECISION_BITS - 1)
    return torch.div(result, 1 << PRECISION_BITS, rounding_mode="floor").clamp_(0, 255)


def resize(pixels: torch.Tensor, height: int, width: int, resample: Resample) -> torch.Tensor:
    """``Image.fromarray(pixels).resize((width, height), resample)`` on the pixels' device.

    Args:
        pixels: ``[H,W,3]`` uint8 RGB on any device.
        height: Output height in pixels.
        width: Output width in pixels.
        resample: Pillow's filter (the ones :func:`~imgembed.preprocess.siglip_tensor.supported`
            sends to the device).

    Returns:
        ``[height,width,3]`` uint8 RGB on the same device: Pillow's result exactly when only one
        axis changes, within one 8-bit level when both do (see the module docstring).
    """
    source_h, source_w = int(pixels.shape[0]), int(pixels.shape[1])
    if (source_h, source_w) == (height, width):
        return pixels.clone()
    image = pixels.permute(2, 0, 1).to(torch.int32)  # [H,W,3] -> [3,H,W]
    if width != source_w:
        image = _resample_axis(image, 2, width, resample)  # [3,H,width]
    if height != source_h:
        image = _resample_axis(image, 1, height, resample)  # [3,height,width]
    return image.to(torch.uint8).permute(1, 2, 0).contiguous()  # [3,h,w] -> [h,w,3]


def reduce(pixels: torch.Tensor, factor: int) -> torch.Tensor:
    """``Image.fromarray(pixels).reduce(factor)`` on the pixels' device.

    Args:
        pixels: ``[H,W,3]`` uint8 RGB on any device.
        factor: Box side k; 1 returns ``pixels`` unchanged.

    Returns:
        ``[ceil(H/k),ceil(W/k),3]`` uint8; pixel ``(i, j)`` is Pillow's rounded mean of input pixels
        ``[i*k, (i+1)*k) x [j*k, (j+1)*k)`` (fewer at the right and bottom edges).
    """
    if factor == 1:
        return pixels
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    # Box sums are whole numbers, exact in float32 below 2**24 (boxes up to 256 x 256, which
    # InputLimits' default allows) and in float64 beyond, whatever order the device adds them in.
    dtype = torch.float32 if factor * factor * 255 < 1 << 24 else torch.float64
    image = pixels.permute(2, 0, 1).unsqueeze(0).to(dtype)  # [H,W,3] -> [1,3,H,W]
    sums = F.avg_pool2d(image, factor, stride=factor, ceil_mode=True, divisor_override=1)
    ones = torch.ones((1, 1, height, width), dtype=dtype, device=pixels.device)
    counts = F.avg_pool2d(ones, factor, stride=factor, ceil_mode=True, divisor_override=1)
    sums_i = sums.to(torch.int64)  # [1,3,h,w]
    counts_i = counts.to(torch.int64)  # [1,1,h,w]
    multiplier = torch.div(1 << 24, counts_i, rounding_mode="floor")
    means = ((sums_i + torch.div(counts_i, 2, rounding_mode="floor")) * multiplier) >> 24
    return means[0].to(torch.uint8).permute(1, 2, 0).contiguous()  # [3,h,w] -> [h,w,3]
