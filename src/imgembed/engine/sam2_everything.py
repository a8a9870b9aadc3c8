"""The engine's "segment everything" task: Meta's automatic mask generator on a served model."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from imgembed.engine.sam2_served import ServedSam2
from imgembed.models.sam2 import SAM2_INPUT_SIZE, Sam2Features
from imgembed.models.sam2_decoder import Sam2MaskPrediction
from imgembed.pipelines.sam2_decode import DecodeJob
from imgembed.pipelines.sam2_everything import EverythingResult, generate_everything
from imgembed.pipelines.sam2_everything_params import Sam2EverythingParams
from imgembed.preprocess.sam2_frame import sam2_pixel_values
from imgembed.runtime.loop_bridge import LoopBridge
from imgembed.types import ImageInput

if TYPE_CHECKING:
    from imgembed.engine.sam2 import Sam2Service


@dataclass(frozen=True)
class Sam2EverythingResult:
    """Every mask of an image.

    Attributes:
        everything: The generator's records and facts about the run.
        model: The model that made them.
        image_id: Names the whole image's cached features in later requests.
        cache_hit: The whole image's features came from the cache.
        timings_ms: Milliseconds per stage.
    """

    everything: EverythingResult
    model: ServedSam2
    image_id: str
    cache_hit: bool
    timings_ms: dict[str, float]


async def segment_everything(
    service: Sam2Service,
    image: ImageInput,
    *,
    model: str | None = None,
    params: Sam2EverythingParams | None = None,
    deadline: float | None = None,
) -> Sam2EverythingResult:
    """Finds every object in an image with a grid of point prompts (and optional crops).

    The whole image's features go through the cache and the encoder batcher like any embed
    request (an image embedded or segmented before is not encoded again). The generator runs
    on a job thread: its crops join the encoder batcher and its point batches the decoder
    batcher, so other requests to the model interleave with it instead of waiting behind the
    whole run, and its CPU steps (thresholds, boxes, NMS, run-length encoding) never hold the
    model's device thread.

    Args:
        service: The SAM 2 service whose models, batchers and feature stores it uses.
        image: The image (decoded pixels are needed, so an ``image_id`` alone is not enough).
        model: Model name or alias; ``None`` for the default model.
        params: The generator's settings; the reference's defaults when ``None``.
        deadline: ``time.monotonic()`` after which unstarted encoder or decoder work is
            dropped; by default ``request_timeout_s`` from now.

    Returns:
        The masks as the reference's records, with the run's facts.

    Raises:
        QueueFullError: The model's encoder or decoder queue is full (429).
        DeadlineExceededError: The deadline passed before a device step ran (504).
    """
    params = params or Sam2EverythingParams()
    served = service.resolve(model)
    if served.batcher is not None:
        served.batcher.refuse_if_full()
    if deadline is None:
        deadline = time.monotonic() + service.core.config.request_timeout_s
    started = time.perf_counter()
    decoded = await service.core.load_image(image)
    found = await service.image_features(
        image, model=model, resize_mode="stretch", deadline=deadline, decoded=decoded
    )
    cached, served, timings = found.entry, found.model, found.seconds
    whole_image = cached.features
    loop = asyncio.get_running_loop()
    bridge = LoopBridge(loop)

    def encode(crop: np.ndarray) -> Sam2Features:
        if crop.shape == decoded.pixels.shape:
            return whole_image
        pixel_values, _ = sam2_pixel_values(torch.from_numpy(crop), SAM2_INPUT_SIZE, "stretch")
        (features,) = bridge.call(
            service.encode_pixels([pixel_values], model=served.name, deadline=deadline)
        )
        return features

    def decode(
        features: Sam2Features,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        multimask_output: bool,
    ) -> Sam2MaskPrediction:
        job = DecodeJob(
            features,
            point_coords,
            point_labels,
            mask_input,
            has_mask_input,
            multimask_output=multimask_output,
            clamp=False,
        )
        (prediction,) = bridge.call(service.decode_jobs(served, [job], deadline=deadline))
        return prediction

    def run() -> EverythingResult:
        with torch.inference_mode():
            return generate_everything(
                decoded.pixels, encode, decode, params, device=served.placement.device
            )

    try:
        everything = await service.core.run_job(run)
    except asyncio.CancelledError:
        bridge.cancel()
        raise
    timings["generate"] = time.perf_counter() - started
    return Sam2EverythingResult(
        everything=everything,
        model=served,
        image_id=cached.image_id,
        cache_hit=found.cache_hit,
        timings_ms=milliseconds(timings),
    )


def milliseconds(seconds: dict[str, float]) -> dict[str, float]:
    """Seconds per stage as milliseconds, rounded to hundredths."""
    return {stage: round(value * 1000, 2) for stage, value in seconds.items()}
