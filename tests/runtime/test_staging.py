"""Pinned upload buffers and the per-thread device queue of device preprocessing (issue 18, item 8).

Pinning needs CUDA: the pool's ``pin`` flag is what a CUDA staging sets, and ``torch.empty`` is
watched to see it asked for page-locked memory; the CUDA stream is replaced by a recording queue."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import numpy as np
import pytest
import torch

from imgembed.runtime import staging as staging_module
from imgembed.runtime.staging import (
    MEBIBYTE,
    ImageStaging,
    PinnedBufferPool,
    buffer_capacity,
    claim_for_current_stream,
    preprocess_location,
)


@pytest.fixture
def pinned_allocations(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every ``torch.empty`` the staging module makes, with its arguments; pinning is dropped
    (it needs CUDA) after being recorded."""
    calls: list[dict[str, Any]] = []
    real_empty = torch.empty

    def empty(*size: Any, **kwargs: Any) -> torch.Tensor:
        calls.append({"size": size, **kwargs})
        kwargs.pop("pin_memory", None)
        return real_empty(*size, **kwargs)

    monkeypatch.setattr(staging_module.torch, "empty", empty)
    return calls


def test_capacity_rounds_to_eighths_of_a_power_of_two() -> None:
    assert buffer_capacity(1) == MEBIBYTE
    assert buffer_capacity(MEBIBYTE) == MEBIBYTE
    for nbytes in (MEBIBYTE + 1, 3 * 1024 * 1024 + 7, 36_578_304, 100_000_000):
        capacity = buffer_capacity(nbytes)
        assert nbytes <= capacity <= nbytes * 1.125 + 1


def test_pool_asks_for_pinned_memory_and_reuses_buffers(
    pinned_allocations: list[dict[str, Any]],
) -> None:
    pool = PinnedBufferPool(pin=True)
    first = pool.acquire(3 * MEBIBYTE)
    assert pinned_allocations[0]["pin_memory"] is True
    pool.release(first)
    again = pool.acquire(2 * MEBIBYTE)  # smaller: the kept buffer fits
    assert again is first
    assert pool.allocations == 1
    other = pool.acquire(2 * MEBIBYTE)  # the first is in use: a second buffer
    assert other is not first
    assert pool.allocations == 2


def test_pool_picks_the_smallest_fitting_buffer(pinned_allocations: list[dict[str, Any]]) -> None:
    pool = PinnedBufferPool(pin=False)
    large = pool.acquire(40 * MEBIBYTE)
    small = pool.acquire(2 * MEBIBYTE)
    pool.release(large)
    pool.release(small)
    assert pool.acquire(MEBIBYTE) is small
    assert pool.acquire(MEBIBYTE) is large
    assert all(call["pin_memory"] is False for call in pinned_allocations)


def test_pool_keeps_at_most_its_budget_dropping_the_oldest(
    pinned_allocations: list[dict[str, Any]],
) -> None:
    pool = PinnedBufferPool(pin=True, max_bytes=8 * MEBIBYTE)
    buffers = [pool.acquire(3 * MEBIBYTE) for _ in range(3)]  # 3 MiB buffers
    for buffer in buffers:
        pool.release(buffer)
    assert pool.kept_bytes == 6 * MEBIBYTE  # the first one returned was dropped
    assert pool.acquire(MEBIBYTE) is not buffers[0]
    huge = pool.acquire(9 * MEBIBYTE)
    pool.release(huge)  # over the whole budget: not kept
    assert all(item is not huge for item in pool._free)


def test_pinned_memory_in_use_and_kept_stays_within_its_limit(
    pinned_allocations: list[dict[str, Any]],
) -> None:
    """torch keeps freed pinned blocks for reuse, so the pool bounds what is pinned at once: an
    upload past the limit gets ordinary memory, which is not kept."""
    pool = PinnedBufferPool(pin=True, max_bytes=8 * MEBIBYTE, pinned_limit=10 * MEBIBYTE)
    first, second = pool.acquire(4 * MEBIBYTE), pool.acquire(4 * MEBIBYTE)
    assert pool.pinned_bytes == 8 * MEBIBYTE
    third = pool.acquire(4 * MEBIBYTE)  # 12 MiB would pass the limit
    assert [call["pin_memory"] for call in pinned_allocations] == [True, True, False]
    pool.release(third)
    assert all(item is not third for item in pool._free)
    pool.release(first)
    pool.release(second)
    assert pool.kept_bytes == 8 * MEBIBYTE
    assert pool.pinned_bytes == 8 * MEBIBYTE
    huge = pool.acquire(9 * MEBIBYTE)  # no kept buffer fits; pinning it would pass the limit
    assert pinned_allocations[-1]["pin_memory"] is False
    pool.release(huge)
    assert pool.pinned_bytes == 8 * MEBIBYTE


