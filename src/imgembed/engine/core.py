"""The engine's core: loaded models, their batchers and caches, the CPU worker pool, image input.

CPU stages (download, decode, resize, dtype conversion, serialisation) run in a thread pool; the
device stage runs on one thread per model behind a dynamic batcher, so concurrent requests share
forward passes, a request's CPU work overlaps another's forward pass, and the event loop never
blocks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Self, TypeVar

import torch

from imgembed.config import ModelSpec, ServerConfig
from imgembed.engine.served import (
    FAMILY_NAMES,
    Family,
    ServedModel,
    ServedSam2,
    ServedSiglip,
)
from imgembed.errors import ImgembedError, ModelLoadError, UnknownModelError
from imgembed.metrics import Metrics
from imgembed.models.sam2_loading import LoadedSam2, load_sam2
from imgembed.models.sam2_registry import resolve_variant
from imgembed.models.siglip_loading import LoadedSiglip, load_siglip
from imgembed.models.siglip_registry import is_siglip_name, resolve_siglip_variant
from imgembed.preprocess.fetch import fetch_url_bytes
from imgembed.preprocess.image import DecodedImage, decode_base64_image, decode_image
from imgembed.runtime.device import choose_placement
from imgembed.runtime.feature_cache import CachedImage, FeatureCache
from imgembed.types import ImageBase64, ImageInput, ImageURL

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")


class EngineCore:
    """Loads the configured models, runs the worker pools, and fetches and decodes images; the task
    methods live in the subclasses (:class:`~imgembed.engine.sam2.Sam2Tasks`, ...)."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        loader: Callable[..., LoadedSam2] = load_sam2,
        siglip_loader: Callable[..., LoadedSiglip] = load_siglip,
    ) -> None:
        self.config = config
        self._loader = loader
        self._siglip_loader = siglip_loader
        self._models: dict[str, ServedModel] = {}
        self._by_name: dict[str, ServedModel] = {}
        self._cpu_pool: ThreadPoolExecutor | None = None
        self._job_pool: ThreadPoolExecutor | None = None
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
        if self.config.torch_threads > 0:
            torch.set_num_threads(self.config.torch_threads)
        if self._cpu_pool is None:
            self._cpu_pool = ThreadPoolExecutor(
                max_workers=self.config.compute_threads, thread_name_prefix="imgembed-cpu"
            )
        if self._job_pool is None:
            # Long pipelines (segment everything) wait on the batchers here, so they never hold
            # the CPU pool's threads that short requests decode and serialise on.
            self._job_pool = ThreadPoolExecutor(
                max_workers=self.config.compute_threads, thread_name_prefix="imgembed-job"
            )
        await asyncio.to_thread(self.load)
        loop = asyncio.get_running_loop()
        for served in self._models.values():
            if served.batchers():
                continue
            served.start(self.metrics)
            if served.spec.warmup:
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
        placement = choose_placement(spec.device)
        started = time.perf_counter()
        if is_siglip_name(spec.name):
            loaded_siglip = self._siglip_loader(spec.name, spec.weights, device=placement.device)
            location, source = loaded_siglip.weights_location, loaded_siglip.source
            siglip_variant = loaded_siglip.variant
            names = {siglip_variant.name, siglip_variant.hub_id}
        else:
            loaded = self._loader(
                spec.name, spec.weights, spec.meta_config, device=placement.device
            )
            location, source = loaded.weights_location, loaded.source
            variant = loaded.variant
            names = {variant.name, variant.hub_id, variant.meta_checkpoint, variant.meta_config}
            names.add(variant.meta_config.rsplit("/", 1)[-1])
        seconds = time.perf_counter() - started
        if spec.alias:
            names.add(spec.alias)
        common = {
            "spec": spec,
            "placement": placement,
            "names": frozenset(names),
            "load_seconds": seconds,
        }
        served: ServedModel
        if is_siglip_name(spec.name):
            served = ServedSiglip(
                loaded=loaded_siglip, **common, device_executor=self._thread(spec)
            )
        else:
            served = ServedSam2(
                loaded=loaded,
                **common,
                device_executor=self._thread(spec),
                cache=FeatureCache(
                    self.config.cache_bytes, on_change=self.metrics.cache_observer(variant.name)
                ),
                onnx=_onnx_encoder(spec, variant.name) if spec.backend == "onnxruntime" else None,
            )
        logger.info(
            "loaded %s from %s (%s) on %s, compute %s, in %.1f s",
            served.name,
            location,
            source,
            placement.device,
            placement.compute_dtype,
            seconds,
        )
        return served

    @staticmethod
    def _thread(spec: ModelSpec) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"imgembed-{spec.name}")

    def resolve_model(
        self, name: str | None, *, field_name: str = "model", family: Family | None = None
    ) -> ServedModel:
        """The served model a request names, or the default (of ``family``) when it names none.

        Args:
            name: A model name or alias, or ``None``/empty for the default.
            field_name: The request field, for error messages.
            family: The family the route needs; a model of another family is refused.

        Raises:
            UnknownModelError: No served model has that name, or it is of the wrong family; the
                message lists the models served for the route.
        """
        candidates = [
            served for served in self._models.values() if family is None or served.family == family
        ]
        wanted = FAMILY_NAMES[family] + " " if family is not None else ""
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
            served = self._models.get(_canonical_name(name) or "")
        if served is not None and family is not None and served.family != family:
            raise UnknownModelError(
                f"model {name!r} is a {FAMILY_NAMES[served.family]} model; this route needs a "
                f"{wanted}model: {', '.join(sorted(c.name for c in candidates)) or 'none served'}",
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

    def resolve_sam2(self, name: str | None, *, field_name: str = "model") -> ServedSam2:
        """The SAM 2 model a request names (see :meth:`resolve_model`)."""
        served = self.resolve_model(name, field_name=field_name, family="sam2")
        assert isinstance(served, ServedSam2)
        return served

    def resolve_siglip(self, name: str | None, *, field_name: str = "model") -> ServedSiglip:
        """The SigLIP 2 model a request names (see :meth:`resolve_model`)."""
        served = self.resolve_model(name, field_name=field_name, family="siglip")
        assert isinstance(served, ServedSiglip)
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


def _canonical_name(name: str) -> str | None:
    """The canonical name of any spelling of a SAM 2 or SigLIP 2 model, ``None`` if unknown."""
    for resolve in (resolve_variant, resolve_siglip_variant):
        try:
            return resolve(name).name
        except UnknownModelError:
            continue
    return None


def _onnx_encoder(spec: ModelSpec, model_name: str) -> Any:
    """The ONNX Runtime backend of ``spec.onnx_dir``, checked to be an export of ``model_name``.

    Raises:
        ModelLoadError: No folder given, the onnx extra missing, or an export of another model.
    """
    if not spec.onnx_dir:
        raise ModelLoadError(
            f"the onnxruntime backend of {model_name} needs an export: run 'imgembed export onnx "
            f"--model {model_name} --weights ... --out DIR' and set --onnx-dir DIR "
            "(IMGEMBED_ONNX_DIR)"
        )
    try:
        from imgembed.runtime.onnx_backend import OnnxSam2Backend
    except ImportError as error:
        raise ModelLoadError(
            f"the onnxruntime backend needs the onnx extra: pip install 'imgembed[onnx]' ({error})"
        ) from error
    try:
        backend = OnnxSam2Backend.from_dir(spec.onnx_dir)
    except ImgembedError as error:
        raise ModelLoadError(f"--onnx-dir {spec.onnx_dir}: {error.message}") from error
    if backend.model_id != model_name:
        raise ModelLoadError(
            f"--onnx-dir {spec.onnx_dir} holds an export of {backend.model_id}, not {model_name}; "
            f"export this model with 'imgembed export onnx --model {model_name}'"
        )
    return backend
