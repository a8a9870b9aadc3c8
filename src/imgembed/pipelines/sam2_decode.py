"""Prompt decoding for many requests at once: the SAM 2 decoder batcher's work.

A :class:`DecodeJob` is one request's prompts for one image (all objects of a segment request with
the same prompt length, a point batch of segment-everything, a v2 ``sam2_decoder`` call).
:func:`decode_jobs` runs a list of jobs from different requests in as few decoder passes as
their shapes allow: jobs with the same prompt length, output mode and clamping share one pass.
SAM 2's padding points are not neutral, so jobs with different prompt lengths are never padded to
one length: they run in separate passes, and every prompt's masks equal decoding it alone.

When every job of a pass uses the same features (one image), they are shared without a copy;
otherwise each prompt gets its image's features, which costs what the decoder's own activations
cost per prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from imgembed.models.sam2 import Sam2Features
from imgembed.models.sam2_decoder import Sam2MaskPrediction, check_decoder_inputs, decode_masks
from imgembed.runtime.device import DevicePlacement
from imgembed.runtime.streams import ready_on_current_stream


@dataclass(frozen=True)
class DecodeJob:
    """One request's prompts for the decoder, in the 1024 frame.

    Attributes:
        features: The image's features, batch 1 (shared by every prompt) or one per prompt, on
            any device and in any float dtype.
        point_coords: ``[B,N,2]`` float32 ``(x, y)`` in the 1024 frame, N >= 1.
        point_labels: ``[B,N]`` integer labels -1, 0, 1, 2 or 3.
        mask_input: ``[1|B,1,256,256]`` float32 low-resolution mask logits.
        has_mask_input: ``[1|B]`` float32, 1 where ``mask_input`` applies.
        multimask_output: Three candidates per prompt, or one.
        clamp: Clamp the logits to ±32 (see :func:`~imgembed.models.sam2_decoder.decode_masks`).
        ready: Set when the job is made: on CUDA, an event after the work that computed its
            prompt tensors, queued on the making thread's current stream (segment-everything
            builds labels, points and mask logits on the device); the decoder's stream waits on
            it before reading them. ``None`` when no prompt tensor is on a CUDA device.
    """

    features: Sam2Features
    point_coords: torch.Tensor
    point_labels: torch.Tensor
    mask_input: torch.Tensor
    has_mask_input: torch.Tensor
    multimask_output: bool = True
    clamp: bool = True
    ready: Any = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_decoder_inputs(
            self.features,
            self.point_coords,
            self.point_labels,
            self.mask_input,
            self.has_mask_input,
        )
        object.__setattr__(self, "ready", ready_on_current_stream(self.prompt_tensors))

    @property
    def prompt_tensors(self) -> tuple[torch.Tensor, ...]:
        """The job's own inputs besides the features: coordinates, labels and mask prompts."""
        return (self.point_coords, self.point_labels, self.mask_input, self.has_mask_input)

    @property
    def prompts(self) -> int:
        """B, the number of prompts."""
        return int(self.point_coords.shape[0])

    @property
    def pass_key(self) -> tuple[int, bool, bool]:
        """Jobs with equal keys can share a decoder pass: prompt length, output mode, clamping."""
        return (int(self.point_coords.shape[1]), self.multimask_output, self.clamp)


