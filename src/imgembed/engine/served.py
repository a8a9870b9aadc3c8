"""A loaded model as the engine serves it: its device thread, batchers and description.

The base class of every family's served model (:class:`~imgembed.engine.sam2_served.ServedSam2`,
:class:`~imgembed.engine.siglip_served.ServedSiglip`); each family's module builds its own.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from imgembed.engine.metrics import Metrics
from imgembed.runtime.batch_size import SIGLIP_MEMORY, BatchMemory, batch_size_for_device
from imgembed.runtime.batcher import DynamicBatcher
from imgembed.runtime.device import DevicePlacement
from imgembed.runtime.staging import ImageStaging, preprocess_location
from imgembed.runtime.streams import StreamPriority, WorkStream
from imgembed.settings import DEFAULT_BATCH_SIZE, BatchingSettings, ModelSpec

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ServedModel(ABC):
    """What every served model has.

    Attributes:
        loaded: The family's loaded weights (``variant``, ``source``, ``weights_location``,
            ``untrained``); each family narrows the type.
        spec: The configuration it was loaded from.
        placement: Device and compute precision.
        names: Every name a request may use for it (canonical name, hub id, aliases).
        load_seconds: Wall time the load took.
        device_executor: The single thread that runs this model's forward passes.
        warmup_seconds: Time the start-up warm-up pass took, ``None`` without one.
    """

    loaded: Any
    spec: ModelSpec
    placement: DevicePlacement
    names: frozenset[str]
    load_seconds: float
    device_executor: ThreadPoolExecutor = field(repr=False)
    warmup_seconds: float | None = None

    family: str = field(init=False)
    _batch_sizes: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _sizing_open: bool = field(default=False, init=False, repr=False)
    _streams: dict[str, WorkStream] = field(default_factory=dict, init=False, repr=False)

    @property
    def name(self) -> str:
        """The canonical model name."""
        return self.loaded.variant.name

    @property
    def source(self) -> str:
        """What kind of place the weights came from."""
        return self.loaded.source

    @property
    def untrained(self) -> bool:
        """Whether the weights are random (``dummy``)."""
        return self.loaded.untrained

    @abstractmethod
    def start(self, metrics: Metrics) -> None:
        """Creates and starts the batchers (on the running event loop) and registers metrics."""

    @abstractmethod
    def batchers(self) -> list[DynamicBatcher[Any, Any]]:
        """The started batchers (empty before :meth:`start`)."""

    @abstractmethod
    def warm_up(self) -> None:
        """One forward pass of each kind on blank input (run on the device thread)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The model as ``/v1/models`` lists it."""

    def executors(self) -> list[ThreadPoolExecutor]:
        """The threads this model's batchers run on (shut down after the batchers close)."""
        return [self.device_executor]

    @property
    def on_gpu(self) -> bool:
        """Whether the model runs on a CUDA device."""
        return self.placement.device.type == "cuda"

    @property
    def takes_device_input(self) -> bool:
        """Whether the model's encoder reads its input from the device (so images may be
        preprocessed there)."""
        return True

    @property
    def preprocess(self) -> Literal["cpu", "device"]:
        """Where this model's images are resized and normalised (``spec.preprocess`` resolved)."""
        return preprocess_location(
            self.spec.preprocess, self.placement.device, takes_device_input=self.takes_device_input
        )

    @functools.cached_property
    def staging(self) -> ImageStaging | None:
        """Uploads images to the device and preprocesses them there; ``None`` when images are
        preprocessed on the CPU (see :attr:`preprocess`)."""
        if self.preprocess == "cpu":
            return None
        return ImageStaging(self.placement.device)

    @property
    def warms_up(self) -> bool:
        """Whether the engine runs :meth:`warm_up` before it reports ready: ``spec.warmup`` when
        it is a boolean; for ``auto``, only on a GPU (where the first pass pays for CUDA's lazy
        set-up; on a CPU it only delays readiness, see
        :data:`~imgembed.settings.values.WarmupChoice`)."""
        if self.spec.warmup == "auto":
            return self.on_gpu
        return bool(self.spec.warmup)

    @property
    def batching(self) -> BatchingSettings:
        """The model's batching settings, ``max_batch_size`` 0 resolved for model and device
        (:data:`~imgembed.settings.DEFAULT_BATCH_SIZE` on a CPU, by memory on a GPU)."""
        return self._resolved("batching", self.spec.batching, SIGLIP_MEMORY, DEFAULT_BATCH_SIZE)

    batching_keys: ClassVar[tuple[str, ...]] = ("batching",)
    """The properties holding this model's batching settings, sized by :meth:`fix_batch_sizes`."""

    def fix_batch_sizes(self) -> None:
        """Picks the device's batch sizes now, once for the model's life. The engine calls it
        once every configured model's weights are loaded, before any model starts or warms up,
        so each GPU size is read from the memory the weights leave; until then a GPU model's
        batching settings report the configured 0 (chosen at start)."""
        self._sizing_open = True
        for key in self.batching_keys:
            getattr(self, key)

    def _resolved(
        self, key: str, settings: BatchingSettings, memory: BatchMemory, on_cpu: int
    ) -> BatchingSettings:
        """``settings`` with ``max_batch_size`` 0 replaced by the device's size
        (:func:`~imgembed.runtime.batch_size.batch_size_for_device`), picked once per ``key``
        (on a GPU, from the memory free at :meth:`fix_batch_sizes`) and then kept; a size set in
        the configuration is kept as it is."""
        if settings.max_batch_size != 0:
            return settings
        if self.placement.device.type == "cuda" and not self._sizing_open:
            return settings  # asked early (/v1/models during start-up): not picked yet
        if key not in self._batch_sizes:
            self._batch_sizes[key] = batch_size_for_device(self.placement.device, memory, on_cpu)
        return settings.with_default_batch_size(self._batch_sizes[key])

    @property
    def device_stream(self) -> WorkStream:
        """The device queue of the device thread's work: a CUDA stream of its own on a GPU,
        a no-op on the CPU (see :mod:`imgembed.runtime.streams`)."""
        return self._stream("device", "normal")

    def _stream(self, key: str, priority: StreamPriority) -> WorkStream:
        """The model's work stream called ``key``, made on first use."""
        if key not in self._streams:
            self._streams[key] = WorkStream(self.placement.device, priority)
        return self._streams[key]

    def _batcher(
        self,
        name: str,
        run: Callable[[list[Any]], list[Any]],
        metrics: Metrics,
        settings: BatchingSettings | None = None,
        item_size: Callable[[Any], int] | None = None,
        executor: ThreadPoolExecutor | None = None,
        stream: WorkStream | None = None,
    ) -> DynamicBatcher[Any, Any]:
        """A started batcher; by default on the device thread and its stream."""
        batcher: DynamicBatcher[Any, Any] = DynamicBatcher(
            name,
            run,
            executor or self.device_executor,
            settings or self.batching,
            on_batch=metrics.batch_observer(name),
            item_size=item_size,
            stream=stream or self.device_stream,
        )
        batcher.start()
        metrics.track_model(
            name,
            queued=lambda: batcher.queued,
            in_flight=lambda: batcher.in_flight,
            load_s=self.load_seconds,
        )
        return batcher

    def _common_description(self, task: str, weights_location: str) -> dict[str, Any]:
        return {
            "id": self.name,
            "object": "model",
            "family": self.family,
            "task": task,
            "aliases": sorted(self.names - {self.name}),
            "weights": {
                "source": self.source,
                "location": weights_location,
                "untrained": self.untrained,
            },
            "device": self.placement.device_name,
            "compute_dtype": self.placement.compute_dtype,
            "preprocess": self.preprocess,
            "load_seconds": round(self.load_seconds, 3),
            "warmup_seconds": None
            if self.warmup_seconds is None
            else round(self.warmup_seconds, 3),
            "batching": dataclasses.asdict(self.batching),
        }
