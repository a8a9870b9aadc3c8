"""Memory for segment everything: one budget per device, shared by every job running there.

Each decoder pass of a job, with the post-processing of its masks that follows it, claims its
memory from the device's :class:`MemoryBudget` before it runs and gives it back after. The budget
is a share of what the device can allocate (:func:`usable_bytes`: free memory plus what PyTorch's
caching allocator holds unused), measured when no pass holds a claim, and is split fairly between
the jobs running at once, so two jobs and the encoder never ask for more than all of it. What a
claim grants sizes the pass (:func:`batch_plan`): prompts at :data:`DECODER_BYTES_PER_PROMPT` each,
and masks upscaled at once at :data:`POSTPROCESS_BYTES_PER_PIXEL` per image pixel each.

A pass that runs out of memory anyway (the encoder or another request took what was measured) is
retried by the generator with half the prompts (see
:func:`~imgembed.pipelines.sam2_everything.generate_everything`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from imgembed.pipelines.sam2_everything_params import (
    CPU_MAX_POINTS_PER_BATCH,
    CUDA_MAX_POINTS_PER_BATCH,
    DECODER_BYTES_PER_PROMPT,
    MEMORY_SHARE,
    _available_ram,
)

POSTPROCESS_BYTES_PER_PIXEL = 16
"""Post-processing of one mask at image size: float32 logits and the comparisons, per pixel."""
CPU_MEMORY_SHARE = 0.25
"""Share of the available RAM the jobs on the CPU may use together."""


def usable_bytes(device: torch.device) -> int:
    """Bytes an allocation on ``device`` can get now.

    CUDA: the driver's free memory plus the caching allocator's reserved but unallocated blocks
    (PyTorch reuses those before asking the driver, and ``mem_get_info`` counts them as used).
    Other devices: the host's available RAM.
    """
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached_free = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free) + max(0, int(cached_free))
    return _available_ram()


class MemoryBudget:
    """Memory that the segment-everything jobs on one device share.

    Thread-safe: jobs run on the engine's job threads.

    Args:
        measure: Bytes the device can allocate now (:func:`usable_bytes` bound to the device).
        share: Share of the measured bytes the jobs may hold together; the rest is left to the
            encoder, other requests and the allocator's fragmentation.
    """

    def __init__(self, measure: Callable[[], int], share: float) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"a memory budget's share must be in (0, 1], got {share}")
        self._measure = measure
        self._share = share
        self._lock = threading.Lock()
        self._jobs = 0
        self._claimed = 0
        self._pool = 0

    @property
    def claimed(self) -> int:
        """Bytes held by passes running now."""
        return self._claimed

    @contextlib.contextmanager
    def job(self) -> Iterator[None]:
        """Counts a job as running for the block: the pool is split between running jobs."""
        with self._lock:
            self._jobs += 1
        try:
            yield
        finally:
            with self._lock:
                self._jobs -= 1

    @contextlib.contextmanager
    def claim(self, want: int, least: int) -> Iterator[int]:
        """Holds memory for one pass for the block.

        The grant is ``want`` at most, the job's fair share of the pool at most (the pool split
        between the running jobs), what no other pass holds at most, and ``least`` at least (a
        pass of one prompt runs even when the pool is spent; if it does not fit, the device's
        out-of-memory error says so). The pool is measured again whenever no pass holds a claim.

        Args:
            want: Bytes the pass could use.
            least: Bytes of the smallest pass.

        Yields:
            The bytes granted.
        """
        with self._lock:
            if self._claimed == 0:
                self._pool = int(self._measure() * self._share)
            fair = self._pool // max(1, self._jobs)
            grant = max(least, min(want, fair, self._pool - self._claimed))
            self._claimed += grant
        try:
            yield grant
        finally:
            with self._lock:
                self._claimed -= grant


@dataclass(frozen=True)
class BatchPlan:
    """How one pass uses its grant.

    Attributes:
        points: Prompts in the decoder pass.
        chunk: Masks upscaled to image size at once in its post-processing.
    """

    points: int
    chunk: int


def pass_bytes(points: int, image_hw: tuple[int, int]) -> int:
    """Bytes a pass of ``points`` prompts may use: the larger of its decoder pass and of
    upscaling every one of its masks at once (they run one after the other)."""
    pixels = max(1, image_hw[0] * image_hw[1])
    return points * max(DECODER_BYTES_PER_PROMPT, 3 * POSTPROCESS_BYTES_PER_PIXEL * pixels)


def batch_plan(granted: int, image_hw: tuple[int, int], ceiling: int) -> BatchPlan:
    """The prompts and post-processing chunk that fit in ``granted`` bytes.

    Args:
        granted: Bytes the pass holds.
        image_hw: ``(H, W)`` of the crop, the size masks are upscaled to.
        ceiling: Most prompts per pass (the device's maximum, the caller's ``points_per_batch``
            or half the size that ran out of memory).

    Returns:
        At least one prompt and one mask per chunk.
    """
    points = max(1, min(ceiling, granted // DECODER_BYTES_PER_PROMPT))
    chunk = max(1, granted // (POSTPROCESS_BYTES_PER_PIXEL * max(1, image_hw[0] * image_hw[1])))
    return BatchPlan(points=points, chunk=chunk)


def max_points_per_batch(device: torch.device) -> int:
    """Most prompts per decoder pass on ``device`` (a CPU gains little beyond 64)."""
    return CUDA_MAX_POINTS_PER_BATCH if device.type == "cuda" else CPU_MAX_POINTS_PER_BATCH


_BUDGETS: dict[str, MemoryBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def shared_budget(device: torch.device) -> MemoryBudget:
    """The process's one budget for ``device`` (``cuda:0`` and ``cuda`` of device 0 are one).

    A device's memory is the process's, whichever model or request uses it, so the budget is too.
    """
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        key, share = f"cuda:{index}", MEMORY_SHARE
    else:
        key, share = device.type, CPU_MEMORY_SHARE
    with _BUDGETS_LOCK:
        budget = _BUDGETS.get(key)
        if budget is None:
            budget = MemoryBudget(lambda: usable_bytes(torch.device(key)), share)
            _BUDGETS[key] = budget
        return budget
