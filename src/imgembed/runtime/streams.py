"""Device streams: the queue each worker thread's device work goes to, the hand-over of tensors
between them, and batch timing in device time.

On CUDA every kernel is queued on a stream, and the device runs a stream's kernels in order.
Threads that never choose one share the device's default stream, so a click's decoder pass, queued
by the decoder's own thread, would still run after every encoder batch queued before it. Each
worker thread therefore runs its device work on a :class:`WorkStream` of its own: SAM 2's encoder
on a normal-priority stream, its decoder on the device's highest-priority stream, whose kernels
the device schedules first whenever both have work ready.

Tensors that cross from one stream to another need two things, which :class:`WorkStream` does:

- **Order**: the consumer's stream waits on an event recorded on the producer's stream after the
  tensors were computed (:meth:`WorkStream.publish` records it, :meth:`WorkStream.adopt` waits).
- **Lifetime**: PyTorch's caching allocator gives a freed block back to the stream that
  allocated it at once; a consumer on another stream may still have kernels queued that read it.
  ``Tensor.record_stream`` makes the allocator wait, at free time, for the work queued on the
  consumer's stream (:meth:`WorkStream.adopt` for the consumer's own stream,
  :meth:`WorkStream.publish` for the default stream, where every other thread works: CPU-pool
  copies to the host, segment-everything's post-processing).

Batches are timed in device time (:meth:`WorkStream.timed`): CUDA events recorded on the stream
around the batch, read once the end event has completed, on the worker thread. The wait is also
what makes a batch's results safe to hand out: they are computed when the batcher returns them.

On the CPU every one of these is a no-op and batches are timed with ``time.perf_counter``, so
callers never branch on the device.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

logger = logging.getLogger(__name__)

StreamPriority = Literal["normal", "high"]
"""``normal``: CUDA's default priority (0). ``high``: the device's greatest priority."""


@dataclass
class Timing:
    """What :meth:`WorkStream.timed` measured, filled in when its block ends.

    Attributes:
        seconds: Device time of the block on CUDA (between events recorded on the stream before
            and after it), wall time on the CPU.
        ready: On CUDA, the end event (complete: the block's device work is done); ``None`` on
            the CPU.
    """

    seconds: float = 0.0
    ready: Any = None


class WorkStream:
    """The device queue one worker thread runs its work on.

    Args:
        device: The device the work runs on; only a CUDA device gets a stream of its own.
        priority: ``high`` for latency-bound work (SAM 2's decoder) that should overtake the
            throughput-bound work (the encoder) queued on other streams.
    """

    def __init__(self, device: torch.device, priority: StreamPriority = "normal") -> None:
        self.device = device
        self.priority = priority
        self.stream: Any = None
        if device.type == "cuda":
            value = torch.cuda.Stream.priority_range()[1] if priority == "high" else 0
            # Lower numbers are higher priorities; the greatest is the range's second value.
            self.stream = torch.cuda.Stream(device=device, priority=value)
            logger.debug("%s: %s-priority stream (priority %d)", device, priority, value)

    @property
    def on_cuda(self) -> bool:
        """Whether work runs on a CUDA stream (else everything here is a no-op)."""
        return self.stream is not None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Context in which this thread's device work is queued on this stream (and the current
        device is the stream's, so work that names no device index lands there too)."""
        if self.stream is None:
            yield
            return
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            yield

    @contextlib.contextmanager
    def timed(self) -> Iterator[Timing]:
        """Times the block's device work; the :class:`Timing` is filled in when the block ends.

        On CUDA, events are recorded on this stream before and after the block, and this thread
        waits for the end event (also when the block raised, so a failed batch's work is done
        before its error travels on) before reading the elapsed time. Call it on the worker
        thread, never on the event loop: the wait lasts as long as the device work.
        """
        timing = Timing()
        if self.stream is None:
            started = time.perf_counter()
            try:
                yield timing
            finally:
                timing.seconds = time.perf_counter() - started
            return
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record(self.stream)
        try:
            yield timing
        finally:
            end.record(self.stream)
            end.synchronize()  # the elapsed time is only defined once the end event completed
            timing.seconds = start.elapsed_time(end) / 1000  # milliseconds -> seconds
            timing.ready = end

    def publish(self, tensors: Iterable[torch.Tensor]) -> Any:
        """Hands tensors computed on this stream to other streams.

        Records an event after the work queued so far (the tensors' computation), and marks each
        CUDA tensor as used by the device's default stream, where other threads use it.

        Returns:
            The event, for :meth:`adopt` on the consuming stream; ``None`` on the CPU.
        """
        if self.stream is None:
            return None
        default = torch.cuda.default_stream(self.device)
        for tensor in tensors:
            if tensor.device.type == "cuda":
                tensor.record_stream(default)
        event = torch.cuda.Event()
        event.record(self.stream)
        return event

    def adopt(self, tensors: Iterable[torch.Tensor], ready: Any = None) -> None:
        """Takes tensors another stream computed: this stream's later work waits on ``ready``
        (the event :meth:`publish` returned) and the tensors' memory is kept until that work is
        done. A no-op on the CPU, and for tensors not on a CUDA device (an ONNX Runtime encoder's
        CPU features, copied to the device on this stream).

        Args:
            tensors: The tensors this stream's work will read.
            ready: Completes once they are computed; ``None`` when they came through the host
                already computed (nothing to wait for).
        """
        if self.stream is None:
            return
        if ready is not None:
            self.stream.wait_event(ready)
        for tensor in tensors:
            if tensor.device.type == "cuda":
                tensor.record_stream(self.stream)


def ready_on_current_stream(tensors: Iterable[torch.Tensor]) -> Any:
    """An event after the work queued so far on the current stream of the tensors' CUDA device,
    for tensors a thread outside the :class:`WorkStream` workers has just computed (a copy made
    on the event loop's default stream, say): a consumer on another stream waits on it as on a
    :meth:`WorkStream.publish` event.

    Returns:
        The event; ``None`` when no tensor is on a CUDA device (nothing to wait for).
    """
    device = next((tensor.device for tensor in tensors if tensor.device.type == "cuda"), None)
    if device is None:
        return None
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    return event
