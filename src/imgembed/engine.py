"""The engine: owns the loaded models and the worker pools; usable as a library without HTTP.

    async with Engine(ServerConfig(models=(ModelSpec("sam2.1-hiera-tiny", weights="dummy"),))) as engine:
        result = await engine.sam2_embed(ImageBytes(open("cat.jpg", "rb").read()))

CPU stages (download, decode, resize, dtype conversion, serialisation) run in a thread pool; the
device stage runs on one thread per model behind a dynamic batcher, so concurrent requests share
forward passes, a request's CPU work overlaps another's forward pass, and the event loop never
blocks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Self, TypeVar

import torch

from imgembed.config import ModelSpec, ServerConfig
from imgembed.errors import ServiceUnavailableError, UnknownModelError
from imgembed.metrics import Metrics
from imgembed.models.sam2 import Sam2Features
from imgembed.models.sam2_loading import LoadedSam2, load_sam2
from imgembed.models.sam2_registry import resolve_variant
from imgembed.pipelines import sam2_embed
from imgembed.preprocess.fetch import fetch_url_bytes
from imgembed.preprocess.image import DecodedImage, decode_base64_image, decode_image
from imgembed.runtime.batcher import DynamicBatcher
from imgembed.runtime.device import DevicePlacement, choose_placement
from imgembed.types import ImageBase64, ImageInput, ImageURL

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")


@dataclass
class ServedModel:
    """A loaded model and how it is served.

    Attributes:
        spec: The configuration it was loaded from.
        loaded: Weights, architecture and provenance.
        placement: Device and compute precision.
        names: Every name a request may use for it (canonical name, hub id, Meta file names).
        load_seconds: Wall time the load took.
        device_executor: The single thread that runs this model's forward passes.
        batcher: Groups encode requests into batches; created when the engine starts.
    """

    spec: ModelSpec
    loaded: LoadedSam2
    placement: DevicePlacement
    names: frozenset[str]
    load_seconds: float
    device_executor: ThreadPoolExecutor = field(repr=False)
    batcher: DynamicBatcher[torch.Tensor, Sam2Features] | None = field(default=None, repr=False)

    def encode_batch(self, pixel_values: list[torch.Tensor]) -> list[Sam2Features]:
        """Encodes ``[3,1024,1024]`` images in one forward pass; one ``[1,...]`` result each."""
        features = sam2_embed.encode(self.loaded.model, self.placement, pixel_values)
        return [features[index] for index in range(len(pixel_values))]

    @property
    def name(self) -> str:
        return self.loaded.variant.name

    def describe(self) -> dict[str, Any]:
        """The model as ``/v1/models`` lists it."""
        variant = self.loaded.variant
        return {
            "id": variant.name,
            "object": "model",
            "task": "sam2-image-embedding",
            "aliases": sorted(self.names - {variant.name}),
            "weights": {
                "source": self.loaded.source,
                "location": self.loaded.weights_location,
                "untrained": self.loaded.untrained,
            },
            "meta_config": variant.meta_config,
            "device": self.placement.device_name,
            "compute_dtype": self.placement.compute_dtype,
            "input_size": [1024, 1024],
            "load_seconds": round(self.load_seconds, 3),
            "batching": dataclasses.asdict(self.spec.batching),
        }


@dataclass(frozen=True)
class Sam2EmbedResult:
    """An embedding and what produced it."""

    embedding: sam2_embed.Sam2Embedding
    model: ServedModel
    timings_ms: dict[str, float]


class Engine:
    """Loads the configured models and serves requests against them."""

    def __init__(
        self, config: ServerConfig, *, loader: Callable[..., LoadedSam2] = load_sam2
    ) -> None:
        self.config = config
        self._loader = loader
        self._models: dict[str, ServedModel] = {}
        self._by_name: dict[str, ServedModel] = {}
        self._cpu_pool: ThreadPoolExecutor | None = None
        self._ready = False
        self.metrics = Metrics()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def ready(self) -> bool:
        """Whether every configured model is loaded."""
        return self._ready

    @property
    def models(self) -> list[ServedModel]:
        """Served models, the default first."""
        return list(self._models.values())

    def load(self) -> None:
        """Loads every configured model not loaded yet; blocks. Raises the first load failure."""
        for spec in self.config.models:
            if any(served.spec == spec for served in self._models.values()):
                continue
            served = self._load(spec)
            self._models[served.name] = served
            for name in served.names:
                self._by_name[name.lower()] = served

    async def start(self) -> None:
        """Starts the worker pools and loads models not loaded yet (see :meth:`load`)."""
        if self._cpu_pool is None:
            self._cpu_pool = ThreadPoolExecutor(
                max_workers=self.config.compute_threads, thread_name_prefix="imgembed-cpu"
            )
        await asyncio.to_thread(self.load)
        for served in self._models.values():
            if served.batcher is None:
                batcher = DynamicBatcher(
                    served.name,
                    served.encode_batch,
                    served.device_executor,
                    served.spec.batching,
                    on_batch=self.metrics.batch_observer(served.name),
                )
                batcher.start()
                served.batcher = batcher
                self.metrics.track_model(
                    served.name,
                    queued=lambda batcher=batcher: batcher.queued,
                    in_flight=lambda batcher=batcher: batcher.in_flight,
                    load_s=served.load_seconds,
                )
        self._ready = True

    async def close(self) -> None:
        """Stops the worker pools; in-flight work finishes first."""
        self._ready = False
        for served in self._models.values():
            if served.batcher is not None:
                await served.batcher.close()
            served.device_executor.shutdown(wait=True)
        if self._cpu_pool is not None:
            self._cpu_pool.shutdown(wait=True)
            self._cpu_pool = None

    def _load(self, spec: ModelSpec) -> ServedModel:
        placement = choose_placement(spec.device)
        started = time.perf_counter()
        loaded = self._loader(spec.name, spec.weights, spec.meta_config, device=placement.device)
        seconds = time.perf_counter() - started
        variant = loaded.variant
        names = {variant.name, variant.hub_id, variant.meta_checkpoint, variant.meta_config}
        names.add(variant.meta_config.rsplit("/", 1)[-1])
        if spec.alias:
            names.add(spec.alias)
        logger.info(
            "loaded %s from %s (%s) on %s, compute %s, in %.1f s",
            variant.name,
            loaded.weights_location,
            loaded.source,
            placement.device,
            placement.compute_dtype,
            seconds,
        )
        return ServedModel(
            spec=spec,
            loaded=loaded,
            placement=placement,
            names=frozenset(names),
            load_seconds=seconds,
            device_executor=ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"imgembed-{variant.name}"
            ),
        )

    def resolve_model(self, name: str | None, *, field_name: str = "model") -> ServedModel:
        """The served model a request names, or the default when it names none.

        Raises:
            UnknownModelError: No served model has that name; the message lists those served.
        """
        if name is None or name == "":
            return next(iter(self._models.values()))
        served = self._by_name.get(name.lower())
        if served is None:
            try:
                variant = resolve_variant(name)
            except UnknownModelError:
                variant = None
            served = self._models.get(variant.name) if variant is not None else None
        if served is None:
            available = ", ".join(sorted(self._models))
            raise UnknownModelError(
                f"model {name!r} is not served here; this server serves: {available}. "
                "Start the server with --model to serve another",
                field=field_name,
            )
        return served

    def device_memory(self) -> dict[str, int]:
        """Bytes held by tensors on each CUDA device serving a model (empty on CPU)."""
        devices = {served.placement.device for served in self._models.values()}
        return {
            str(device): torch.cuda.memory_allocated(device)
            for device in devices
            if device.type == "cuda"
        }

    async def run_cpu(self, function: Callable[..., ResultT], *args: Any) -> ResultT:
        """Runs CPU-bound work (decode, serialise) in the engine's worker pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._cpu_pool, function, *args)

    async def load_image(self, image: ImageInput) -> DecodedImage:
        """Fetches (for URLs) and decodes an image, off the event loop."""
        if isinstance(image, ImageURL):
            if image.url.startswith("data:"):
                data = await self.run_cpu(
                    partial(decode_base64_image, image.url, field=image.field)
                )
            else:
                data = await fetch_url_bytes(image.url, self.config.fetch, field=image.field)
        elif isinstance(image, ImageBase64):
            data = await self.run_cpu(partial(decode_base64_image, image.text, field=image.field))
        else:
            data = image.data
        return await self.run_cpu(
            partial(decode_image, data, self.config.limits, field=image.field)
        )

    async def sam2_embed(
        self,
        image: ImageInput,
        *,
        model: str | None = None,
        options: sam2_embed.Sam2EmbedOptions | None = None,
        deadline: float | None = None,
    ) -> Sam2EmbedResult:
        """Computes SAM 2 features for one image.

        Args:
            image: The image, as bytes, base64 or URL.
            model: Model name or alias; ``None`` for the default model.
            options: Dtype, levels and resize mode; defaults when ``None``.
            deadline: ``time.monotonic()`` after which unstarted work is dropped; by default
                ``request_timeout_s`` from now.

        Returns:
            The features as ``[C,H,W]`` arrays in the requested dtype, with the frame mapping.

        Raises:
            QueueFullError: The model's queue is full (429).
            DeadlineExceededError: The deadline passed before the encoder ran (504).
        """
        options = options or sam2_embed.Sam2EmbedOptions()
        served = self.resolve_model(model)
        if deadline is None:
            deadline = time.monotonic() + self.config.request_timeout_s
        started = time.perf_counter()
        decoded = await self.load_image(image)
        decoded_at = time.perf_counter()
        prepared = await self.run_cpu(sam2_embed.prepare, decoded, options)
        prepared_at = time.perf_counter()
        if served.batcher is None:
            raise ServiceUnavailableError(
                "the engine is not started; use 'async with Engine(config)' or await start()"
            )
        features = await served.batcher.submit(prepared.pixel_values, deadline=deadline)
        encoded_at = time.perf_counter()
        embedding = await self.run_cpu(sam2_embed.finish, features, prepared.mapping, options)
        finished_at = time.perf_counter()
        timings = {
            "decode": decoded_at - started,
            "preprocess": prepared_at - decoded_at,
            "encode": encoded_at - prepared_at,
            "postprocess": finished_at - encoded_at,
        }
        return Sam2EmbedResult(
            embedding=embedding,
            model=served,
            timings_ms={stage: round(seconds * 1000, 2) for stage, seconds in timings.items()},
        )
