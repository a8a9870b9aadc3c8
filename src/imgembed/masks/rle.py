"""COCO run-length encoding of binary masks, as ``pycocotools`` writes and reads it.

A mask ``[H,W]`` is read in column-major (Fortran) order, top to bottom within a column, columns
left to right, and stored as alternating run lengths starting with a run of zeros (possibly of
length 0). Two spellings of the same runs:

- **uncompressed**: ``{"size": [H, W], "counts": [r0, r1, ...]}``, what Meta's
  ``sam2.utils.amg.mask_to_rle_pytorch`` returns;
- **compressed** (COCO): ``{"size": [H, W], "counts": "<ascii>"}``, byte for byte what
  ``pycocotools.mask.encode`` writes (there as ``bytes``; here as ``str`` so it goes into JSON
  unchanged; ``pycocotools.mask.decode`` accepts either).

The compressed string is LEB128-like: each run (after the third, the difference to the run two
before it) in groups of 5 bits, low group first, each group plus 48 as one character, bit 0x20
set on every group but the last, the sign in bit 0x10 of the last.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from imgembed.errors import InvalidInputError

RleDict = dict[str, Any]
"""``{"size": [H, W], "counts": list[int] | str}``."""

_GROUP_BITS = 5
_GROUP_MASK = 0x1F
_MORE_BIT = 0x20
_SIGN_BIT = 0x10
_CHAR_OFFSET = 48
_MAX_GROUPS = 13
"""Enough 5-bit groups for any signed 64-bit difference."""


def _as_bool_tensor(masks: torch.Tensor | np.ndarray) -> torch.Tensor:
    tensor = torch.as_tensor(masks)
    return tensor if tensor.dtype == torch.bool else tensor != 0


def masks_to_counts(
    masks: torch.Tensor | np.ndarray,
    *,
    crop_box: tuple[int, int, int, int] | None = None,
    image_hw: tuple[int, int] | None = None,
) -> list[list[int]]:
    """Run lengths of each mask in column-major order, starting with a (possibly empty) zero run.

    Works on any device; run starts and ends are found there and only they come to the CPU. With
    ``crop_box`` and ``image_hw`` the masks are crops and the runs are those of the whole image
    with zeros outside the crop (Meta's ``uncrop_masks`` then encoding), without building the
    image-sized masks.

    Args:
        masks: ``[N,h,w]`` bool (or 0/1) masks.
        crop_box: ``(x0, y0, x1, y1)`` where the masks sit in the image, ``x1 - x0 = w`` and
            ``y1 - y0 = h``; ``None``: the masks are the whole image.
        image_hw: ``(H, W)`` of the image; required with ``crop_box``.

    Returns:
        One list of run lengths per mask, summing to ``H*W``.
    """
    tensor = _as_bool_tensor(masks)
    if tensor.ndim != 3:
        raise ValueError(f"masks must be [N,H,W], got {list(tensor.shape)}")
    count, height, width = tensor.shape
    left, top, image_height, image_width = 0, 0, height, width
    if crop_box is not None:
        if image_hw is None:
            raise ValueError("image_hw is required with crop_box")
        left, top, right, bottom = crop_box
        image_height, image_width = image_hw
        if (right - left, bottom - top) != (width, height):
            raise ValueError(f"crop_box {list(crop_box)} does not fit masks of {height}x{width}")
    pixels = image_height * image_width
    if count == 0:
        return []
    if height * width == 0:
        return [[pixels] for _ in range(count)]
    flat = tensor.transpose(1, 2).reshape(count, width * height)  # [N,h,w] -> [N,w,h] -> [N,w*h]
    if height == image_height:
        toggles = _toggles_full_height(flat, left * image_height)
    else:
        toggles = _toggles_partial_height(flat, height, left, top, image_height)
    result = []
    for edges in toggles:
        runs = np.diff(np.concatenate(([0], edges, [pixels]))).tolist()
        if len(edges) and edges[-1] == pixels:
            runs.pop()  # a run of ones reaching the last pixel: no empty run of zeros after it
        result.append(runs)
    return result


def _toggles_full_height(flat: torch.Tensor, offset: int) -> list[np.ndarray]:
    """Image positions where each mask switches value, for crops spanning whole columns.

    Such a crop's pixels are contiguous in the image's column-major order, from ``offset`` on.

    Args:
        flat: ``[N,P]`` bool crop masks in column-major order.
        offset: Image position of the crop's first pixel.

    Returns:
        Per mask, ascending positions ``p`` where pixel ``p`` differs from pixel ``p - 1`` (the
        pixel before the image counts as 0).
    """
    count, size = flat.shape
    changes = torch.nonzero(flat[:, 1:] != flat[:, :-1]).cpu().numpy()  # [C,2]: i+1 differs from i
    first = flat[:, 0].cpu().numpy()
    last = flat[:, -1].cpu().numpy()
    per_mask = np.bincount(changes[:, 0], minlength=count)
    inner = np.split(changes[:, 1] + 1 + offset, np.cumsum(per_mask)[:-1])
    return [
        np.concatenate(
            ([offset] if first[index] else [], edges, [offset + size] if last[index] else [])
        ).astype(np.int64)
        for index, edges in enumerate(inner)
    ]


def _toggles_partial_height(
    flat: torch.Tensor, height: int, left: int, top: int, image_height: int
) -> list[np.ndarray]:
    """As :func:`_toggles_full_height` for crops shorter than the image: runs end at each column."""
    count = flat.shape[0]
    before = torch.zeros_like(flat)  # the pixel before each one in the image's column-major order
    before[:, 1:] = flat[:, :-1]
    before[:, ::height] = False
    after = torch.zeros_like(flat)
    after[:, :-1] = flat[:, 1:]
    after[:, height - 1 :: height] = False
    starts = torch.nonzero(flat & ~before).cpu().numpy()  # [S,2] (mask, crop position)
    ends = torch.nonzero(flat & ~after).cpu().numpy()  # [S,2] (mask, last position of the run)

    def image_position(crop_position: np.ndarray) -> np.ndarray:
        column, row = np.divmod(crop_position, height)
        return (column + left) * image_height + row + top

    per_mask = np.bincount(starts[:, 0], minlength=count)
    boundaries = np.stack(
        [image_position(starts[:, 1]), image_position(ends[:, 1]) + 1], axis=1
    ).reshape(-1)  # [2S]: start, end (exclusive), start, end, ... in mask order
    return np.split(boundaries, 2 * np.cumsum(per_mask)[:-1])


def masks_to_uncompressed_rle(
    masks: torch.Tensor | np.ndarray,
    *,
    crop_box: tuple[int, int, int, int] | None = None,
    image_hw: tuple[int, int] | None = None,
) -> list[RleDict]:
    """Uncompressed COCO RLEs of ``[N,H,W]`` masks, as Meta's ``mask_to_rle_pytorch`` returns.

    With ``crop_box`` and ``image_hw``, RLEs of crops placed in the whole image (see
    :func:`masks_to_counts`).
    """
    tensor = _as_bool_tensor(masks)
    size = list(image_hw) if image_hw is not None else [tensor.shape[-2], tensor.shape[-1]]
    counts = masks_to_counts(tensor, crop_box=crop_box, image_hw=image_hw)
    return [{"size": [int(side) for side in size], "counts": runs} for runs in counts]


def encode_counts(counts: list[int] | np.ndarray) -> str:
    """The compressed ``counts`` string of run lengths, exactly as ``pycocotools`` writes it."""
    runs = np.asarray(counts, dtype=np.int64)
    values = runs.copy()
    values[3:] -= runs[1:-2]  # run i > 2 is stored as its difference to run i - 2
    chars = np.zeros((len(values), _MAX_GROUPS), dtype=np.uint8)
    active = np.ones(len(values), dtype=bool)
    for group in range(_MAX_GROUPS):
        if not active.any():
            break
        low = (values & _GROUP_MASK).astype(np.uint8)
        values >>= _GROUP_BITS  # arithmetic shift: negative values stay negative
        more = np.where(low & _SIGN_BIT, values != -1, values != 0) & active
        chars[:, group] = np.where(active, (low | (more * _MORE_BIT)) + _CHAR_OFFSET, 0)
        active = more
    return chars[chars != 0].tobytes().decode("ascii")  # row-major: each run's groups in order


def decode_counts(encoded: str | bytes) -> list[int]:
    """Run lengths from a compressed ``counts`` string (the inverse of :func:`encode_counts`).

    Raises:
        InvalidInputError: The string has characters outside ``'0'..'o'`` or ends mid-number.
    """
    data = encoded.encode("ascii") if isinstance(encoded, str) else bytes(encoded)
    codes = np.frombuffer(data, dtype=np.uint8).astype(np.int64) - _CHAR_OFFSET
    if codes.size and (codes.min() < 0 or codes.max() > 0x3F):
        raise InvalidInputError(
            "RLE counts string has characters outside '0'..'o'; expected the compressed COCO "
            "string pycocotools writes",
            field="counts",
        )
    if codes.size and codes[-1] & _MORE_BIT:
        raise InvalidInputError(
            "RLE counts string ends in the middle of a number; it is truncated",
            field="counts",
        )
    if codes.size == 0:
        return []
    ends = np.flatnonzero((codes & _MORE_BIT) == 0)  # last group of each number
    starts = np.concatenate(([0], ends[:-1] + 1))
    group_index = np.arange(codes.size) - np.repeat(starts, ends - starts + 1)
    contributions = (codes & _GROUP_MASK) << (_GROUP_BITS * group_index)
    values = np.add.reduceat(contributions, starts)
    negative = (codes[ends] & _SIGN_BIT) != 0
    groups = ends - starts + 1
    values = np.where(negative, values - (np.int64(1) << (_GROUP_BITS * groups)), values)
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])  # runs 1, 3, 5, ... add up their differences
    runs[2::2] = np.cumsum(values[2::2])  # runs 2, 4, 6, ...; run 0 stands alone
    return runs.tolist()


def _checked_size(rle: RleDict) -> tuple[int, int]:
    try:
        height, width = (int(value) for value in rle["size"])
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidInputError(
            'an RLE must be {"size": [H, W], "counts": ...}', field="size"
        ) from error
    return height, width


def uncompressed_to_coco_rle(rle: RleDict) -> RleDict:
    """``{"size", "counts": [runs]}`` -> ``{"size", "counts": "<string>"}``."""
    return {"size": list(_checked_size(rle)), "counts": encode_counts(rle["counts"])}


def coco_rle_to_uncompressed(rle: RleDict) -> RleDict:
    """``{"size", "counts": "<string>"}`` -> ``{"size", "counts": [runs]}`` (lists pass through)."""
    counts = rle.get("counts")
    runs = list(counts) if isinstance(counts, list) else decode_counts(counts)
    return {"size": list(_checked_size(rle)), "counts": runs}


def encode_coco_rle(mask: np.ndarray | torch.Tensor) -> RleDict:
    """The compressed COCO RLE of one ``[H,W]`` mask: ``{"size": [H, W], "counts": "<string>"}``."""
    tensor = _as_bool_tensor(mask)
    if tensor.ndim != 2:
        raise ValueError(f"mask must be [H,W], got {list(tensor.shape)}")
    (runs,) = masks_to_counts(tensor[None])  # [H,W] -> [1,H,W]
    return {"size": [int(tensor.shape[0]), int(tensor.shape[1])], "counts": encode_counts(runs)}


def encode_coco_rles(masks: torch.Tensor | np.ndarray) -> list[RleDict]:
    """Compressed COCO RLEs of ``[N,H,W]`` masks."""
    return [uncompressed_to_coco_rle(rle) for rle in masks_to_uncompressed_rle(masks)]


def rle_to_mask(rle: RleDict) -> np.ndarray:
    """``[H,W]`` bool mask of a compressed or uncompressed COCO RLE.

    Raises:
        InvalidInputError: The runs do not add up to ``H*W`` or one is negative.
    """
    plain = coco_rle_to_uncompressed(rle)
    height, width = plain["size"]
    runs = np.asarray(plain["counts"], dtype=np.int64)
    if (runs.size and runs.min() < 0) or runs.sum() != height * width:
        raise InvalidInputError(
            f"RLE runs add up to {int(runs.sum())} pixels with the smallest run "
            f"{int(runs.min()) if runs.size else 0}; a {height}x{width} mask needs non-negative "
            f"runs adding up to {height * width}",
            field="counts",
        )
    values = np.arange(runs.size) % 2 == 1  # runs alternate zeros, ones, zeros, ...
    flat = np.repeat(values, runs)  # column-major pixels
    return flat.reshape(width, height).T  # [W,H] -> [H,W]


def rle_area(rle: RleDict) -> int:
    """Pixels inside the mask: the sum of the odd runs."""
    return int(sum(coco_rle_to_uncompressed(rle)["counts"][1::2]))
