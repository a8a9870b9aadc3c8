"""The dynamic batcher with a fake model: batching, isolation, splitting, limits, deadlines.

No timing assertions: a gate holds the first batch so that later items queue up deterministically.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from imgembed.errors import (
    DeadlineExceededError,
    QueueFullError,
    ResourceExhaustedError,
    ServiceUnavailableError,
)
from imgembed.runtime.batcher import BatchStats, DynamicBatcher
from imgembed.server.errors import http_status
from imgembed.settings import BatchingSettings

FAR = 1e12
"""A deadline that never passes."""


class FakeModel:
    """Doubles numbers; records every batch; can be held at a gate, fail, or run out of memory."""

    def __init__(self, *, out_of_memory_above: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.out_of_memory_above = out_of_memory_above

    def __call__(self, items: list[int]) -> list[int]:
        self.entered.set()
        self.gate.wait(timeout=10)
        self.batches.append(list(items))
        if any(item < 0 for item in items):
            raise ValueError(f"negative input in {items}")
        if self.out_of_memory_above is not None and len(items) > self.out_of_memory_above:
            raise MemoryError("fake device out of memory")
        if 999 in items:
            raise MemoryError("fake device out of memory")
        return [item * 2 for item in items]


def make_batcher(
    model: FakeModel, item_size: Callable[[int], int] | None = None, **settings: float
) -> tuple[DynamicBatcher, list[BatchStats]]:
    stats: list[BatchStats] = []
    batcher = DynamicBatcher(
        "fake",
        model,
        ThreadPoolExecutor(max_workers=1),
        BatchingSettings(**settings),  # type: ignore[arg-type]
        on_batch=stats.append,
        item_size=item_size,
    )
    batcher.start()
    return batcher, stats


async def hold_first_batch(model: FakeModel, batcher: DynamicBatcher) -> asyncio.Task:
    """Submits one item and waits until the model is busy with it, gate closed."""
    model.gate.clear()
    first = asyncio.create_task(batcher.submit(0, deadline=FAR))
    await asyncio.to_thread(model.entered.wait, 10)
    return first


def test_requests_queued_behind_a_busy_model_form_full_batches() -> None:
    async def scenario() -> None:
        model = FakeModel()
        batcher, stats = make_batcher(model, max_batch_size=4, max_queue_delay_ms=50)
        first = await hold_first_batch(model, batcher)
        others = [asyncio.create_task(batcher.submit(n, deadline=FAR)) for n in range(1, 9)]
        await asyncio.sleep(0.05)
        model.gate.set()
        results = await asyncio.gather(first, *others)
        await batcher.close()
        assert results == [n * 2 for n in range(9)]
        assert model.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
        assert [batch.size for batch in stats] == [1, 4, 4]

    asyncio.run(scenario())


def test_batch_size_one_turns_batching_off() -> None:
    async def scenario() -> None:
        model = FakeModel()
        batcher, _ = make_batcher(model, max_batch_size=1)
        first = await hold_first_batch(model, batcher)
        others = [asyncio.create_task(batcher.submit(n, deadline=FAR)) for n in (1, 2)]
        await asyncio.sleep(0.02)
        model.gate.set()
        await asyncio.gather(first, *others)
        await batcher.close()
        assert model.batches == [[0], [1], [2]]

    asyncio.run(scenario())


def test_one_bad_item_never_fails_its_neighbours() -> None:
    async def scenario() -> None:
        model = FakeModel()
        batcher, _ = make_batcher(model, max_batch_size=4, max_queue_delay_ms=50)
        first = await hold_first_batch(model, batcher)
        tasks = [asyncio.create_task(batcher.submit(n, deadline=FAR)) for n in (1, -5, 3)]
        await asyncio.sleep(0.02)
        model.gate.set()
        outcomes = await asyncio.gather(first, *tasks, return_exceptions=True)
        await batcher.close()
        assert outcomes[0] == 0
        assert outcomes[1] == 2
        assert isinstance(outcomes[2], ValueError)
        assert outcomes[3] == 6
        assert [1, -5, 3] in model.batches  # tried together first, then each alone

    asyncio.run(scenario())


def test_out_of_memory_splits_the_batch_and_reports_only_what_never_fits() -> None:
    async def scenario() -> None:
        model = FakeModel(out_of_memory_above=1)
        batcher, _ = make_batcher(model, max_batch_size=4, max_queue_delay_ms=50)
        first = await hold_first_batch(model, batcher)
        tasks = [asyncio.create_task(batcher.submit(n, deadline=FAR)) for n in (1, 999, 3, 4)]
        await asyncio.sleep(0.02)
        model.gate.set()
        outcomes = await asyncio.gather(first, *tasks, return_exceptions=True)
        await batcher.close()
        assert outcomes[:2] == [0, 2]
        assert isinstance(outcomes[2], ResourceExhaustedError)
        assert http_status(outcomes[2]) == 507
        assert "ran out of memory on a single request" in outcomes[2].message
        assert outcomes[3:] == [6, 8]
        assert [1, 999, 3, 4] in model.batches
        assert [1, 999] in model.batches
        assert [3, 4] in model.batches

    asyncio.run(scenario())


def test_a_full_queue_refuses_with_429_instead_of_growing() -> None:
    async def scenario() -> None:
        model = FakeModel()
        batcher, _ = make_batcher(model, max_batch_size=1, max_queue_size=2)
        first = await hold_first_batch(model, batcher)
        queued = [asyncio.create_task(batcher.submit(n, deadline=FAR)) for n in (1, 2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError, match="limit") as caught:
            await batcher.submit(3, deadline=FAR)
        assert http_status(caught.value) == 429
        model.gate.set()
        assert await asyncio.gather(first, *queued) == [0, 2, 4]
        await batcher.close()
        assert [3] not in model.batches

    asyncio.run(scenario())


def test_admission_counts_requests_still_decoding_against_the_limit() -> None:
    async def scenario() -> None:
        model = FakeModel()
        batcher, _ = make_batcher(model, max_batch_size=1, max_queue_size=2)
        first = await hold_first_batch(model, batcher)
        batcher.refuse_if_full(waiting_elsewhere=1)  # 0 queued + 1 decoding < 2: admitted
        queued = asyncio.create_task(batcher.submit(1, deadline=FAR))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError, match="limit") as caught:
            batcher.refuse_if_full(waiting_elsewhere=1)  # 1 queued + 1 decoding: full
        assert http_status(caught.value) == 429
        model.gate.set()
        assert await asyncio.gather(first, queued) == [0, 2]
        await batcher.close()

    asyncio.run(scenario())


def test_expired_work_is_dropped_not_computed() -> None:
    async def scenario() -> None:
        model = FakeModel()
        batcher, stats = make_batcher(model, max_batch_size=4)
        first = await hold_first_batch(model, batcher)
        late = asyncio.create_task(batcher.submit(7, deadline=time.monotonic() + 0.01))
        await asyncio.sleep(0.05)
        model.gate.set()
        await first
        with pytest.raises(DeadlineExceededError, match="deadline") as caught:
            await late
        assert http_status(caught.value) == 504
        await batcher.close()
        assert all(7 not in batch for batch in model.batches)
        assert stats[-1].dropped == 1

    asyncio.run(scenario())


def test_work_of_a_caller_that_gave_up_is_dropped() -> None:
    async def scenario() -> None:
        model = FakeModel()
        batcher, _ = make_batcher(model, max_batch_size=4)
        first = await hold_first_batch(model, batcher)
        abandoned = asyncio.create_task(batcher.submit(5, deadline=FAR))
        kept = asyncio.create_task(batcher.submit(6, deadline=FAR))
        await asyncio.sleep(0.01)
        abandoned.cancel()
        model.gate.set()
        assert await first == 0
        assert await kept == 12
        await batcher.close()
        assert all(5 not in batch for batch in model.batches)

    asyncio.run(scenario())


def test_close_finishes_queued_work_then_refuses_new_work() -> None:
    async def scenario() -> None:
        model = FakeModel()
        batcher, _ = make_batcher(model, max_batch_size=2)
        first = await hold_first_batch(model, batcher)
        queued = asyncio.create_task(batcher.submit(1, deadline=FAR))
        await asyncio.sleep(0.01)
        closing = asyncio.create_task(batcher.close())
        await asyncio.sleep(0.01)
        model.gate.set()
        await closing
        assert await first == 0
        assert await queued == 2
        with pytest.raises(ServiceUnavailableError, match="not accepting work"):
            await batcher.submit(2, deadline=FAR)

    asyncio.run(scenario())


def test_sized_items_fill_a_batch_up_to_its_units_and_a_large_item_runs_alone() -> None:
    """With ``item_size`` (prompts per decode request), ``max_batch_size`` counts units: an item
    that would overflow the batch waits first in line for the next one, never split or skipped."""

    async def scenario() -> None:
        model = FakeModel()
        batcher, stats = make_batcher(
            model, item_size=lambda item: item, max_batch_size=10, max_queue_delay_ms=50
        )
        first = await hold_first_batch(model, batcher)
        sizes = [3, 4, 5, 2, 12, 1]
        others = [asyncio.create_task(batcher.submit(n, deadline=FAR)) for n in sizes]
        await asyncio.sleep(0.05)
        assert batcher.queued == len(sizes)
        model.gate.set()
        results = await asyncio.gather(first, *others)
        await batcher.close()
        assert results == [0] + [n * 2 for n in sizes]
        assert model.batches == [[0], [3, 4], [5, 2], [12], [1]]
        assert all(sum(batch) <= 10 for batch in model.batches if len(batch) > 1)
        assert [s.size for s in stats] == [1, 2, 2, 1, 1]

    asyncio.run(scenario())
