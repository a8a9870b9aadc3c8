"""The engine's core: loaded models, their batchers and caches, the CPU worker pool, image input.

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
from imgembed.errors import UnknownModelError
from imgembed.metrics import Metrics
from imgembed.models.sam2 import SAM2_INPUT_SIZE, Sam2Features
from imgembed.models.sam2_loading import LoadedSam2, load_sam2
from imgembed.models.sam2_registry import resolve_variant
from imgembed.pipelines import sam2_embed
from imgembed.preprocess.fetch import fetch_url_bytes
from imgembed.preprocess.image import DecodedImage, decode_base64_image, decode_image
from imgembed.runtime.batcher import DynamicBatcher
from imgembed.runtime.device import DevicePlacement, choose_placement
from imgembed.runtime.feature_cache import CachedImage, FeatureCache
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
        warmup_seconds: Time the start-up warm-up pass took, ``None`` without one.
        cache: Encoder features of recent images, by ``image_id``.
        preparing: Requests admitted and decoding, not yet in the batcher's queue; they count
            against the queue limit so a burst is refused before it spends CPU on decoding.
    """

    spec: ModelSpec
    loaded: LoadedSam2
    placement: DevicePlacement
    names: frozenset[str]
    load_seconds: float
    device_executor: ThreadPoolExecutor = field(repr=False)
    batcher: DynamicBatcher[torch.Tensor, Sam2Features] | None = field(default=None, repr=False)
    warmup_seconds: float | None = None
    cache: FeatureCache = field(default_factory=lambda: FeatureCache(0), repr=False)
    preparing: int = 0

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
            "warmup_seconds": None
            if self.warmup_seconds is None
            else round(self.warmup_seconds, 3),
            "batching": dataclasses.asdict(self.spec.batching),
            "cache": {"max_bytes": self.cache.max_bytes, **vars(self.cache.stats)},
        }


class EngineCore:
    """Loads the configured models, runs the worker pools, and fetches and decodes images; the task
    methods live in the subclasses (:class:`~imgembed.engine.sam2.Sam2Tasks`)."""

    def __init__(
        self, config: ServerConfig, *, loader: Callable[..., LoadedSam2] = load_sam2
    ) -> None:
        self.config = config
        self._loader = loader
        self._models: dict[str, ServedModel] = {}
        self._by_name: dict[str, ServedModel] = {}
        self._cpu_pool: ThreadPoolExecutor | None = None
        self._ready = False
        self._encoding: dict[tuple[str, str], asyncio.Future[CachedImage]] = {}
        self.metrics = Metrics()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def ready(self) -> bool:
        """Whether every configured model is loaded and warmed up."""
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
                if served.spec.warmup:
                    await self._warm_up(served)
        self._ready = True

    async def _warm_up(self, served: ServedModel) -> None:
        """One forward pass on a blank image, on the model's own thread."""
        started = time.perf_counter()
        blank = torch.zeros(3, SAM2_INPUT_SIZE, SAM2_INPUT_SIZE)  # [3,1024,1024]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(served.device_executor, served.encode_batch, [blank])
        served.warmup_seconds = time.perf_counter() - started
        logger.info("warmed up %s in %.1f s", served.name, served.warmup_seconds)

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
            cache=FeatureCache(
                self.config.cache_bytes, on_change=self.metrics.cache_observer(variant.name)
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
