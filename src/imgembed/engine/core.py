"""The engine's core: loaded models, their batchers, the worker pools, image input.

What every family's service needs and nothing family-specific: models are loaded, named and
resolved through the family registry (:mod:`imgembed.engine.registry`).

CPU stages (download, decode, resize, dtype conversion, serialisation) run in a thread pool; the
device stage runs on one thread per model behind a dynamic batcher, so concurrent requests share
forward passes, a request's CPU work overlaps another's forward pass, and the event loop never
blocks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Self, TypeVar

import torch

from imgembed.engine.metrics import Metrics
from imgembed.engine.registry import ModelFamily, family_of
from imgembed.engine.served import ServedModel
from imgembed.errors import UnknownModelError
from imgembed.preprocess.fetch import fetch_url_bytes
from imgembed.preprocess.image import DecodedImage, decode_base64_image, decode_image
from imgembed.runtime.device import choose_placement, device_label
from imgembed.runtime.workers import worker_count
from imgembed.settings import ModelSpec, ServerConfig
from imgembed.types import ImageBase64, ImageInput, ImageURL

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")
ServedT = TypeVar("ServedT", bound=ServedModel)


class EngineCore:
    """Loads the configured models, runs the worker pools, and fetches and decodes images; the
    families' operations live in their services (:class:`~imgembed.engine.Engine` holds them).

    Args:
        config: What to serve and how.
        families: The model families (:data:`~imgembed.engine.families.FAMILIES` by default).
    """

    def __init__(self, config: ServerConfig, families: Sequence[ModelFamily]) -> None:
        self.config = config
        self.families = tuple(families)
        self._models: dict[str, ServedModel] = {}
        self._by_name: dict[str, ServedModel] = {}
        self._cpu_pool: ThreadPoolExecutor | None = None
        self._job_pool: ThreadPoolExecutor | None = None
        self._ready = False
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
        if self.config.torch_threads > 0:
            torch.set_num_threads(self.config.torch_threads)
        workers = worker_count(self.config.compute_threads)
        if self._cpu_pool is None:
            logger.info("CPU worker threads: %d", workers)
            self._cpu_pool = ThreadPoolExecutor(
                max_workers=workers, thread_name_prefix="imgembed-cpu"
            )
        if self._job_pool is None:
            # Long pipelines (segment everything) wait on the batchers here, so they never hold
            # the CPU pool's threads that short requests decode and serialise on.
            self._job_pool = ThreadPoolExecutor(
                max_workers=workers, thread_name_prefix="imgembed-job"
            )
        await asyncio.to_thread(self.load)
        loop = asyncio.get_running_loop()
        for served in self._models.values():
            served.fix_batch_sizes()  # every model's weights are in memory, no warm-up ran yet
        for served in self._models.values():
            if served.batchers():
                continue
            served.start(self.metrics)
            if served.warms_up:
                started = time.perf_counter()
                await loop.run_in_executor(served.device_executor, served.warm_up)
                served.warmup_seconds = time.perf_counter() - started
                logger.info("warmed up %s in %.1f s", served.name, served.warmup_seconds)
        self._ready = True

    async def close(self) -> None:
        """Stops the worker pools; in-flight work finishes first."""
        self._ready = False
        for served in self._models.values():
            for batcher in served.batchers():
                await batcher.close()
            for executor in served.executors():
                executor.shutdown(wait=True)
        if self._job_pool is not None:
            # Off the loop: a job still running waits on the loop until its next call is refused.
            await asyncio.to_thread(self._job_pool.shutdown, wait=True)
            self._job_pool = None
        if self._cpu_pool is not None:
            self._cpu_pool.shutdown(wait=True)
            self._cpu_pool = None

    def _load(self, spec: ModelSpec) -> ServedModel:
        family = family_of(self.families, spec.name)
        assert family.load_weights is not None
        assert family.serve is not None
        placement = choose_placement(spec.device, spec.compute_dtype)
        started = time.perf_counter()
        loaded = family.load_weights(spec, placement.device)
        seconds = time.perf_counter() - started
        served = family.serve(loaded, spec, placement, seconds, self)
        logger.info(
            "loaded %s from %s (%s) on %s, compute %s, in %.1f s",
            served.name,
            loaded.weights_location,
            served.source,
            placement.device,
            placement.compute_dtype,
            seconds,
        )
        return served

    def family(self, name: str) -> ModelFamily:
        """The registered family called ``name``.

        Raises:
            KeyError: No family of that name is registered.
        """
        for family in self.families:
            if family.name == name:
                return family
        raise KeyError(f"no model family {name!r}; registered: {[f.name for f in self.families]}")

    def device_thread(self, spec: ModelSpec) -> ThreadPoolExecutor:
        """A new single thread for one model's forward passes."""
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"imgembed-{spec.name}")

    def resolve_model(
        self, name: str | None, *, field_name: str = "model", family: str | None = None
    ) -> ServedModel:
        """The served model a request names, or the default (of ``family``) when it names none.

        Args:
            name: A model name or alias, or ``None``/empty for the default.
            field_name: The request field, for error messages.
            family: The family the route needs (a :class:`ModelFamily` name); a model of another
                family is refused.

        Raises:
            UnknownModelError: No served model has that name, or it is of the wrong family; the
                message lists the models served for the route.
        """
        candidates = [
            served for served in self._models.values() if family is None or served.family == family
        ]
        wanted = self.family(family).display_name + " " if family is not None else ""
        if name is None or name == "":
            if not candidates:
                raise UnknownModelError(
                    f"this server serves no {wanted}model; start it with --model naming one "
                    f"(served now: {', '.join(sorted(self._models))})",
                    field=field_name,
                )
            return candidates[0]
        served = self._by_name.get(name.lower())
        if served is None:
            served = self._models.get(self._canonical_name(name) or "")
        if served is not None and family is not None and served.family != family:
            raise UnknownModelError(
                f"model {name!r} is a {self.family(served.family).display_name} model; this "
                f"route needs a {wanted}model: "
                f"{', '.join(sorted(c.name for c in candidates)) or 'none served'}",
                field=field_name,
            )
        if served is None:
            available = ", ".join(sorted(self._models))
            raise UnknownModelError(
                f"model {name!r} is not served here; this server serves: {available}. "
                "Start the server with --model to serve another",
                field=field_name,
            )
        return served

    def resolve_typed(
        self, kind: type[ServedT], family: str, name: str | None, *, field_name: str = "model"
    ) -> ServedT:
        """:meth:`resolve_model` for a family whose served models are ``kind``."""
        served = self.resolve_model(name, field_name=field_name, family=family)
        if not isinstance(served, kind):
            raise TypeError(f"{served.name} is a {type(served).__name__}, not a {kind.__name__}")
        return served

    def _canonical_name(self, name: str) -> str | None:
        """The canonical name of any spelling of a registered family's model, ``None`` if none."""
        for family in self.families:
            if family.canonical_name is not None and family.knows(name):
                return family.canonical_name(name)
        return None

    def device_memory(self) -> dict[str, int]:
        """Bytes held by tensors on each CUDA device serving a model, by ``cuda:N`` (empty on
        CPU)."""
        devices = {
            device_label(served.placement.device): served.placement.device
            for served in self._models.values()
            if served.placement.device.type == "cuda"
        }
        return {label: torch.cuda.memory_allocated(device) for label, device in devices.items()}

    async def run_cpu(self, function: Callable[..., ResultT], *args: Any) -> ResultT:
        """Runs CPU-bound work (decode, serialise) in the engine's worker pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._cpu_pool, function, *args)

    async def run_job(self, function: Callable[[], ResultT]) -> ResultT:
        """Runs a long pipeline (segment everything) on the job pool, whose threads wait on the
        batchers without holding the CPU pool's threads that short requests need."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._job_pool, function)

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
