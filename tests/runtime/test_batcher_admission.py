"""Admission per request (issue 18): the queue's limit is checked once per request, so a request's
own items never refuse each other; reserved places count against the limit until used or given
back."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from imgembed.errors import QueueFullError, ServiceUnavailableError
from imgembed.runtime.batcher import BatchStats, DynamicBatcher
from imgembed.server.errors import http_status
from imgembed.settings import BatchingSettings

FAR = 1e12
"""A deadline that never passes."""

TEXTS = 256
"""IMGEMBED_MAX_TEXTS' default, four times the default queue of 64."""


class FakeModel:
    """Doubles numbers and records every batch; a gate holds it while requests queue up."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.entered.set()
        self.gate.wait(timeout=10)
        self.batches.append(list(items))
        return [item * 2 for item in items]


def make_batcher(model: FakeModel, **settings: float) -> tuple[DynamicBatcher, list[BatchStats]]:
    stats: list[BatchStats] = []
    batcher = DynamicBatcher(
        "fake",
        model,
        ThreadPoolExecutor(max_workers=1),
        BatchingSettings(**settings),  # type: ignore[arg-type]
        on_batch=stats.append,
    )
    batcher.start()
    return batcher, stats


async def hold_first_batch(model: FakeModel, batcher: DynamicBatcher) -> asyncio.Task:
    """Submits one item and waits until the model is busy with it, gate closed."""
    model.gate.clear()
    first = asyncio.create_task(batcher.submit(0, deadline=FAR))
    await asyncio.to_thread(model.entered.wait, 10)
    return first


def test_one_request_of_256_items_is_admitted_whole_by_a_queue_of_64() -> None:
    async def scenario() -> None:
        model = FakeModel()
        batcher, stats = make_batcher(model, max_batch_size=16, max_queue_size=64)
        first = await hold_first_batch(model, batcher)
        request = asyncio.create_task(batcher.submit_all(list(range(1, TEXTS + 1)), deadline=FAR))
        await asyncio.sleep(0.02)
        assert batcher.queued == TEXTS
        with pytest.raises(QueueFullError, match="limit") as caught:
            await batcher.submit(1, deadline=FAR)  # another request: the queue is full
        assert http_status(caught.value) == 429
        model.gate.set()
        assert await first == 0
        assert await request == [2 * n for n in range(1, TEXTS + 1)]
        await batcher.close()
        assert sum(len(batch) for batch in model.batches) == TEXTS + 1
        assert max(len(batch) for batch in model.batches) == 16
        assert batcher.waiting == 0
        assert sum(batch.size for batch in stats) == TEXTS + 1

    asyncio.run(scenario())


def test_items_submitted_one_by_one_would_refuse_each_other() -> None:
    """What the engine did before: 256 separate submissions into a queue of 64 refuse 192."""

    async def scenario() -> None:
        model = FakeModel()
        batcher, _ = make_batcher(model, max_batch_size=16, max_queue_size=64)
        first = await hold_first_batch(model, batcher)
        tasks = [asyncio.create_task(batcher.submit(n, deadline=FAR)) for n in range(1, TEXTS + 1)]
        await asyncio.sleep(0.02)
        model.gate.set()
        outcomes = await asyncio.gather(first, *tasks, return_exceptions=True)
        await batcher.close()
        refused = [outcome for outcome in outcomes if isinstance(outcome, QueueFullError)]
        assert len(refused) == TEXTS - 64

    asyncio.run(scenario())


def test_reserved_places_count_until_used_or_given_back() -> None:
    async def scenario() -> None:
        model = FakeModel()
        batcher, _ = make_batcher(model, max_batch_size=1, max_queue_size=3)
        first = await hold_first_batch(model, batcher)
        with batcher.reserve(5) as admission:  # an empty queue admits a request of any size
            assert (batcher.waiting, admission.places) == (5, 5)
            with pytest.raises(QueueFullError):
                batcher.reserve(1)
            queued = asyncio.create_task(admission.submit(7, deadline=FAR))
            await asyncio.sleep(0.01)
            assert (batcher.queued, batcher.waiting, admission.places) == (1, 5, 4)
            admission.release(2)  # two images failed to decode, say
            assert batcher.waiting == 3
        assert batcher.waiting == 1, "leaving the block gives back the places not used"
        with batcher.reserve(1):  # 1 waiting < 3: admitted
            pass
        model.gate.set()
        assert await asyncio.gather(first, queued) == [0, 14]
        await batcher.close()
        assert batcher.waiting == 0

    asyncio.run(scenario())


def test_a_request_never_submits_more_than_it_reserved() -> None:
    async def scenario() -> None:
        batcher, _ = make_batcher(FakeModel(), max_batch_size=4)
        with pytest.raises(ValueError, match="at least 1 place, got 0"):
            batcher.reserve(0)
        with batcher.reserve(1) as admission:
            assert await admission.submit(3, deadline=FAR) == 6
            with pytest.raises(RuntimeError, match="reserve one place per item"):
                await admission.submit(4, deadline=FAR)
        with (
            batcher.reserve(1) as admission,
            pytest.raises(RuntimeError, match="2 items for 1 reserved places"),
        ):
            await admission.submit_all([1, 2], deadline=FAR)
        assert await batcher.submit_all([], deadline=FAR) == []
        await batcher.close()
        with pytest.raises(ServiceUnavailableError, match="not accepting work"):
            batcher.reserve(1)
        assert batcher.waiting == 0

    asyncio.run(scenario())


def test_a_cancelled_request_withdraws_its_items_and_places() -> None:
    async def scenario() -> None:
        model = FakeModel()
        batcher, _ = make_batcher(model, max_batch_size=2, max_queue_size=2)
        first = await hold_first_batch(model, batcher)
        request = asyncio.create_task(batcher.submit_all([5, 6, 7], deadline=FAR))
        await asyncio.sleep(0.01)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        model.gate.set()
        assert await first == 0
        assert await batcher.submit(1, deadline=FAR) == 2
        await batcher.close()
        assert all(item not in batch for batch in model.batches for item in (5, 6, 7))
        assert batcher.waiting == 0

    asyncio.run(scenario())
