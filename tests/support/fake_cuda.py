"""CUDA's streams and events played on the CPU, for tests of code that only a GPU would run.

:func:`install` replaces ``torch.cuda.Stream``, ``torch.cuda.Event``, the ``torch.cuda.stream``
and ``torch.cuda.device`` contexts, ``torch.cuda.current_stream``/``default_stream`` and
``Tensor.record_stream`` with fakes that keep a log of every call, in order, and keep each
thread's current stream as CUDA does (per thread). Events get a time when recorded, from a fake
clock that advances :data:`TICK_MS` per record, so a timed block lasts a known device time; and
``elapsed_time`` refuses, as CUDA does, to read an end event that has not completed
(``synchronize``). :class:`OnCuda` tensors report a CUDA device while computing on the CPU.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

TICK_MS = 250.0
"""Fake device time between two consecutive event records, in milliseconds."""
GREATEST_PRIORITY = -5
"""The fake device's greatest stream priority (CUDA's range on recent GPUs is (0, -5))."""


class OnCuda(torch.Tensor):
    """A CPU tensor that reports ``cuda:0`` as its device (results computed from it too)."""

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func == torch.Tensor.device.__get__:
            return torch.device("cuda", 0)
        return super().__torch_function__(func, types, args, kwargs or {})


def on_cuda(tensor: torch.Tensor) -> OnCuda:
    """``tensor`` as an :class:`OnCuda` tensor (same storage)."""
    return tensor.as_subclass(OnCuda)


@dataclass
class FakeCuda:
    """The fake device's log and threads' current streams.

    Attributes:
        log: ``(what, *details)`` per call, in order: ``("stream", stream)`` when made,
            ``("record", event, stream)``, ``("wait", stream, event)``, ``("synchronize", event)``,
            ``("elapsed", start, end)``, ``("record_stream", tensor, stream)``, ``("enter", stream)``
            and ``("exit", stream)`` of the stream context.
        default: The device's default stream.
    """

    log: list[tuple[Any, ...]] = field(default_factory=list)
    default: FakeStream = field(init=False)
    _local: threading.local = field(default_factory=threading.local)
    _clock: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.default = FakeStream.__new__(FakeStream)
        self.default.init(self, torch.device("cuda", 0), 0, name="default")

    def current(self) -> FakeStream:
        """This thread's current stream (the default stream unless a context chose one)."""
        return getattr(self._local, "stream", self.default)

    def entries(self, what: str) -> list[tuple[Any, ...]]:
        """The log's entries of one kind."""
        return [entry for entry in self.log if entry[0] == what]

    def streams(self) -> list[FakeStream]:
        """The streams made, in order (the default stream not included)."""
        return [entry[1] for entry in self.entries("stream")]

    @contextlib.contextmanager
    def stream_context(self, stream: FakeStream | None) -> Iterator[None]:
        previous = self.current()
        if stream is not None:
            self._local.stream = stream
            self.log.append(("enter", stream))
        try:
            yield
        finally:
            if stream is not None:
                self.log.append(("exit", stream))
            self._local.stream = previous

    def tick(self) -> int:
        return next(self._clock)


class FakeStream:
    """``torch.cuda.Stream`` on the fake device."""

    cuda: FakeCuda  # set by install()

    def __init__(self, device: Any = None, priority: int = 0) -> None:
        self.init(type(self).cuda, torch.device(device or "cuda:0"), priority)
        self.cuda.log.append(("stream", self))

    def init(self, cuda: FakeCuda, device: torch.device, priority: int, name: str = "") -> None:
        self.cuda, self.device, self.name = cuda, device, name
        self.priority = max(GREATEST_PRIORITY, min(0, priority))  # clamped, as CUDA does

    @staticmethod
    def priority_range() -> tuple[int, int]:
        return (0, GREATEST_PRIORITY)

    def wait_event(self, event: FakeEvent) -> None:
        self.cuda.log.append(("wait", self, event))

    def __repr__(self) -> str:
        return f"FakeStream({self.name or 'priority ' + str(self.priority)})"


class FakeEvent:
    """``torch.cuda.Event`` on the fake device."""

    cuda: FakeCuda  # set by install()

    def __init__(self, enable_timing: bool = False) -> None:
        self.enable_timing = enable_timing
        self.recorded_at: int | None = None
        self.stream: FakeStream | None = None
        self.completed = False

    def record(self, stream: FakeStream | None = None) -> None:
        self.stream = stream or self.cuda.current()
        self.recorded_at = self.cuda.tick()
        self.cuda.log.append(("record", self, self.stream))

    def synchronize(self) -> None:
        assert self.recorded_at is not None, "synchronize() of an event never recorded"
        self.completed = True
        self.cuda.log.append(("synchronize", self))

    def elapsed_time(self, end: FakeEvent) -> float:
        if not (self.enable_timing and end.enable_timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
        if not end.completed:  # CUDA: cudaErrorNotReady
            raise RuntimeError("CUDA error: device not ready (end event not completed)")
        assert self.recorded_at is not None
        assert end.recorded_at is not None
        self.cuda.log.append(("elapsed", self, end))
        return (end.recorded_at - self.recorded_at) * TICK_MS


def install(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    """Plays CUDA's streams and events on the CPU for the rest of the test; returns the log."""
    cuda = FakeCuda()
    stream_type = type("Stream", (FakeStream,), {"cuda": cuda})
    event_type = type("Event", (FakeEvent,), {"cuda": cuda})
    monkeypatch.setattr(torch.cuda, "Stream", stream_type)
    monkeypatch.setattr(torch.cuda, "Event", event_type)
    monkeypatch.setattr(torch.cuda, "stream", cuda.stream_context)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: cuda.current())
    monkeypatch.setattr(torch.cuda, "default_stream", lambda device=None: cuda.default)
    monkeypatch.setattr(
        torch.Tensor,
        "record_stream",
        lambda tensor, stream: cuda.log.append(("record_stream", tensor, stream)),
    )
    return cuda
