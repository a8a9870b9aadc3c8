"""Uploading decoded images to the model's device: pinned host buffers and a copy stream per thread.

Preprocessing on the device (``IMGEMBED_PREPROCESS``) sends each image as it was decoded, ``[H,W,3]``
uint8 (a quarter of the float32 input's bytes, and of any size), and resizes and normalises it
there. A copy with ``non_blocking=True`` only runs asynchronously from page-locked ("pinned") host
memory (from pageable memory CUDA first copies through a staging buffer of its own, synchronously),
so :class:`ImageStaging` copies the pixels into a pinned buffer from a small pool
(:class:`PinnedBufferPool`), uploads from there, and runs the preprocessing step on a CUDA stream of
the calling thread's own, so the copy and the kernels overlap the encoder's work on its stream
instead of queueing behind it. Before returning, the worker thread waits for its stream (about a
millisecond of copy and kernels, not the encoder's queue), so the result is complete whatever stream
consumes it, and the buffer goes back to the pool only once the copy has read it. A consumer on
another stream calls :func:`claim_for_current_stream` so that the caching allocator does not hand
the result's memory to the next upload while the consumer's kernels still read it.

On a CPU "device" nothing is pinned and there is no stream: the same code path runs, so tests
exercise it without a GPU.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from typing import Literal, Protocol, TypeVar

import numpy as np
import torch

from imgembed.settings import PreprocessChoice

ResultT = TypeVar("ResultT")

MEBIBYTE = 1024 * 1024
DEFAULT_POOL_BYTES = 256 * MEBIBYTE
"""Most bytes of pinned buffers the pool keeps between uploads (page-locked memory is taken from
what the operating system can page, so it is kept small)."""
DEFAULT_PINNED_LIMIT = 2 * DEFAULT_POOL_BYTES
"""Most bytes of pinned buffers in existence at once, kept or in use. torch's caching host
allocator keeps a freed pinned block for reuse rather than returning it, so this, not what the
pool keeps, bounds the process's page-locked memory; an upload beyond it gets ordinary memory
(its copy is then synchronous, for that image only)."""
MINIMUM_BUFFER_BYTES = MEBIBYTE


def buffer_capacity(nbytes: int) -> int:
    """The size of the buffer the pool allocates for ``nbytes``: at least 1 MiB, rounded up to an
    eighth of the power of two below it (at most 12.5 % unused), so similar sizes share buffers."""
    if nbytes <= MINIMUM_BUFFER_BYTES:
        return MINIMUM_BUFFER_BYTES
    step = 1 << max(0, nbytes.bit_length() - 4)  # an eighth of the power of two below nbytes
    return -(-nbytes // step) * step


class PinnedBufferPool:
    """A few reusable host buffers, page-locked when ``pin`` is set.

    Thread-safe: the CPU worker threads take and return buffers concurrently.

    Args:
        pin: Allocate page-locked memory (``torch.empty(..., pin_memory=True)``, which needs
            CUDA); ``False`` allocates ordinary memory, exercising the same logic on a CPU.
        max_bytes: Most bytes kept while not in use; buffers beyond are freed, the least
            recently returned first.
        pinned_limit: Most bytes of pinned buffers at once, kept and in use together; a buffer
            that would pass it is allocated in ordinary memory and not kept.
    """

    def __init__(
        self,
        *,
        pin: bool,
        max_bytes: int = DEFAULT_POOL_BYTES,
        pinned_limit: int = DEFAULT_PINNED_LIMIT,
    ) -> None:
        self.pin = pin
        self.max_bytes = max_bytes
        self.pinned_limit = pinned_limit
        self._free: list[torch.Tensor] = []  # least recently returned first
        self._lock = threading.Lock()
        self._pinned: dict[int, int] = {}  # id of each pinned buffer in existence -> its bytes
        self.allocations = 0
        """Buffers allocated so far (a reuse does not count)."""

    @property
    def pinned_bytes(self) -> int:
        """Bytes of pinned buffers in existence (kept, or in use by an upload)."""
        with self._lock:
            return sum(self._pinned.values())

    @property
    def kept_bytes(self) -> int:
        """Bytes of buffers waiting for reuse."""
        with self._lock:
            return sum(buffer.numel() for buffer in self._free)

    def acquire(self, nbytes: int) -> torch.Tensor:
        """A ``[capacity]`` uint8 host buffer of at least ``nbytes``: the smallest kept one that
        fits, else a new one of :func:`buffer_capacity` bytes, pinned unless that would pass
        :attr:`pinned_limit`."""
        capacity = buffer_capacity(nbytes)
        with self._lock:
            fitting = [buffer for buffer in self._free if buffer.numel() >= nbytes]
            if fitting:
                chosen = min(fitting, key=lambda buffer: buffer.numel())
                self._free = [buffer for buffer in self._free if buffer is not chosen]
                return chosen
            self.allocations += 1
            pin = self.pin and sum(self._pinned.values()) + capacity <= self.pinned_limit
            buffer = torch.empty(capacity, dtype=torch.uint8, pin_memory=pin)
            if pin:
                self._pinned[id(buffer)] = capacity
        return buffer

    def release(self, buffer: torch.Tensor) -> None:
        """Returns a buffer whose contents nobody reads any more (its copy has completed)."""
        with self._lock:
            if self.pin and id(buffer) not in self._pinned:
                return  # an ordinary-memory buffer past the pinned limit: not kept
            if buffer.numel() > self.max_bytes:
                self._pinned.pop(id(buffer), None)  # larger than all the pool keeps: freed
                return
            self._free.append(buffer)
            kept = sum(item.numel() for item in self._free)
            while kept > self.max_bytes:
                dropped = self._free.pop(0)
                kept -= dropped.numel()
                self._pinned.pop(id(dropped), None)


class DeviceQueue(Protocol):
    """Where a thread's preprocessing work is queued on the device, and how to wait for it."""

    def activate(self) -> contextlib.AbstractContextManager[object]:
        """Context in which kernels and copies go to this queue."""

    def synchronize(self) -> None:
        """Blocks the calling thread until the work queued here so far has finished."""


