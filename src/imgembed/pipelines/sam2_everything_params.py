"""Parameters of SAM 2 "segment everything", with the reference generator's names and defaults.

The names, defaults and meanings are those of Meta's ``SAM2AutomaticMaskGenerator`` (sam2 1.1.0),
so settings tuned for the reference carry over unchanged. One difference: ``points_per_batch``
defaults to ``None``, "sized to the device" (see :func:`auto_points_per_batch`); the reference's
64 is what a CPU gets. Explicit point grids (the reference's ``point_grids``) are not offered.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from imgembed.errors import InvalidInputError

OutputMode = Literal["binary_mask", "uncompressed_rle", "coco_rle"]
"""How each record's ``segmentation`` comes: ``[H,W]`` bool array, RLE lists or COCO RLE string."""
OUTPUT_MODES: tuple[OutputMode, ...] = ("binary_mask", "uncompressed_rle", "coco_rle")

DECODER_BYTES_PER_PROMPT = 48 << 20
"""Peak memory of one prompt in the mask decoder, float32 (measured: about 41 to 45 MiB on CPU
with sam2.1-hiera-tiny; the decoder is the same for every SAM 2 size)."""
CPU_MAX_POINTS_PER_BATCH = 64
"""A CPU gains little from larger batches; 64 is the reference's default."""
CUDA_MIN_POINTS_PER_BATCH = 64
CUDA_MAX_POINTS_PER_BATCH = 1024
"""One forward pass for a whole 32x32 grid on a large GPU."""
MEMORY_SHARE = 0.5
"""Share of a CUDA device's usable memory that the segment-everything jobs running there hold
together (see :mod:`~imgembed.pipelines.sam2_everything_memory`); a quarter of available RAM on
CPU."""


@dataclass(frozen=True)
class Sam2EverythingParams:
    """Settings of the automatic mask generator (Meta's names, defaults and meanings).

    Attributes:
        points_per_side: Grid points along each side of the image (``points_per_side**2`` prompts
            for the whole image).
        points_per_batch: Prompts per decoder forward pass; ``None`` sizes it to the device
            (:func:`auto_points_per_batch`). Results do not depend on it.
        pred_iou_thresh: Keep masks whose predicted IoU is above this (0 keeps all).
        stability_score_thresh: Keep masks whose stability score is at least this (0 keeps all).
        stability_score_offset: How far the logit cut-off moves for the stability score.
        mask_threshold: Logit cut-off of a mask.
        box_nms_thresh: Box IoU above which a lower-scoring mask of the same crop is dropped.
        crop_n_layers: Also run on crops: layer ``i`` has ``(2**i)**2`` crops (0: whole image
            only).
        crop_nms_thresh: Box IoU above which masks from different crops are duplicates (masks
            from smaller crops win).
        crop_overlap_ratio: Overlap of neighbouring crops, as a share of the image's short side in
            the first crop layer.
        crop_n_points_downscale_factor: Layer ``i`` uses ``points_per_side / factor**i`` points
            per side.
        min_mask_region_area: SAM 2's clean-up: on each mask's 256x256 logits, background
            components of at most this many cells are filled and foreground ones of at most this
            many removed (the reference's predictor ``max_hole_area`` / ``max_sprinkle_area``;
            the reference skips it without its CUDA extension, this runs everywhere).
        output_mode: How each record's ``segmentation`` is given.
        use_m2m: Refine each mask once, feeding it back as the mask prompt with its point.
        multimask_output: Three masks per point (``False``: one, with the stability fallback).
    """

    points_per_side: int = 32
    points_per_batch: int | None = None
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    output_mode: OutputMode = "binary_mask"
    use_m2m: bool = False
    multimask_output: bool = True

    def __post_init__(self) -> None:
        _check_types(self)
        _at_least("points_per_side", self.points_per_side, 1)
        if self.points_per_batch is not None:
            _at_least("points_per_batch", self.points_per_batch, 1)
        for name in ("box_nms_thresh", "crop_nms_thresh"):
            _within(name, getattr(self, name), 0.0, 1.0)
        _within("crop_overlap_ratio", self.crop_overlap_ratio, 0.0, 1.0, high_open=True)
        _at_least("stability_score_offset", self.stability_score_offset, 0.0)
        _at_least("crop_n_layers", self.crop_n_layers, 0)
        _at_least("crop_n_points_downscale_factor", self.crop_n_points_downscale_factor, 1)
        _at_least("min_mask_region_area", self.min_mask_region_area, 0)
        if self.output_mode not in OUTPUT_MODES:
            raise InvalidInputError(
                f"output_mode is {self.output_mode!r}; expected one of {', '.join(OUTPUT_MODES)}",
                field="output_mode",
            )
        last_layer = self.crop_n_points_downscale_factor**self.crop_n_layers
        if self.points_per_side // last_layer < 1:
            raise InvalidInputError(
                f"crop_n_layers is {self.crop_n_layers}, but that layer would get no points: "
                f"points_per_side {self.points_per_side} / crop_n_points_downscale_factor "
                f"{self.crop_n_points_downscale_factor}**{self.crop_n_layers} is below 1; use "
                "fewer crop layers, a smaller factor or more points per side",
                field="crop_n_layers",
            )


