"""The SAM 2 image family: its registry entry and its service (embed, segment, segment everything,
and the pieces the v2 protocol calls)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from imgembed.engine import sam2_everything
from imgembed.engine.feature_cache import CachedImage, image_id_for
from imgembed.engine.registry import ModelFamily
from imgembed.engine.sam2_everything import milliseconds
from imgembed.engine.sam2_served import ServedSam2, serve_sam2
from imgembed.engine.service import ModelService
from imgembed.errors import ServiceUnavailableError
from imgembed.models.sam2 import Sam2Features
from imgembed.models.sam2_decoder import Sam2MaskPrediction
from imgembed.models.sam2_loading import load_sam2
from imgembed.models.sam2_registry import resolve_variant
from imgembed.pipelines import sam2_decode, sam2_embed, sam2_segment
from imgembed.pipelines.sam2_decode import DecodeJob
from imgembed.pipelines.sam2_everything_params import Sam2EverythingParams
from imgembed.preprocess.image import DecodedImage
from imgembed.preprocess.sam2_frame import FrameMapping
from imgembed.settings import ResizeMode
from imgembed.types import ImageInput

FAMILY_NAME = "sam2"
NOT_STARTED = "the engine is not started; use 'async with Engine(config)' or await start()"


@dataclass(frozen=True)
class Sam2EmbedResult:
    """An embedding and what produced it.

    Attributes:
        embedding: The features as arrays, with the frame mapping.
        model: The model that computed them.
        image_id: Names the image's cached features in later requests.
        cache_hit: The features came from the cache; the encoder did not run.
        timings_ms: Milliseconds per stage.
    """

    embedding: sam2_embed.Sam2Embedding
    model: ServedSam2
    image_id: str
    cache_hit: bool
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class Sam2SegmentResult:
    """Masks for each object of a segment request.

    Attributes:
        objects: One entry per requested object, in request order.
        mapping: Original-pixel to 1024-frame mapping of the image.
        model: The model that decoded them.
        image_id: Names the image's cached features in later requests.
        cache_hit: The features came from the cache; the encoder did not run.
        timings_ms: Milliseconds per stage.
    """

    objects: list[sam2_segment.ObjectMasks]
    mapping: FrameMapping
    model: ServedSam2
    image_id: str
    cache_hit: bool
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class ImageFeatures:
    """An image's encoder features as a request gets them.

    Attributes:
        entry: The feature store's entry: ``image_id``, batch-1 features on the model's device
            in its compute dtype, and the frame mapping.
        model: The model whose features they are.
        cache_hit: The features came from the store (cached, or another request's encoder
            pass); the encoder did not run for this request.
        seconds: Seconds per stage this request spent (decode, preprocess, encode).
    """

    entry: CachedImage
    model: ServedSam2
    cache_hit: bool
    seconds: dict[str, float]


class Sam2Service(ModelService[ServedSam2]):
    """SAM 2 requests: features (from the models' feature stores), masks from prompts, segment
    everything, and the v2 pieces.

    Args:
        core: The engine's models, pools and image input.
    """

    family_name = FAMILY_NAME
    served_type = ServedSam2

    async def image_features(
        self,
        image: ImageInput | None,
        *,
        image_id: str | None = None,
        model: str | None = None,
        resize_mode: ResizeMode | None = None,
        deadline: float | None = None,
        image_id_field: str = "image_id",
        decoded: DecodedImage | None = None,
    ) -> ImageFeatures:
        """An image's encoder features, from the model's :class:`FeatureStore`: cached, shared
        with a concurrent request for the same image, or encoded now.

        Args:
            image: The image, or ``None`` when ``image_id`` names cached features.
            image_id: An id an earlier embed or segment response returned.
            model: Model name or alias; ``None`` for the default model.
            resize_mode: How the image becomes the encoder input; the server default when ``None``.
            deadline: ``time.monotonic()`` after which unstarted work is dropped; by default
                ``request_timeout_s`` from now.
            image_id_field: Request field of ``image_id``, for error messages.
            decoded: ``image`` already decoded by the caller (it is not fetched or decoded again).

        Returns:
            The features, the model, whether they came from the store, and seconds per stage.

        Raises:
            NotFoundError: ``image_id`` is not (or no longer) cached for this model (404).
            QueueFullError: The model's queue is full (429).
            DeadlineExceededError: The deadline passed before the encoder ran (504).
        """
        served = self.resolve(model)
        if served.batcher is None:
            raise ServiceUnavailableError(NOT_STARTED)
        if image is None:
            entry = served.features.cached(image_id or "", field=image_id_field)
            return ImageFeatures(entry, served, True, {})
        if deadline is None:
            deadline = time.monotonic() + self.core.config.request_timeout_s
        options = sam2_embed.Sam2EmbedOptions(
            resize_mode=resize_mode or self.core.config.default_resize_mode
        )
        started = time.perf_counter()
        # The place counts against the queue while the image decodes; a cached image never
        # queues, so the place is given back before the feature store is asked.
        with served.batcher.reserve(1):
            if decoded is None:
                decoded = await self.core.load_image(image)
            image_key = await self.core.run_cpu(image_id_for, decoded.pixels, options.resize_mode)
        decoded_at = time.perf_counter()
        seconds = {"decode": decoded_at - started}
        batcher = served.batcher

        async def encode() -> tuple[Sam2Features, FrameMapping]:
            prepared = await self.core.run_cpu(sam2_embed.prepare, decoded, options, served.staging)
            prepared_at = time.perf_counter()
            features = await batcher.submit(prepared.pixel_values, deadline=deadline)
            seconds["preprocess"] = prepared_at - decoded_at
            seconds["encode"] = time.perf_counter() - prepared_at
            return features, prepared.mapping

        entry, hit = await served.features.get_or_encode(image_key, encode)
        return ImageFeatures(entry, served, hit, seconds)

    async def embed(
        self,
        image: ImageInput | None,
        *,
        image_id: str | None = None,
        model: str | None = None,
        options: sam2_embed.Sam2EmbedOptions | None = None,
        deadline: float | None = None,
        field_prefix: str = "",
    ) -> Sam2EmbedResult:
        """Computes SAM 2 features for one image, or reads them from the cache.

        Args:
            image: The image, as bytes, base64 or URL; ``None`` when ``image_id`` is given.
            image_id: An id an earlier response returned, instead of the image.
            model: Model name or alias; ``None`` for the default model.
            options: Dtype, levels and resize mode; defaults when ``None``.
            deadline: ``time.monotonic()`` after which unstarted work is dropped; by default
                ``request_timeout_s`` from now.
            field_prefix: Prefix of request field names in error messages (``input.``).

        Returns:
            The features as ``[C,H,W]`` arrays in the requested dtype, with the frame mapping.

        Raises:
            NotFoundError: ``image_id`` is not cached (404).
            QueueFullError: The model's queue is full (429).
            DeadlineExceededError: The deadline passed before the encoder ran (504).
        """
        options = options or sam2_embed.Sam2EmbedOptions()
        found = await self.image_features(
            image,
            image_id=image_id,
            model=model,
            resize_mode=options.resize_mode,
            deadline=deadline,
            image_id_field=f"{field_prefix}image_id",
        )
        entry, timings = found.entry, found.seconds
        finishing_at = time.perf_counter()
        embedding = await self.core.run_cpu(
            sam2_embed.finish, entry.features, entry.mapping, options
        )
        timings["postprocess"] = time.perf_counter() - finishing_at
        return Sam2EmbedResult(
            embedding=embedding,
            model=found.model,
            image_id=entry.image_id,
            cache_hit=found.cache_hit,
            timings_ms=milliseconds(timings),
        )

    async def segment(
        self,
        image: ImageInput | None,
        objects: Sequence[sam2_segment.SegmentObject],
        *,
        image_id: str | None = None,
        model: str | None = None,
        resize_mode: ResizeMode | None = None,
        options: sam2_segment.SegmentOptions | None = None,
        deadline: float | None = None,
        field_prefix: str = "",
    ) -> Sam2SegmentResult:
        """Segments objects from prompts: encode once (or read the cache), decode all objects.

        Args:
            image: The image; ``None`` when ``image_id`` is given.
            objects: Prompts in original-image pixels, validated by the caller (at least one).
            image_id: An id an earlier response returned, instead of the image.
            model: Model name or alias; ``None`` for the default model.
            resize_mode: Encoder input resize; the server default when ``None`` (ignored for a
                cached ``image_id``, whose mode is fixed).
            options: Single/multi-mask output, hole filling and sprinkle removal.
            deadline: ``time.monotonic()`` after which unstarted encoder work is dropped.
            field_prefix: Prefix of request field names in error messages (``input.``).

        Returns:
            Masks at the original image size for each object, in request order.

        Raises:
            InvalidInputError: A point or box lies outside the image.
            NotFoundError: ``image_id`` is not cached (404).
            QueueFullError: The model's queue is full (429).
            DeadlineExceededError: The deadline passed before the encoder ran (504).
        """
        options = options or sam2_segment.SegmentOptions()
        found = await self.image_features(
            image,
            image_id=image_id,
            model=model,
            resize_mode=resize_mode,
            deadline=deadline,
            image_id_field=f"{field_prefix}image_id",
        )
        cached, served, timings = found.entry, found.model, found.seconds
        sam2_segment.check_in_image(objects, cached.mapping.orig_hw)
        decoding_at = time.perf_counter()
        groups = sam2_segment.build_prompt_groups(objects, cached.mapping)
        predictions = await self.decode_jobs(
            served,
            [
                DecodeJob(
                    features=cached.features,
                    point_coords=group.point_coords,
                    point_labels=group.point_labels,
                    mask_input=group.mask_input,
                    has_mask_input=group.has_mask_input,
                    multimask_output=options.multimask_output,
                    clamp=False,
                )
                for group in groups
            ],
            deadline=deadline,
        )
        postprocessing_at = time.perf_counter()
        # One device-to-host copy per group, on the CPU pool; objects then slice host memory.
        predictions = await asyncio.gather(
            *(self.core.run_cpu(sam2_decode.to_host, prediction) for prediction in predictions)
        )
        per_object: list[tuple[torch.Tensor, torch.Tensor]] = [None] * len(objects)  # type: ignore[list-item]
        for group, prediction in zip(groups, predictions, strict=True):
            for row, index in enumerate(group.object_indices):
                per_object[index] = (prediction.masks[row], prediction.iou_predictions[row])
        results = await asyncio.gather(
            *(
                self.core.run_cpu(_postprocess_object, logits, scores, cached.mapping, options)
                for logits, scores in per_object
            )
        )
        timings["decode_masks"] = postprocessing_at - decoding_at
        timings["postprocess"] = time.perf_counter() - postprocessing_at
        return Sam2SegmentResult(
            objects=list(results),
            mapping=cached.mapping,
            model=served,
            image_id=cached.image_id,
            cache_hit=found.cache_hit,
            timings_ms=milliseconds(timings),
        )

    async def prepare_images(
        self,
        images: Sequence[ImageInput],
        *,
        resize_mode: ResizeMode = "stretch",
        model: str | None = None,
    ) -> list[sam2_embed.PreparedSam2Image]:
        """Fetches, decodes and preprocesses images for the SAM 2 encoder, concurrently.

        Args:
            images: The images; each one's ``field`` names it in error messages.
            resize_mode: How each image becomes the 1024x1024 input.
            model: The model the inputs are for (where it preprocesses); ``None`` for the
                default model.

        Returns:
            One ``[3,1024,1024]`` float32 input with its frame mapping per image, in order, on
            the CPU or, where the model preprocesses on its device, there.

        Raises:
            InvalidInputError: An image cannot be fetched or decoded (the first such, by field).
            PayloadTooLargeError: An image exceeds a size limit.
        """
        options = sam2_embed.Sam2EmbedOptions(resize_mode=resize_mode)

        staging = self.resolve(model).staging

        async def prepare(image: ImageInput) -> sam2_embed.PreparedSam2Image:
            decoded = await self.core.load_image(image)
            return await self.core.run_cpu(sam2_embed.prepare, decoded, options, staging)

        return list(await asyncio.gather(*(prepare(image) for image in images)))

    async def encode_pixels(
        self,
        pixel_values: Sequence[torch.Tensor],
        *,
        model: str | None = None,
        deadline: float | None = None,
    ) -> list[Sam2Features]:
        """Encodes preprocessed images, each one an item of the model's dynamic batcher.

        The items batch with every other request to the same model. When one fails (queue full,
        deadline passed), those still waiting are withdrawn, unrun, and the error is raised.

        Args:
            pixel_values: ``[3,1024,1024]`` float32 tensors, resized and ImageNet-normalised, on
                the CPU or the model's device.
            model: Model name or alias; ``None`` for the default model.
            deadline: ``time.monotonic()`` after which unstarted work is dropped; by default
                ``request_timeout_s`` from now.

        Returns:
            Features per image, ``[1,...]`` each, on the model's device in its compute dtype.

        Raises:
            QueueFullError: The model's queue is full (429).
            DeadlineExceededError: The deadline passed before an image was encoded (504).
            ServiceUnavailableError: The engine is not started.
        """
        served = self.resolve(model)
        if served.batcher is None:
            raise ServiceUnavailableError(NOT_STARTED)
        if deadline is None:
            deadline = time.monotonic() + self.core.config.request_timeout_s
        return await served.batcher.submit_all(list(pixel_values), deadline=deadline)

    async def decode(
        self,
        features: Sam2Features,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        *,
        model: str | None = None,
        deadline: float | None = None,
    ) -> Sam2MaskPrediction:
        """Decodes prompts into masks through the model's decoder batcher.

        Args:
            features: Float32 CPU features, batch 1 (shared by every prompt) or B.
            point_coords: ``[B,N,2]`` float32 ``(x, y)`` in the 1024 frame.
            point_labels: ``[B,N]`` integer labels -1, 0, 1, 2 or 3.
            mask_input: ``[1|B,1,256,256]`` float32 low-resolution mask logits.
            has_mask_input: ``[1|B]`` float32, 1 where ``mask_input`` applies.
            model: Model name or alias; ``None`` for the default model.
            deadline: ``time.monotonic()`` after which unstarted work is dropped; by default
                ``request_timeout_s`` from now.

        Returns:
            ``[B,3,256,256]`` float32 mask logits (clamped to ±32) and ``[B,3]`` float32 IoU
            predictions on the CPU; see :func:`~imgembed.models.sam2_decoder.decode_masks`.

        Raises:
            ValueError: A tensor's shape does not fit; the message names it.
            QueueFullError: The decoder's queue is full (429).
            DeadlineExceededError: The deadline passed before the prompts were decoded (504).
            ServiceUnavailableError: The engine is not started.
        """
        served = self.resolve(model)
        job = DecodeJob(features, point_coords, point_labels, mask_input, has_mask_input)
        (prediction,) = await self.decode_jobs(served, [job], deadline=deadline)
        # The device-to-host copy waits for the device: on the CPU pool, never the event loop.
        return await self.core.run_cpu(sam2_decode.to_host, prediction)

    async def decode_jobs(
        self, served: ServedSam2, jobs: Sequence[DecodeJob], *, deadline: float | None = None
    ) -> list[Sam2MaskPrediction]:
        """Submits a request's decode jobs to the model's decoder batcher and waits for all.

        The jobs batch with other requests' jobs. When one fails (queue full, deadline passed),
        those still waiting are withdrawn, unrun, and the error is raised.

        Args:
            served: The SAM 2 model.
            jobs: The request's prompts, one job per prompt length.
            deadline: ``time.monotonic()`` after which unstarted work is dropped; by default
                ``request_timeout_s`` from now.

        Returns:
            Per job, float32 ``[B,K,256,256]`` logits and ``[B,K]`` IoU predictions on the
            model's device.

        Raises:
            QueueFullError: The decoder's queue is full (429).
            DeadlineExceededError: The deadline passed before a job ran (504).
            ServiceUnavailableError: The engine is not started.
        """
        if served.decoder is None:
            raise ServiceUnavailableError(NOT_STARTED)
        if deadline is None:
            deadline = time.monotonic() + self.core.config.request_timeout_s
        return await served.decoder.submit_all(list(jobs), deadline=deadline)

    async def segment_everything(
        self,
        image: ImageInput,
        *,
        model: str | None = None,
        params: Sam2EverythingParams | None = None,
        deadline: float | None = None,
    ) -> sam2_everything.Sam2EverythingResult:
        """Finds every object in an image; see
        :func:`~imgembed.engine.sam2_everything.segment_everything`."""
        return await sam2_everything.segment_everything(
            self, image, model=model, params=params, deadline=deadline
        )


def _postprocess_object(
    low_res_logits: torch.Tensor,
    scores: torch.Tensor,
    mapping: FrameMapping,
    options: sam2_segment.SegmentOptions,
) -> sam2_segment.ObjectMasks:
    """:func:`~imgembed.pipelines.sam2_segment.postprocess_object` of decoder output already
    copied to the host (one copy per group, :func:`~imgembed.pipelines.sam2_decode.to_host`)."""
    return sam2_segment.postprocess_object(low_res_logits, scores, mapping, options)


SAM2_FAMILY = ModelFamily(
    name=FAMILY_NAME,
    display_name="SAM 2",
    service=Sam2Service,
    canonical_name=lambda name: resolve_variant(name).name,
    load_weights=lambda spec, device: load_sam2(
        spec.name, spec.weights, spec.meta_config, device=device
    ),
    serve=serve_sam2,
)
"""SAM 2 and 2.1 image models: features, masks from prompts, segment everything."""
