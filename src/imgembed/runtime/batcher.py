"""Dynamic batching: many concurrent requests, one forward pass.

A :class:`DynamicBatcher` owns a bounded queue and one worker task. A request is admitted once,
for all its items (:meth:`DynamicBatcher.reserve`): the queue's limit is checked when the request
reserves its places, never item by item, so a request's own items (the texts of one text request,
the images of one image batch, the prompt groups of one segment request) never refuse each other
as if they were separate clients. The worker takes the first
waiting item, collects more until ``max_batch_size`` items (or units of work, with ``item_size``)
are in hand or ``max_queue_delay_ms`` has passed, drops items whose caller gave up (cancelled)
or whose deadline passed, and runs the rest in one call on the model's own thread, so the event
loop and CPU stages go on meanwhile.

Failures stay with their items: if a batch raises, each item is retried alone so one bad item
never fails its neighbours; a device out-of-memory error splits the batch in halves and retries
(after the failed batch's frames are released and the device's cached memory freed), and only an
item that does not fit alone is answered with :class:`~imgembed.errors.ResourceExhaustedError`.

A batch runs on its model's :class:`~imgembed.runtime.streams.WorkStream` (its own CUDA stream on
a GPU) and is timed in device time there: the worker thread waits until the batch's device work
is done before its results are handed out, so a result is always computed, and the batch-time
metric measures the device's work, not the launch of its kernels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Generic, TypeVar

import torch

from imgembed.errors import (
    DeadlineExceededError,
    QueueFullError,
    ResourceExhaustedError,
    ServiceUnavailableError,
)
from imgembed.runtime.memory import is_out_of_memory, release_cached_device_memory, release_frames
from imgembed.runtime.streams import WorkStream
from imgembed.settings import BatchingSettings

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class BatchStats:
    """What one batch did, for metrics.

    Attributes:
        size: Items that ran.
        dropped: Items dropped before running (deadline passed or caller gone).
        queue_seconds: Per running item, the time from submission to the start of the batch.
        compute_seconds: Time of the batch's run, splits and retries included: device time on
            a CUDA stream (CUDA events), wall time on the CPU.
    """

    size: int
    dropped: int
    queue_seconds: list[float]
    compute_seconds: float


@dataclass
class _Pending(Generic[ItemT, ResultT]):
    item: ItemT
    deadline: float
    submitted: float
    future: asyncio.Future[ResultT] = field(repr=False)


class DynamicBatcher(Generic[ItemT, ResultT]):
    """Groups submitted items into batches for ``run_batch``.

    Args:
        name: Used in logs and error messages (the model name).
        run_batch: Runs a list of items, returns one result per item, in order. It runs on
            ``executor``, never on the event loop.
        executor: Where ``run_batch`` runs (the model's single device thread).
        settings: Batch size, queue delay and queue limit.
        on_batch: Called on the event loop after each batch, for metrics.
        item_size: Units of work in an item (prompts in a decoder request, say); a batch holds
            at most ``max_batch_size`` units, and an item larger than that runs alone. ``None``
            counts each item as one.
        on_out_of_memory: Called on the model's thread after a batch ran out of memory, before
            its halves are retried (frees the device's cached memory by default).
        stream: The device queue batches run on and are timed on; a CPU no-op stream (wall
            time) when ``None``.
    """

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[ItemT]], Sequence[ResultT]],
        executor: Executor,
        settings: BatchingSettings,
        on_batch: Callable[[BatchStats], None] | None = None,
        item_size: Callable[[ItemT], int] | None = None,
        on_out_of_memory: Callable[[], None] = release_cached_device_memory,
        stream: WorkStream | None = None,
    ) -> None:
        if settings.max_batch_size < 1 or settings.max_queue_size < 1:
            raise ValueError(
                f"batching settings for {name} must have max_batch_size >= 1 and "
                f"max_queue_size >= 1, got {settings}"
            )
        self.name = name
        self.settings = settings
        self._run_batch = run_batch
        self._executor = executor
        self._on_batch = on_batch
        self._item_size = item_size or (lambda _item: 1)
        self._on_out_of_memory = on_out_of_memory
        self._stream = stream or WorkStream(torch.device("cpu"))
        # Unbounded: admission (reserve) enforces max_queue_size per request, not per item.
        self._queue: asyncio.Queue[_Pending[ItemT, ResultT]] = asyncio.Queue()
        self._reserved = 0
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._running = 0
        self._held_over: _Pending[ItemT, ResultT] | None = None

    @property
    def queued(self) -> int:
        """Items waiting for a batch."""
        return self._queue.qsize() + (self._held_over is not None)

    @property
    def in_flight(self) -> int:
        """Items in the batch now running."""
        return self._running

    @property
    def waiting(self) -> int:
        """Items counted against ``max_queue_size``: queued, plus places reserved by admitted
        requests whose items are not queued yet (still decoding, say)."""
        return self.queued + self._reserved

    def refuse_if_full(self, waiting_elsewhere: int = 0) -> None:
        """Admission check before a request spends CPU on work the queue would refuse.

        Args:
            waiting_elsewhere: Requests admitted but not queued yet and not holding a reservation
                here, counted against the queue's limit.

        Raises:
            QueueFullError: :attr:`waiting` plus ``waiting_elsewhere`` reach ``max_queue_size``.
        """
        if self.waiting + waiting_elsewhere >= self.settings.max_queue_size:
            raise self._queue_full()

    def reserve(self, places: int, waiting_elsewhere: int = 0) -> Admission[ItemT, ResultT]:
        """Admits one request with ``places`` items: the queue's limit is checked once, here.

        The request is refused when the queue is already full; once admitted, all its items are
        queued however many they are, so the queue holds at most ``max_queue_size - 1`` items
        plus one request's. Use the result as a context manager: leaving the block gives back
        the places not used (an image that failed to decode, a request cancelled early).

        Args:
            places: Items the request will submit (at least 1).
            waiting_elsewhere: As in :meth:`refuse_if_full`.

        Returns:
            The request's admission; submit its items through it.

        Raises:
            ValueError: ``places`` is below 1.
            ServiceUnavailableError: The batcher is shutting down or not started.
            QueueFullError: The queue is full.
        """
        if places < 1:
            raise ValueError(
                f"{self.name}: a request reserves at least 1 place, got {places}; do not reserve "
                "for an empty request"
            )
        self._check_open()
        self.refuse_if_full(waiting_elsewhere)
        self._reserved += places
        return Admission(self, places)

    def _check_open(self) -> None:
        if self._closing or self._worker is None:
            raise ServiceUnavailableError(
                f"model {self.name} is not accepting work (shutting down or not started)"
            )

    def _queue_full(self) -> QueueFullError:
        return QueueFullError(
            f"model {self.name} has {self.settings.max_queue_size} requests waiting, its "
            "limit; retry after the Retry-After delay or send fewer requests at once",
        )

    def start(self) -> None:
        """Starts the worker task on the running event loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), name=f"batcher-{self.name}"
            )

    async def close(self) -> None:
        """Refuses new items, lets queued and running ones finish, then stops the worker."""
        self._closing = True
        if self._worker is None:
            return
        await self._queue.join()
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        self._worker = None

    async def submit(self, item: ItemT, *, deadline: float) -> ResultT:
        """Admits a request of one item, queues it and waits for its result.

        Args:
            item: The work.
            deadline: ``time.monotonic()`` value after which the item is dropped unrun.

        Raises:
            QueueFullError: The queue is full (see :meth:`reserve`).
            ServiceUnavailableError: The batcher is shutting down.
            DeadlineExceededError: The deadline passed before the item ran.
        """
        with self.reserve(1) as admission:
            return await admission.submit(item, deadline=deadline)

    async def submit_all(self, items: Sequence[ItemT], *, deadline: float) -> list[ResultT]:
        """Admits one request of ``items`` (one admission, whatever their number) and waits for
        all their results; see :meth:`Admission.submit_all`.

        Raises:
            QueueFullError: The queue is full (see :meth:`reserve`).
            ServiceUnavailableError: The batcher is shutting down.
            DeadlineExceededError: The deadline passed before an item ran.
        """
        if not items:
            return []
        with self.reserve(len(items)) as admission:
            return await admission.submit_all(items, deadline=deadline)

    def _give_back(self, places: int) -> None:
        self._reserved -= places

    async def _enqueue(self, item: ItemT, deadline: float) -> ResultT:
        """Queues an item whose place was reserved and waits for its result."""
        self._check_open()
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        pending = _Pending(item=item, deadline=deadline, submitted=time.monotonic(), future=future)
        self._queue.put_nowait(pending)  # unbounded: the place was reserved at admission
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        limit = self.settings.max_batch_size
        while True:
            first, self._held_over = self._held_over or await self._queue.get(), None
            batch, size = [first], self._item_size(first.item)
            batch_closes_at = loop.time() + self.settings.max_queue_delay_ms / 1000
            while size < limit:
                if self._queue.empty():
                    remaining = batch_closes_at - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        # Queue.get is cancellation-safe: a timed-out get leaves the item queued.
                        async with asyncio.timeout(remaining):
                            pending = await self._queue.get()
                    except TimeoutError:
                        break
                else:
                    pending = self._queue.get_nowait()
                pending_size = self._item_size(pending.item)
                if size + pending_size > limit:
                    self._held_over = pending  # first in line for the next batch
                    break
                batch.append(pending)
                size += pending_size
            try:
                await self._run(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _run(self, batch: list[_Pending[ItemT, ResultT]]) -> None:
        now = time.monotonic()
        live: list[_Pending[ItemT, ResultT]] = []
        for pending in batch:
            if pending.future.done():
                continue
            if now > pending.deadline:
                pending.future.set_exception(
                    DeadlineExceededError(
                        f"request waited {now - pending.submitted:.1f} s for model {self.name} "
                        "and passed its deadline before running; its work was dropped. Retry, "
                        "or raise the request timeout (IMGEMBED_REQUEST_TIMEOUT_S)"
                    )
                )
                continue
            live.append(pending)
        if live:
            self._running = len(live)
            started = time.monotonic()
            try:
                outcomes, compute_seconds = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._run_on_stream, [pending.item for pending in live]
                )
            finally:
                self._running = 0
            for pending, outcome in zip(live, outcomes, strict=True):
                if pending.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    pending.future.set_exception(outcome)
                else:
                    pending.future.set_result(outcome)
        else:
            started, compute_seconds = now, 0.0
        if self._on_batch is not None:
            self._on_batch(
                BatchStats(
                    size=len(live),
                    dropped=len(batch) - len(live),
                    queue_seconds=[started - pending.submitted for pending in live],
                    compute_seconds=compute_seconds,
                )
            )

    def _run_on_stream(self, items: list[ItemT]) -> tuple[list[ResultT | BaseException], float]:
        """Runs a batch on the stream (on the model's thread); its outcomes and device time.

        The timing waits for the batch's device work to finish (on CUDA): the results are
        computed before any caller gets them, whatever stream or thread reads them next.
        """
        with self._stream.active(), self._stream.timed() as timing:
            outcomes = self._run_isolated(items)
        return outcomes, timing.seconds

    def _run_isolated(self, items: list[ItemT]) -> list[ResultT | BaseException]:
        """Runs a batch; on failure, splits (out of memory) or isolates items (anything else).

        The retry never runs inside the ``except`` block that caught the failure, and the
        failure's frames are cleared first (:func:`release_frames`): a traceback keeps every
        frame of the failed forward pass alive, with its activations, and the halves of an
        out-of-memory batch would run out of memory too. After an out-of-memory error the
        device's cached memory is freed (``on_out_of_memory``) before the retry.
        """
        attempt = self._attempt(items)
        if not isinstance(attempt, _Failed):
            return attempt
        error = attempt.error
        del attempt
        if is_out_of_memory(error):
            self._on_out_of_memory()
            if len(items) == 1:
                return [self._too_big(error)]
            logger.warning("%s: batch of %d ran out of memory; splitting", self.name, len(items))
            del error
            middle = len(items) // 2
            return self._run_isolated(items[:middle]) + self._run_isolated(items[middle:])
        if len(items) == 1:
            return [error]
        logger.warning(
            "%s: batch of %d failed (%s); retrying each item alone", self.name, len(items), error
        )
        del error
        return [outcome for item in items for outcome in self._run_isolated([item])]

    def _attempt(self, items: list[ItemT]) -> list[ResultT] | _Failed:
        """One call of ``run_batch``; a failure comes back with its frames released."""
        try:
            results = list(self._run_batch(items))
        except Exception as error:  # noqa: BLE001 -- returned to the caller, never swallowed
            return _Failed(release_frames(error))
        if len(results) != len(items):
            raise RuntimeError(
                f"{self.name}: run_batch returned {len(results)} results for {len(items)} items; "
                "it must return exactly one result per item, in order"
            )
        return results

    def _too_big(self, error: BaseException) -> ResourceExhaustedError:
        exhausted = ResourceExhaustedError(
            f"model {self.name} ran out of memory on a single request ({error}); send a "
            "smaller input or run the model on a device with more memory"
        )
        exhausted.__cause__ = error  # frames already released: the chain holds no activations
        return exhausted