class RecordingQueue:
    """A device queue that records what happened, in order, into a shared log."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.thread = threading.current_thread().name

    def activate(self) -> contextlib.AbstractContextManager[object]:
        self.log.append("activate")
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        self.log.append("synchronize")


class RecordingPool(PinnedBufferPool):
    def __init__(self, log: list[str]) -> None:
        super().__init__(pin=False)
        self.log = log

    def acquire(self, nbytes: int) -> torch.Tensor:
        self.log.append("acquire")
        return super().acquire(nbytes)

    def release(self, buffer: torch.Tensor) -> None:
        self.log.append("release")
        super().release(buffer)


def test_run_uploads_then_waits_for_the_queue_before_the_buffer_is_reused() -> None:
    log: list[str] = []
    staging = ImageStaging(
        torch.device("cpu"), pool=RecordingPool(log), queue_factory=lambda: RecordingQueue(log)
    )
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)

    def step(uploaded: torch.Tensor) -> torch.Tensor:
        log.append("step")
        assert uploaded.dtype == torch.uint8
        assert uploaded.shape == (2, 3, 3)
        return uploaded.float()

    result = staging.run(pixels, step)
    assert log == ["acquire", "activate", "step", "synchronize", "release"]
    assert torch.equal(result, torch.from_numpy(pixels).float())
    # The result does not share the buffer, which the next upload overwrites.
    staging.run(np.zeros_like(pixels), lambda uploaded: uploaded)
    assert torch.equal(result, torch.from_numpy(pixels).float())


def test_run_waits_and_returns_the_buffer_when_the_step_fails() -> None:
    log: list[str] = []
    staging = ImageStaging(
        torch.device("cpu"), pool=RecordingPool(log), queue_factory=lambda: RecordingQueue(log)
    )

    def failing(uploaded: torch.Tensor) -> None:
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        staging.run(np.zeros((4, 4, 3), np.uint8), failing)
    assert log[-2:] == ["synchronize", "release"]


def test_each_thread_gets_its_own_queue() -> None:
    made: list[RecordingQueue] = []

    def factory() -> RecordingQueue:
        made.append(RecordingQueue([]))
        return made[-1]

    staging = ImageStaging(torch.device("cpu"), queue_factory=factory)
    pixels = np.zeros((2, 2, 3), np.uint8)
    staging.run(pixels, lambda uploaded: uploaded)
    staging.run(pixels, lambda uploaded: uploaded)
    worker = threading.Thread(target=staging.run, args=(pixels, lambda uploaded: uploaded))
    worker.start()
    worker.join()
    assert len(made) == 2
    assert made[0].thread != made[1].thread


def test_a_cuda_staging_pins_its_buffers() -> None:
    staging = ImageStaging(torch.device("cuda", 0), queue_factory=lambda: RecordingQueue([]))
    assert staging.pool.pin is True
    assert ImageStaging(torch.device("cpu")).pool.pin is False


class FakeCudaTensor:
    device = torch.device("cuda", 1)

    def __init__(self) -> None:
        self.streams: list[object] = []

    def record_stream(self, stream: object) -> None:
        self.streams.append(stream)


def test_claim_marks_cuda_tensors_for_the_current_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[torch.device] = []

    def current_stream(device: torch.device) -> str:
        asked.append(device)
        return "encoder stream"

    monkeypatch.setattr(staging_module.torch.cuda, "current_stream", current_stream)
    cuda_tensor = FakeCudaTensor()
    claim_for_current_stream([cuda_tensor, torch.zeros(2)])  # type: ignore[list-item]
    assert cuda_tensor.streams == ["encoder stream"]
    assert asked == [torch.device("cuda", 1)]


@pytest.mark.parametrize(
    ("choice", "device", "device_input", "expected"),
    [
        ("auto", "cuda:0", True, "device"),
        ("auto", "cpu", True, "cpu"),
        ("cpu", "cuda:0", True, "cpu"),
        ("device", "cpu", True, "device"),
        ("device", "cuda:0", False, "cpu"),
        ("auto", "cuda:0", False, "cpu"),
    ],
)
def test_preprocess_location(choice: str, device: str, device_input: bool, expected: str) -> None:
    location = preprocess_location(
        choice,  # type: ignore[arg-type]
        torch.device(device),
        takes_device_input=device_input,
    )
    assert location == expected
