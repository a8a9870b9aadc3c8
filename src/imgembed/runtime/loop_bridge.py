"""Lets synchronous code on a worker thread wait on the event loop's coroutines.

Long synchronous pipelines (segment everything) run on a worker thread so that their CPU steps
never hold the event loop or the model's device thread; their device steps are coroutines that go
through the dynamic batchers on the loop. :class:`LoopBridge` runs those coroutines from the
worker thread and, when the request that owns the pipeline is cancelled (its client left), cancels
what is waiting and makes every later call fail, so the pipeline stops at its next device step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

ResultT = TypeVar("ResultT")


class PipelineCancelledError(concurrent.futures.CancelledError):
    """The request that owns a pipeline was cancelled; raised in the pipeline's thread."""


class LoopBridge:
    """Runs coroutines on one event loop for one worker thread.

    Args:
        loop: The running event loop that owns the batchers.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._waiting: set[concurrent.futures.Future[Any]] = set()
        self._cancelled = False

    def call(self, coroutine: Coroutine[Any, Any, ResultT]) -> ResultT:
        """Runs ``coroutine`` on the loop and blocks this (worker) thread until it is done.

        Raises:
            PipelineCancelledError: :meth:`cancel` was called before or while it ran.
            Exception: Whatever the coroutine raised.
        """
        with self._lock:
            if self._cancelled:
                coroutine.close()
                raise PipelineCancelledError("the request was cancelled")
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
            self._waiting.add(future)
        try:
            return future.result()
        except concurrent.futures.CancelledError as error:
            raise PipelineCancelledError("the request was cancelled") from error
        finally:
            with self._lock:
                self._waiting.discard(future)

    def cancel(self) -> None:
        """Cancels the coroutine now waited on and refuses later calls (from the loop)."""
        with self._lock:
            self._cancelled = True
            for future in self._waiting:
                future.cancel()