@dataclass(frozen=True)
class _Failed:
    """A batch's failure, kept apart from results (a result could itself be an exception)."""

    error: Exception


class Admission(Generic[ItemT, ResultT]):
    """One admitted request's reserved places in a :class:`DynamicBatcher`'s queue.

    Made by :meth:`DynamicBatcher.reserve`. Each :meth:`submit` uses one place; the places not
    used count against the queue's limit until they are given back (:meth:`release`, or leaving
    the ``with`` block).

    Args:
        batcher: The batcher the places are reserved in.
        places: Places reserved.
    """

    def __init__(self, batcher: DynamicBatcher[ItemT, ResultT], places: int) -> None:
        self._batcher = batcher
        self._places = places

    @property
    def places(self) -> int:
        """Reserved places not used yet."""
        return self._places

    async def submit(self, item: ItemT, *, deadline: float) -> ResultT:
        """Queues ``item`` in one of the reserved places and waits for its result.

        Args:
            item: The work.
            deadline: ``time.monotonic()`` value after which the item is dropped unrun.

        Raises:
            RuntimeError: Every reserved place is used (a bug in the caller: reserve one place
                per item).
            ServiceUnavailableError: The batcher is shutting down.
            DeadlineExceededError: The deadline passed before the item ran.
        """
        if self._places < 1:
            raise RuntimeError(
                f"{self._batcher.name}: a request submitted more items than the places it "
                "reserved; reserve one place per item"
            )
        self.release(1)
        return await self._batcher._enqueue(item, deadline)

    async def submit_all(self, items: Sequence[ItemT], *, deadline: float) -> list[ResultT]:
        """Queues every item at once (they batch with each other and with other requests') and
        waits for all; when one fails, those still waiting are withdrawn unrun and the error is
        raised.

        Args:
            items: The request's items, at most :attr:`places`.
            deadline: ``time.monotonic()`` value after which unstarted items are dropped.

        Returns:
            One result per item, in order.

        Raises:
            RuntimeError: More items than reserved places.
            ServiceUnavailableError: The batcher is shutting down.
            DeadlineExceededError: The deadline passed before an item ran.
        """
        if len(items) > self._places:
            raise RuntimeError(
                f"{self._batcher.name}: {len(items)} items for {self._places} reserved places; "
                "reserve one place per item"
            )
        tasks = [asyncio.ensure_future(self.submit(item, deadline=deadline)) for item in items]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def release(self, places: int | None = None) -> None:
        """Gives back ``places`` unused places (all of them when ``None``)."""
        count = self._places if places is None else min(places, self._places)
        self._places -= count
        self._batcher._give_back(count)

    def __enter__(self) -> Admission[ItemT, ResultT]:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