_BOOL_FIELDS = ("use_m2m", "multimask_output")
_INT_FIELDS = (
    "points_per_side",
    "points_per_batch",
    "crop_n_layers",
    "crop_n_points_downscale_factor",
    "min_mask_region_area",
)


def _check_types(params: Sam2EverythingParams) -> None:
    for spec in fields(params):
        value = getattr(params, spec.name)
        if spec.name == "output_mode" or value is None:
            continue
        if spec.name in _BOOL_FIELDS:
            valid, expected = isinstance(value, bool), "true or false"
        elif spec.name in _INT_FIELDS:
            valid, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
        else:
            valid = isinstance(value, int | float) and not isinstance(value, bool)
            valid, expected = valid and math.isfinite(value), "a finite number"
        if not valid:
            raise InvalidInputError(
                f"{spec.name} is {value!r}; expected {expected}", field=spec.name
            )


def _at_least(name: str, value: float, low: float) -> None:
    if value < low:
        raise InvalidInputError(f"{name} is {value}; it must be at least {low}", field=name)


def _within(name: str, value: float, low: float, high: float, *, high_open: bool = False) -> None:
    if not (low <= value < high if high_open else low <= value <= high):
        bracket = ")" if high_open else "]"
        raise InvalidInputError(
            f"{name} is {value}; it must be in [{low}, {high}{bracket}", field=name
        )


def point_grid(points_per_side: int) -> np.ndarray:
    """``[n*n,2]`` float64 XY points on a regular grid in ``[0,1]^2``, cell centres, row by row."""
    offset = 1 / (2 * points_per_side)
    along = np.linspace(offset, 1 - offset, points_per_side)
    xs = np.tile(along[None, :], (points_per_side, 1))  # [n,n]
    ys = np.tile(along[:, None], (1, points_per_side))  # [n,n]
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)  # [n,n,2] -> [n*n,2]


def layer_point_grids(params: Sam2EverythingParams) -> list[np.ndarray]:
    """One normalised grid per crop layer (layer ``i``: ``points_per_side / factor**i`` per side)."""
    factor = params.crop_n_points_downscale_factor
    return [
        point_grid(int(params.points_per_side / factor**layer))
        for layer in range(params.crop_n_layers + 1)
    ]


def crop_boxes(
    image_hw: tuple[int, int], n_layers: int, overlap_ratio: float
) -> list[tuple[tuple[int, int, int, int], int]]:
    """Crops as the reference makes them: the whole image, then ``(2**i)**2`` per layer ``i``.

    Returns:
        ``((x0, y0, x1, y1), layer)`` for each crop, XYXY in image pixels (exclusive ends).
    """
    height, width = image_hw
    crops = [((0, 0, width, height), 0)]
    short_side = min(height, width)
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_width = math.ceil((overlap * (per_side - 1) + width) / per_side)
        crop_height = math.ceil((overlap * (per_side - 1) + height) / per_side)
        lefts = [int((crop_width - overlap) * index) for index in range(per_side)]
        tops = [int((crop_height - overlap) * index) for index in range(per_side)]
        for left in lefts:  # column by column, as the reference's product(x0s, y0s)
            for top in tops:
                box = (left, top, min(left + crop_width, width), min(top + crop_height, height))
                crops.append((box, layer))
    return crops


def auto_points_per_batch(device: torch.device) -> int:
    """Prompts per decoder pass for a device when the caller gives none.

    - CUDA: as many as fit in :data:`MEMORY_SHARE` of the free device memory at
      :data:`DECODER_BYTES_PER_PROMPT` each, between 64 and 1024: hundreds of prompts per pass.
    - CPU (and other devices): as many as fit in a quarter of the available RAM, at most 64 (a
      CPU gains little from larger batches), at least 1.

    Post-processing at image size runs in its own chunks (:func:`postprocess_chunk`), so it does
    not count here. This is one job's view of the device alone: the generator sizes its passes
    from the budget its device's jobs share
    (:func:`~imgembed.pipelines.sam2_everything_memory.batch_plan`).
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        fitting = int(free * MEMORY_SHARE) // DECODER_BYTES_PER_PROMPT
        return max(CUDA_MIN_POINTS_PER_BATCH, min(CUDA_MAX_POINTS_PER_BATCH, fitting))
    fitting = _available_ram() // 4 // DECODER_BYTES_PER_PROMPT
    return max(1, min(CPU_MAX_POINTS_PER_BATCH, fitting))


def postprocess_chunk(device: torch.device, image_hw: tuple[int, int]) -> int:
    """Masks upscaled to image size at once: about 16 bytes per pixel each (float32 logits, the
    comparisons), within a quarter of the free CUDA memory or min(1 GiB, a quarter of RAM).

    One job's view of the device alone, as :func:`auto_points_per_batch`."""
    if device.type == "cuda":
        budget = torch.cuda.mem_get_info(device)[0] // 4
    else:
        budget = min(1 << 30, _available_ram() // 4)
    return max(1, budget // (16 * max(1, image_hw[0] * image_hw[1])))


def _available_ram() -> int:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes; free pages where there is none."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 4 << 30  # a platform with neither: assume 4 GiB
