"""The SigLIP 2 family: its registry entry and its service (image and text embeddings, one bad
image never failing the rest)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from imgembed.engine.core import EngineCore
from imgembed.engine.registry import ModelFamily
from imgembed.engine.service import ModelService
from imgembed.engine.siglip_served import ServedSiglip
from imgembed.errors import DeadlineExceededError, ImgembedError, InvalidInputError
from imgembed.models.siglip_loading import LoadedSiglip, load_siglip
from imgembed.models.siglip_registry import resolve_siglip_variant
from imgembed.pipelines import siglip_embed
from imgembed.runtime.batcher import Admission
from imgembed.runtime.device import DevicePlacement
from imgembed.settings import ModelSpec
from imgembed.types import ImageInput

FAMILY_NAME = "siglip"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageOutcome:
    """One image of a batch: its vector, or why it has none.

    Attributes:
        index: Position in the request.
        vector: ``[D]`` float32 of norm 1, or ``None`` when the image failed.
        error: What went wrong for this image, or ``None``.
    """

    index: int
    vector: np.ndarray | None
    error: ImgembedError | None


@dataclass(frozen=True)
class SiglipImagesResult:
    """Embeddings of a batch of images, in request order.

    Attributes:
        outcomes: One per image, in request order.
        model: The model that computed them.
        timings_ms: Milliseconds of the whole batch.
    """

    outcomes: list[ImageOutcome]
    model: ServedSiglip
    timings_ms: dict[str, float]


class SiglipService(ModelService[ServedSiglip]):
    """SigLIP 2 requests: image batches with per-image failures, and texts.

    Args:
        core: The engine's models, pools and image input.
    """

    family_name = FAMILY_NAME
    served_type = ServedSiglip

    async def embed_images(
        self,
        images: Sequence[ImageInput],
        *,
        model: str | None = None,
        options: siglip_embed.SiglipEmbedOptions | None = None,
        deadline: float | None = None,
        field_prefix: str = "",
    ) -> SiglipImagesResult:
        """Embeds images concurrently; a failed image gets an error, the others their vectors.

        Each image is fetched (URLs: with the fetch policy's per-image timeout), decoded and
        prepared on the CPU pool, then joins the model's image batcher, so images of this and
        other requests share forward passes.

        Args:
            images: The images; each one's ``field`` names it in its error.
            model: SigLIP model name or alias; the server's first SigLIP model when ``None``.
            options: Intermediate reduction and NaFlex budget; defaults when ``None``.
            deadline: ``time.monotonic()`` by which the whole batch must be done; images not
                done by then fail with a deadline error. ``request_timeout_s`` from now by default.
            field_prefix: Prefix of field names in errors (``input.``).

        Returns:
            One outcome per image, in order.

        Raises:
            UnknownModelError: No such SigLIP model is served.
            InvalidInputError: The batch is empty or larger than the configured limit.
            QueueFullError: The model's image queue is full (429); the whole batch is admitted
                or refused at once, never image by image.
        """
        served = self.resolve(model, field_name=f"{field_prefix}model")
        limit = self.core.config.limits.max_batch_images
        if not images:
            raise InvalidInputError(
                f"{field_prefix}images is empty; send at least one image",
                field=f"{field_prefix}images",
            )
        if len(images) > limit:
            raise InvalidInputError(
                f"{field_prefix}images has {len(images)} images; at most {limit} per request "
                "(IMGEMBED_MAX_BATCH_IMAGES): split the batch",
                field=f"{field_prefix}images",
            )
        options = options or siglip_embed.SiglipEmbedOptions()
        if deadline is None:
            deadline = time.monotonic() + self.core.config.request_timeout_s
        started = time.perf_counter()
        assert served.image_batcher is not None
        # One admission for the whole batch: its images never refuse each other (429).
        with served.image_batcher.reserve(len(images)) as admission:
            tasks = [
                asyncio.ensure_future(self._embed_one(served, admission, image, options, deadline))
                for image in images
            ]
            try:
                done, _ = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
            finally:  # past the deadline, or this request cancelled: withdraw what is left
                pending = [task for task in tasks if not task.done()]
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        outcomes = []
        for index, (task, image) in enumerate(zip(tasks, images, strict=True)):
            if task in done and task.exception() is None:
                outcomes.append(ImageOutcome(index, task.result(), None))
                continue
            error = task.exception() if task in done else None
            if error is None:
                error = DeadlineExceededError(
                    f"{image.field}: not done when the request's deadline passed; its work was "
                    "dropped. Retry it, or send fewer or smaller images",
                    field=image.field,
                )
            elif not isinstance(error, ImgembedError):
                raise error
            outcomes.append(ImageOutcome(index, None, error))
        failed = sum(outcome.error is not None for outcome in outcomes)
        if failed:
            logger.info("%d of %d images failed in a SigLIP batch", failed, len(outcomes))
        return SiglipImagesResult(
            outcomes=outcomes,
            model=served,
            timings_ms={"total": round((time.perf_counter() - started) * 1000, 2)},
        )

    async def _embed_one(
        self,
        served: ServedSiglip,
        admission: Admission[siglip_embed.PreparedSiglipImage, np.ndarray],
        image: ImageInput,
        options: siglip_embed.SiglipEmbedOptions,
        deadline: float,
    ) -> np.ndarray:
        """One image of a batch: decoded and prepared on the CPU, then queued in its place."""
        try:
            decoded = await self.core.load_image(image)
            prepared = await self.core.run_cpu(
                siglip_embed.prepare_image,
                decoded,
                served.loaded.image_processing,
                options,
                served.staging,
            )
        except BaseException:
            admission.release(1)  # this image will not be queued
            raise
        return await admission.submit(prepared, deadline=deadline)

    async def embed_texts(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        deadline: float | None = None,
        field_prefix: str = "",
    ) -> tuple[np.ndarray, ServedSiglip]:
        """Embeds texts (lower-cased, padded to the model's 64 tokens) for text-to-image search.

        Args:
            texts: Non-blank strings, each at most ``max_text_chars`` characters.
            model: SigLIP model name or alias; the server's first SigLIP model when ``None``.
            deadline: ``time.monotonic()`` after which unstarted work is dropped.
            field_prefix: Prefix of field names in errors (``input.``).

        Returns:
            ``[N,D]`` float32 rows of norm 1, in order, and the model.

        Raises:
            InvalidInputError: Empty list, too many texts, a blank, non-string or too long text.
            QueueFullError: The model's text queue is full (429); the request's texts are admitted
                together, so they never refuse each other.
        """
        served = self.resolve(model, field_name=f"{field_prefix}model")
        field = f"{field_prefix}texts"
        limits = self.core.config.limits
        check_texts(texts, limits.max_texts, limits.max_text_chars, field)
        if deadline is None:
            deadline = time.monotonic() + self.core.config.request_timeout_s
        assert served.text_batcher is not None
        # One admission for the request, before tokenising: its texts never refuse each other.
        with served.text_batcher.reserve(len(texts)) as admission:
            input_ids = await self.core.run_cpu(
                siglip_embed.prepare_texts, served.loaded.tokenizer, list(texts)
            )  # [N,L]
            vectors = await admission.submit_all(list(input_ids), deadline=deadline)
        return np.stack(vectors), served  # N x [D] -> [N,D]


def check_texts(texts: object, max_texts: int, max_chars: int, field: str) -> None:
    """Refuses what cannot be embedded as text, naming the entry.

    Raises:
        InvalidInputError: Not a list, empty, too many, or an entry that is not a non-blank string
            of at most ``max_chars`` characters.
    """
    if not isinstance(texts, list | tuple) or not texts:
        raise InvalidInputError(f"{field} must be a non-empty list of strings", field=field)
    if len(texts) > max_texts:
        raise InvalidInputError(
            f"{field} has {len(texts)} texts; at most {max_texts} per request "
            "(IMGEMBED_MAX_TEXTS): split the batch",
            field=field,
        )
    for index, text in enumerate(texts):
        where = f"{field}[{index}]"
        if not isinstance(text, str):
            raise InvalidInputError(
                f"{where} must be a string, got {type(text).__name__}", field=where
            )
        if not text.strip():
            raise InvalidInputError(f"{where} is empty; send some words", field=where)
        if len(text) > max_chars:
            raise InvalidInputError(
                f"{where} has {len(text)} characters; at most {max_chars} (SigLIP reads 64 "
                "tokens, about 250 characters, so longer text would be cut anyway)",
                field=where,
            )


def _serve(
    loaded: LoadedSiglip,
    spec: ModelSpec,
    placement: DevicePlacement,
    seconds: float,
    core: EngineCore,
) -> ServedSiglip:
    """Wraps loaded SigLIP 2 weights as a served model with its image and text batchers."""
    names = {loaded.variant.name, loaded.variant.hub_id}
    if spec.alias:
        names.add(spec.alias)
    return ServedSiglip(
        loaded=loaded,
        spec=spec,
        placement=placement,
        names=frozenset(names),
        load_seconds=seconds,
        device_executor=core.device_thread(spec),
    )


SIGLIP_FAMILY = ModelFamily(
    name=FAMILY_NAME,
    display_name="SigLIP 2",
    service=SiglipService,
    canonical_name=lambda name: resolve_siglip_variant(name).name,
    load_weights=lambda spec, device: load_siglip(spec.name, spec.weights, device=device),
    serve=_serve,
)
"""SigLIP 2 image and text embeddings (FixRes and NaFlex)."""