class CudaStreamQueue:
    """A CUDA stream of one worker thread (:class:`DeviceQueue`)."""

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device=device)

    def activate(self) -> contextlib.AbstractContextManager[object]:
        return torch.cuda.stream(self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()


class ImmediateQueue:
    """A device whose operations finish before they return (the CPU): nothing to wait for."""

    def activate(self) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        return None


class ImageStaging:
    """Uploads decoded images to one device and runs their preprocessing there.

    Args:
        device: The model's device.
        pool: Host buffers to upload from; by default page-locked ones on CUDA, ordinary ones on
            other devices.
        queue_factory: Makes a thread's :class:`DeviceQueue` on first use; by default a CUDA
            stream per thread on CUDA, :class:`ImmediateQueue` elsewhere.
    """

    def __init__(
        self,
        device: torch.device,
        *,
        pool: PinnedBufferPool | None = None,
        queue_factory: Callable[[], DeviceQueue] | None = None,
    ) -> None:
        self.device = device
        on_cuda = device.type == "cuda"
        self.pool = pool or PinnedBufferPool(pin=on_cuda)
        if queue_factory is None:
            queue_factory = (lambda: CudaStreamQueue(device)) if on_cuda else ImmediateQueue
        self._queue_factory = queue_factory
        self._local = threading.local()

    def _queue(self) -> DeviceQueue:
        queue = getattr(self._local, "queue", None)
        if queue is None:
            queue = self._queue_factory()
            self._local.queue = queue
        return queue

    def run(self, pixels: np.ndarray, step: Callable[[torch.Tensor], ResultT]) -> ResultT:
        """Uploads ``pixels`` and runs ``step`` on them on the device; returns once it is done.

        Args:
            pixels: ``[H,W,3]`` uint8 RGB on the CPU, as decoded.
            step: The preprocessing, given the ``[H,W,3]`` uint8 copy on :attr:`device`; its
                kernels run on the calling thread's queue.

        Returns:
            What ``step`` returns, its device work finished. Tensors in it were made on this
            thread's queue: a consumer on another CUDA stream calls
            :func:`claim_for_current_stream` on them.
        """
        source = torch.from_numpy(np.ascontiguousarray(pixels))  # [H,W,3] uint8, no copy
        buffer = self.pool.acquire(source.numel())
        queue = self._queue()
        try:
            host = buffer[: source.numel()].view(source.shape)  # [H,W,3] uint8 in the buffer
            host.copy_(source)
            with queue.activate():
                uploaded = host.to(self.device, non_blocking=True, copy=True)
                result = step(uploaded)
        finally:
            # The copy must have read the buffer before it is reused, even when step failed.
            queue.synchronize()
            self.pool.release(buffer)
        return result


def claim_for_current_stream(tensors: Iterable[torch.Tensor]) -> None:
    """Marks CUDA tensors made on another stream as used by the current stream.

    The caching allocator then keeps their memory from the next allocation on the stream that made
    them until the current stream's work queued so far has run (``Tensor.record_stream``). Tensors
    on other devices are left alone.
    """
    for tensor in tensors:
        if tensor.device.type == "cuda":
            tensor.record_stream(torch.cuda.current_stream(tensor.device))


def preprocess_location(
    choice: PreprocessChoice, device: torch.device, *, takes_device_input: bool = True
) -> Literal["cpu", "device"]:
    """Where a model's images are resized and normalised.

    Args:
        choice: The configured ``preprocess`` (``auto``, ``cpu`` or ``device``).
        device: The model's device.
        takes_device_input: Whether the model's encoder reads its input from the device (not the
            SAM 2 encoder's ONNX Runtime backend, which takes host arrays).

    Returns:
        ``device`` when chosen, or for ``auto`` on a CUDA device; else ``cpu``.
    """
    if not takes_device_input:
        return "cpu"
    if choice == "auto":
        return "device" if device.type == "cuda" else "cpu"
    return choice
