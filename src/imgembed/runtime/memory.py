"""Device memory: recognising an out-of-memory error, and releasing what a failed pass holds.

A failed forward pass's activations live as long as its traceback: every frame of the pass keeps
its locals. :func:`release_frames` clears them (the traceback still formats), and
:func:`release_cached_device_memory` hands the CUDA caching allocator's free blocks back, so a
retry (the batcher's halves of an out-of-memory batch) starts from what is really in use.
"""

from __future__ import annotations

import gc
import traceback
from typing import TypeVar

import torch

ErrorT = TypeVar("ErrorT", bound=BaseException)


OUT_OF_MEMORY_MARKERS = (
    "out of memory",  # PyTorch's CUDA allocator, "CUDA error: out of memory", host allocators
    "cublas_status_alloc_failed",  # cuBLAS could not allocate its workspace
    "cudnn_status_alloc_failed",  # cuDNN likewise
    "cudnn_status_not_enough_workspace",
    "cufft_alloc_failed",
    "cusolver_status_alloc_failed",
    "failed to allocate memory",  # ONNX Runtime's arena (CPU and CUDA providers)
)
"""Lower-case phrases of a ``RuntimeError`` (or ONNX Runtime error) message that mean an allocation
failed: the library ran out of memory as surely as PyTorch's own ``OutOfMemoryError``."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device (or host) allocation failure worth splitting a batch for:
    ``MemoryError``, PyTorch's ``OutOfMemoryError``, or a message of
    :data:`OUT_OF_MEMORY_MARKERS` (cuBLAS, cuDNN, cuFFT, cuSOLVER, ONNX Runtime)."""
    if isinstance(error, MemoryError):
        return True
    if type(error).__name__ == "OutOfMemoryError":
        return True
    from_onnxruntime = type(error).__module__.startswith("onnxruntime.")  # not RuntimeErrors
    if not (isinstance(error, RuntimeError) or from_onnxruntime):
        return False
    message = str(error).lower()
    return any(marker in message for marker in OUT_OF_MEMORY_MARKERS)


def release_frames(error: ErrorT) -> ErrorT:
    """Frees what the tracebacks of ``error`` (and of its causes and contexts) keep alive.

    Each finished frame's locals are cleared (:func:`traceback.clear_frames`): the traceback still
    formats (files, lines, code), but a failed forward pass's tensors are released at once instead
    of living as long as the exception (in a future, a log record, a chained error). The
    catching frame itself, still running, is dropped from the traceback.

    Returns:
        ``error``, for chaining.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if current is error and current.__traceback__ is not None:
            current.__traceback__ = current.__traceback__.tb_next  # the catching frame
        traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__
    return error


def release_cached_device_memory() -> None:
    """After an out-of-memory error: collects reference cycles, then hands the CUDA caching
    allocator's free blocks back to the driver, so a retry starts from what is really in use.
    Nothing to do without an initialised CUDA device."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
