"""SAM 2 "segment everything": Meta's automatic mask generator, step for step, on any device.

The same work as ``SAM2AutomaticMaskGenerator.generate`` (sam2 1.1.0), so that on the same weights
the same masks come out:

1. Crops (:func:`~imgembed.pipelines.sam2_everything_params.crop_boxes`): the whole image, plus
   ``(2**i)**2`` overlapping crops for each crop layer ``i``. Each crop is encoded once.
2. Prompts: a regular grid of single foreground points per crop (``points_per_side**2``, fewer
   in deeper layers), mapped into the 1024 frame as the reference does (``x / w * 1024``), decoded
   ``points_per_batch`` at a time (three masks per point, or one).
3. Per batch: optionally each mask fed back once as the mask prompt with its point
   (``use_m2m``); masks with predicted IoU not above ``pred_iou_thresh`` dropped; SAM 2's hole
   filling and sprinkle removal on the 256x256 logits when ``min_mask_region_area`` is set; the
   logits upscaled straight to the crop size (bilinear, ``align_corners=False``); masks with a
   stability score (IoU of the masks cut at ``threshold +- offset``) below
   ``stability_score_thresh`` dropped; masks whose box touches a crop edge that is not an image
   edge (within 20 pixels) dropped; the rest run-length encoded in the whole image's frame.
4. Box NMS within each crop (scores: predicted IoU), then across crops (masks from smaller crops
   win), without torchvision.

The records are the reference's: ``segmentation`` (``[H,W]`` bool, uncompressed RLE or COCO RLE),
``area``, ``bbox`` (XYWH; right and bottom on the last pixel, as the reference), ``predicted_iou``,
``point_coords`` (``[[x, y]]`` in image pixels), ``stability_score``, ``crop_box`` (XYWH).

Models are not loaded here and nothing touches HTTP: the caller brings two callables, ``encode``
(an RGB crop to features, stretched to 1024x1024 as SAM 2 was trained) and ``decode`` (prompts to
low-resolution mask logits, :func:`imgembed.models.sam2_decoder.decode_masks` semantics). For
results identical to the reference, ``decode`` should return the decoder's logits unclamped: the
reference upscales unclamped logits (it clamps only what it feeds back for ``use_m2m``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from imgembed.errors import InvalidInputError, ResourceExhaustedError
from imgembed.masks.boxes import batched_nms, box_area, masks_to_boxes
from imgembed.masks.regions import fill_holes_and_remove_sprinkles
from imgembed.masks.rle import masks_to_counts
from imgembed.models.sam2 import SAM2_INPUT_SIZE, Sam2Features
from imgembed.models.sam2_decoder import LOW_RES_MASK_SIZE, MASK_LOGIT_LIMIT, Sam2MaskPrediction
from imgembed.pipelines.sam2_everything_memory import (
    MemoryBudget,
    batch_plan,
    max_points_per_batch,
    pass_bytes,
    shared_budget,
)
from imgembed.pipelines.sam2_everything_params import (
    Sam2EverythingParams,
    crop_boxes,
    layer_point_grids,
)
from imgembed.pipelines.sam2_everything_records import Candidates, MaskRecord, records_of
from imgembed.runtime.memory import is_out_of_memory, release_frames

logger = logging.getLogger(__name__)

CROP_EDGE_TOLERANCE = 20.0
"""Pixels within which a mask's box counts as touching a crop edge (the reference's ``atol``)."""


class EncodeFn(Protocol):
    """Features of one RGB image: ``[h,w,3]`` uint8 in, batch-1 features on the compute device."""

    def __call__(self, image: np.ndarray) -> Sam2Features: ...


class DecodeFn(Protocol):
    """:func:`~imgembed.models.sam2_decoder.decode_masks` with the model bound."""

    def __call__(
        self,
        features: Sam2Features,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        multimask_output: bool,
    ) -> Sam2MaskPrediction: ...


@dataclass(frozen=True)
class EverythingResult:
    """Masks of one image and how they were made.

    Attributes:
        records: Masks in the reference's order (by NMS score, see the module docstring).
        image_hw: ``(H, W)`` of the image.
        points_per_batch: Prompts in the largest decoder pass (passes are sized by the memory
            budget, or ``params.points_per_batch``, and halved after running out of memory).
        crops: Crops encoded (1 without crop layers).
        prompts: Prompts decoded, refinement passes included.
        timings_ms: Wall time of ``encode``, ``decode`` and ``postprocess`` (on a GPU, work queued
            in one phase may finish in the next) and ``total``.
    """

    records: list[MaskRecord]
    image_hw: tuple[int, int]
    points_per_batch: int
    crops: int
    prompts: int
    timings_ms: dict[str, float]


@dataclass
class _Clock:
    encode: float = 0.0
    decode: float = 0.0
    postprocess: float = 0.0
    prompts: int = 0
    largest_batch: int = 0
    retries: int = 0


@dataclass(frozen=True)
class _OutOfMemory:
    """A pass that ran out of memory, its frames released (see :func:`release_frames`)."""

    error: Exception


@torch.inference_mode()
def generate_everything(
    image: np.ndarray,
    encode: EncodeFn,
    decode: DecodeFn,
    params: Sam2EverythingParams | None = None,
    *,
    device: torch.device | None = None,
    budget: MemoryBudget | None = None,
) -> EverythingResult:
    """Segments everything in an image (see the module docstring).

    Each decoder pass, with the post-processing of its masks, claims its memory from the
    device's budget shared by every job (:mod:`~imgembed.pipelines.sam2_everything_memory`),
    which sizes it; a pass that runs out of memory all the same is run again with half the
    prompts, down to one.

    Args:
        image: ``[H,W,3]`` uint8 RGB.
        encode: Features of a crop, on any device (ONNX Runtime's come on the CPU while the
            PyTorch decoder runs on CUDA).
        decode: Mask logits for prompts in the 1024 frame, on ``device``.
        params: Generator settings; the reference's defaults when ``None``.
        device: Where the decoder runs and its output is post-processed (the model's device):
            prompts are made there and batch sizes fitted to it. The features' device when
            ``None`` (an encoder and decoder on one device).
        budget: The memory the passes claim; the device's shared budget
            (:func:`~imgembed.pipelines.sam2_everything_memory.shared_budget`) when ``None``.

    Returns:
        The masks as records and facts about the run.

    Raises:
        InvalidInputError: The image is not ``[H,W,3]`` uint8 with both sides at least 1.
    """
    params = params or Sam2EverythingParams()
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise InvalidInputError(
            f"image must be [H,W,3] uint8 RGB with H, W >= 1, got {list(image.shape)} "
            f"{image.dtype}",
            field="image",
        )
    started = time.perf_counter()
    image_hw = (int(image.shape[0]), int(image.shape[1]))
    grids = layer_point_grids(params)
    crops = crop_boxes(image_hw, params.crop_n_layers, params.crop_overlap_ratio)
    clock = _Clock()
    kept = Candidates()
    for crop_box, layer in crops:
        kept.add(
            _process_crop(
                image, crop_box, grids[layer], params, encode, decode, clock, device, budget
            )
        )
    if len(crops) > 1:
        tensors = kept.tensors()
        scores = 1 / box_area(tensors["crop_boxes"])  # smaller crops first
        keep = batched_nms(
            tensors["boxes"].float(),
            scores,
            torch.zeros(len(scores), dtype=torch.int64),
            params.crop_nms_thresh,
        )
        kept = kept.select(keep)
    records = records_of(kept, image_hw, params)
    total = time.perf_counter() - started
    logger.debug(
        "segment everything: %d masks from %d crops in %.3f s", len(records), len(crops), total
    )
    return EverythingResult(
        records=records,
        image_hw=image_hw,
        points_per_batch=clock.largest_batch,
        crops=len(crops),
        prompts=clock.prompts,
        timings_ms={
            "encode": clock.encode * 1000,
            "decode": clock.decode * 1000,
            "postprocess": clock.postprocess * 1000,
            "total": total * 1000,
        },
    )


def _process_crop(
    image: np.ndarray,
    crop_box: tuple[int, int, int, int],
    grid: np.ndarray,
    params: Sam2EverythingParams,
    encode: EncodeFn,
    decode: DecodeFn,
    clock: _Clock,
    model_device: torch.device | None,
    budget: MemoryBudget | None,
) -> Candidates:
    """Masks of one crop after NMS within it, in image coordinates.

    Raises:
        ResourceExhaustedError: A pass of a single prompt ran out of memory.
    """
    left, top, right, bottom = crop_box
    crop = np.ascontiguousarray(image[top:bottom, left:right])
    crop_hw = (bottom - top, right - left)
    tick = time.perf_counter()
    features = encode(crop)
    clock.encode += time.perf_counter() - tick
    # The decoder's device, not the features': with ONNX Runtime features come on the CPU while
    # the decoder answers on CUDA, and a CPU tensor indexed with a CUDA mask raises.
    device = model_device or features.image_embed.device
    budget = budget or shared_budget(device)
    ceiling = params.points_per_batch or max_points_per_batch(device)
    # Grid in crop pixels, float64 then float32 as the reference: [P,2] XY.
    points = torch.as_tensor(grid * np.array([[crop_hw[1], crop_hw[0]]]), dtype=torch.float32)
    image_hw = (image.shape[0], image.shape[1])
    found = Candidates()
    start = 0
    with budget.job():
        while start < len(points):
            wanted = min(ceiling, len(points) - start)
            least = wanted if params.points_per_batch else 1  # the caller's size, unless halved
            with budget.claim(pass_bytes(wanted, crop_hw), pass_bytes(least, crop_hw)) as granted:
                plan = batch_plan(granted, crop_hw, wanted)
                outcome = _attempt_batch(
                    features,
                    points[start : start + plan.points].to(device),
                    crop_hw,
                    crop_box,
                    image_hw,
                    params,
                    decode,
                    plan.points,
                    plan.chunk,
                    clock,
                )
            if isinstance(outcome, _OutOfMemory):  # outside the except block: memory released
                if plan.points == 1:
                    raise outcome.error
                ceiling = plan.points // 2
                clock.retries += 1
                logger.warning(
                    "segment everything: a pass of %d prompts ran out of memory; retrying with %d",
                    plan.points,
                    ceiling,
                )
                continue
            found.add(outcome)
            clock.largest_batch = max(clock.largest_batch, plan.points)
            start += plan.points
    tick = time.perf_counter()
    tensors = found.tensors()
    keep = batched_nms(
        tensors["boxes"].float(),
        tensors["iou"],
        torch.zeros(len(tensors["iou"]), dtype=torch.int64),
        params.box_nms_thresh,
    )
    found = found.select(keep)
    tensors = found.tensors()
    offset = torch.tensor([left, top])
    result = Candidates(
        counts=found.counts,
        boxes=[tensors["boxes"] + offset.repeat(2)],  # crop frame -> image frame
        iou=[tensors["iou"]],
        stability=[tensors["stability"]],
        points=[tensors["points"] + offset],
        crop_boxes=[tensors["crop_boxes"]],
    )
    clock.postprocess += time.perf_counter() - tick
    return result


def _attempt_batch(
    features: Sam2Features,
    points: torch.Tensor,
    crop_hw: tuple[int, int],
    crop_box: tuple[int, int, int, int],
    image_hw: tuple[int, int],
    params: Sam2EverythingParams,
    decode: DecodeFn,
    batch_size: int,
    chunk: int,
    clock: _Clock,
) -> Candidates | _OutOfMemory:
    """:func:`_process_batch`, with an out-of-memory failure (the decoder batcher's
    :class:`~imgembed.errors.ResourceExhaustedError`, or the device's error in post-processing)
    returned with its frames released, so the retry does not run beside the failed pass's
    tensors; any other error is raised."""
    try:
        return _process_batch(
            features, points, crop_hw, crop_box, image_hw, params, decode, batch_size, chunk, clock
        )
    except Exception as error:
        if not (isinstance(error, ResourceExhaustedError) or is_out_of_memory(error)):
            raise
        return _OutOfMemory(release_frames(error))


def _to_model_frame(points: torch.Tensor, crop_hw: tuple[int, int]) -> torch.Tensor:
    """``[n,2]`` XY crop pixels -> the 1024 frame, in the reference's float32 operation order."""
    scaled = points.clone()
    scaled[:, 0] = scaled[:, 0] / crop_hw[1]
    scaled[:, 1] = scaled[:, 1] / crop_hw[0]
    return scaled * SAM2_INPUT_SIZE


def _refine(
    features: Sam2Features,
    frame_points: torch.Tensor,
    low_res: torch.Tensor,
    params: Sam2EverythingParams,
    decode: DecodeFn,
    batch_size: int,
    clock: _Clock,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``use_m2m``: each mask's clamped logits fed back with its point, one output mask each.

    Args:
        frame_points: ``[M,2]`` XY in the 1024 frame.
        low_res: ``[M,256,256]`` logits.

    Returns:
        ``[M,256,256]`` refined logits and ``[M]`` predicted IoU, float32.
    """
    masks, scores = [], []
    for start in range(0, len(frame_points), batch_size):
        stop = start + batch_size
        count = len(frame_points[start:stop])
        prompt = low_res[start:stop].clamp(-MASK_LOGIT_LIMIT, MASK_LOGIT_LIMIT)[:, None]
        prediction = decode(
            features,
            frame_points[start:stop, None, :],  # [m,2] -> [m,1,2]
            torch.ones(count, 1, dtype=torch.int32, device=low_res.device),
            prompt,  # [m,1,256,256]
            torch.ones(count, device=low_res.device),
            multimask_output=False,
        )
        clock.prompts += count
        masks.append(prediction.masks[:, 0].float())  # [m,1,256,256] -> [m,256,256]
        scores.append(prediction.iou_predictions[:, 0].float())  # [m,1] -> [m]
    return torch.cat(masks), torch.cat(scores)


def stability_scores(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """``[n]`` IoU of ``[n,H,W]`` masks cut at ``threshold + offset`` and ``threshold - offset``.

    The first mask always lies inside the second, so the IoU is a ratio of pixel counts (NaN for
    two empty masks, which no threshold keeps).
    """
    if logits.shape[-1] < 1 << 15:  # a row's count fits int16: Meta's faster two-step sum
        inner = (logits > threshold + offset).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
        outer = (logits > threshold - offset).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    else:
        inner = (logits > threshold + offset).sum(dim=(-1, -2), dtype=torch.int64)
        outer = (logits > threshold - offset).sum(dim=(-1, -2), dtype=torch.int64)
    return inner.to(torch.float32) / outer.to(torch.float32)


def _near_crop_edge(
    boxes: torch.Tensor, crop_box: tuple[int, int, int, int], image_hw: tuple[int, int]
) -> torch.Tensor:
    """``[n]`` bool: a box side within 20 pixels of a crop edge that is not an image edge."""
    left, top = crop_box[:2]
    in_image = (boxes + torch.tensor([left, top, left, top], device=boxes.device)).float()
    crop = torch.tensor(crop_box, dtype=torch.float32, device=boxes.device)
    whole = torch.tensor([0, 0, image_hw[1], image_hw[0]], dtype=torch.float32, device=boxes.device)
    near_crop = torch.isclose(in_image, crop[None], atol=CROP_EDGE_TOLERANCE, rtol=0)
    near_image = torch.isclose(in_image, whole[None], atol=CROP_EDGE_TOLERANCE, rtol=0)
    return (near_crop & ~near_image).any(dim=1)


def _process_batch(
    features: Sam2Features,
    points: torch.Tensor,
    crop_hw: tuple[int, int],
    crop_box: tuple[int, int, int, int],
    image_hw: tuple[int, int],
    params: Sam2EverythingParams,
    decode: DecodeFn,
    batch_size: int,
    chunk: int,
    clock: _Clock,
) -> Candidates:
    """Decodes one batch of grid points and keeps the masks that pass every per-mask filter.

    Args:
        points: ``[B,2]`` float32 XY in crop pixels, on the model's device.

    Returns:
        Candidates with boxes and points still in the crop's frame, RLE counts in the image's.
    """
    device = points.device
    frame_points = _to_model_frame(points, crop_hw)  # [B,2]
    tick = time.perf_counter()
    prediction = decode(
        features,
        frame_points[:, None, :],  # [B,2] -> [B,1,2]
        torch.ones(len(points), 1, dtype=torch.int32, device=device),
        torch.zeros(1, 1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE, device=device),
        torch.zeros(1, device=device),
        multimask_output=params.multimask_output,
    )
    clock.prompts += len(points)
    per_point = prediction.masks.shape[1]
    # On the prompts' device whatever the decoder answered on (a no-op for the engine's decoder).
    low_res = prediction.masks.to(device, torch.float32).flatten(0, 1)  # -> [B*K,256,256]
    iou = prediction.iou_predictions.to(device, torch.float32).flatten(0, 1)  # [B,K] -> [B*K]
    points = points.repeat_interleave(per_point, dim=0)  # [B*K,2]
    if params.use_m2m:
        frame_points = frame_points.repeat_interleave(per_point, dim=0)  # [B*K,2]
        low_res, iou = _refine(features, frame_points, low_res, params, decode, batch_size, clock)
    clock.decode += time.perf_counter() - tick
    tick = time.perf_counter()
    if params.pred_iou_thresh > 0.0:
        keep = iou > params.pred_iou_thresh
        low_res, iou, points = low_res[keep], iou[keep], points[keep]
    if params.min_mask_region_area > 0 and len(low_res):
        area = params.min_mask_region_area
        low_res = fill_holes_and_remove_sprinkles(low_res, area, area, params.mask_threshold)
    found = Candidates()
    for start in range(0, len(low_res), chunk):
        logits = F.interpolate(
            low_res[start : start + chunk, None],  # [c,256,256] -> [c,1,256,256]
            crop_hw,
            mode="bilinear",
            align_corners=False,
        )[:, 0]  # [c,1,h,w] -> [c,h,w]
        stability = stability_scores(logits, params.mask_threshold, params.stability_score_offset)
        keep = torch.ones_like(stability, dtype=torch.bool)
        if params.stability_score_thresh > 0.0:
            keep = stability >= params.stability_score_thresh
        masks = logits[keep] > params.mask_threshold  # [c',h,w]
        boxes = masks_to_boxes(masks)  # [c',4] crop frame, inclusive
        inside = ~_near_crop_edge(boxes, crop_box, image_hw)
        masks = masks[inside]
        found.counts.extend(masks_to_counts(masks, crop_box=crop_box, image_hw=image_hw))
        found.boxes.append(boxes[inside])
        found.iou.append(iou[start : start + chunk][keep][inside])
        found.stability.append(stability[keep][inside])
        found.points.append(points[start : start + chunk][keep][inside])
        found.crop_boxes.append(torch.tensor([crop_box]).expand(len(masks), 4))
    clock.postprocess += time.perf_counter() - tick
    return found