def decode_jobs(
    model: torch.nn.Module, placement: DevicePlacement, jobs: Sequence[DecodeJob]
) -> list[Sam2MaskPrediction]:
    """Decodes jobs from many requests, one decoder pass per group of compatible jobs.

    Args:
        model: A loaded SAM 2 model in eval mode.
        placement: The model's device and compute precision.
        jobs: The jobs, in any mix of images, prompt lengths and output modes.

    Returns:
        Per job, in order: ``[B,K,256,256]`` mask logits and ``[B,K]`` IoU predictions (K = 3, or
        1 without ``multimask_output``), float32 on the model's device.
    """
    groups: dict[tuple[int, bool, bool], list[int]] = {}
    for index, job in enumerate(jobs):
        groups.setdefault(job.pass_key, []).append(index)
    results: list[Sam2MaskPrediction | None] = [None] * len(jobs)
    for (_, multimask_output, clamp), indices in groups.items():
        members = [jobs[index] for index in indices]
        prediction = _decode_group(model, placement, members, multimask_output, clamp)
        start = 0
        for index, job in zip(indices, members, strict=True):
            rows = slice(start, start + job.prompts)
            results[index] = Sam2MaskPrediction(
                masks=prediction.masks[rows], iou_predictions=prediction.iou_predictions[rows]
            )
            start += job.prompts
    return [result for result in results if result is not None]


def to_host(prediction: Sam2MaskPrediction) -> Sam2MaskPrediction:
    """The prediction as float32 CPU tensors (``[B,K,256,256]`` logits, ``[B,K]`` IoU).

    A copy from a CUDA device waits until the device has finished the work queued before it:
    call this on a worker thread, never on the event loop, which it would stall for every
    request meanwhile.
    """
    return Sam2MaskPrediction(
        masks=prediction.masks.to("cpu", torch.float32),
        iou_predictions=prediction.iou_predictions.to("cpu", torch.float32),
    )


def _decode_group(
    model: torch.nn.Module,
    placement: DevicePlacement,
    jobs: list[DecodeJob],
    multimask_output: bool,
    clamp: bool,
) -> Sam2MaskPrediction:
    """One decoder pass over jobs of equal prompt length; rows follow the jobs' order."""
    device = placement.device
    shared = jobs[0].features
    if all(job.features is shared for job in jobs) and shared.image_embed.shape[0] == 1:
        features = shared.to(torch.float32, device)
    else:
        features = Sam2Features(
            image_embed=_stack([(job.features.image_embed, job.prompts) for job in jobs], device),
            high_res_feats_0=_stack(
                [(job.features.high_res_feats_0, job.prompts) for job in jobs], device
            ),
            high_res_feats_1=_stack(
                [(job.features.high_res_feats_1, job.prompts) for job in jobs], device
            ),
        ).to(torch.float32, device)
    point_coords = torch.cat([job.point_coords for job in jobs]).to(device)  # [sum B_i,N,2]
    point_labels = torch.cat([job.point_labels for job in jobs]).to(device)  # [sum B_i,N]
    if len(jobs) == 1:
        mask_input = jobs[0].mask_input.to(device)  # [1|B,1,256,256]
        has_mask_input = jobs[0].has_mask_input.to(device)  # [1|B]
    else:
        mask_input = _stack([(job.mask_input, job.prompts) for job in jobs], device)
        has_mask_input = _stack([(job.has_mask_input, job.prompts) for job in jobs], device)
    with placement.autocast():
        prediction = decode_masks(
            model,
            features,
            point_coords,
            point_labels,
            mask_input.float(),
            has_mask_input.float(),
            multimask_output=multimask_output,
            clamp=clamp,
        )
    return Sam2MaskPrediction(
        masks=prediction.masks.float(), iou_predictions=prediction.iou_predictions.float()
    )


def _stack(parts: list[tuple[torch.Tensor, int]], device: torch.device) -> torch.Tensor:
    """Per-job tensors of ``[1|B_i,...]`` with their prompt counts B_i -> ``[sum B_i,...]`` on
    ``device``.

    Each tensor is copied to the device as it is, then expanded there: a batch-1 tensor shared by
    B_i prompts crosses to the device once, not B_i times (64 prompts of features expanded on the
    host would upload about 1 GiB).
    """
    return torch.cat(
        [tensor.to(device).expand(prompts, *tensor.shape[1:]) for tensor, prompts in parts]
    )  # each [1|B_i,...] -> [B_i,...] on the device, then joined on the batch axis
