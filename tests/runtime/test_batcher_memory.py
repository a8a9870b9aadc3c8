"""A failed batch's memory is released before it is retried (issue 18, item 2).

A traceback keeps every frame of the failed forward pass alive with its activations; retrying
inside the ``except`` block, or chaining the error into each item's exception, would keep them for
the retry (whose halves then run out of memory too) or for as long as a request holds its error.
The fake batch function below allocates its "activations" two frames down, as a model's forward
pass does, and a weakref tells whether they are still alive. Garbage collection is off during
each scenario: the release must not depend on it.
"""

from __future__ import annotations

import asyncio
import gc
import traceback
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from imgembed.errors import ResourceExhaustedError
from imgembed.runtime.batcher import DynamicBatcher
from imgembed.runtime.memory import is_out_of_memory, release_frames
from imgembed.settings import BatchingSettings

FAR = 1e12


@pytest.fixture(autouse=True)
def _no_garbage_collection() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class LeakyModel:
    """Doubles numbers; each call allocates activations deep in its frames, then fails as told.

    Attributes:
        activations: A weakref to each call's activations, in call order.
        alive_at_call: Per call, how many earlier calls' activations were still alive.
        fail: ``items -> exception to raise`` (or ``None`` to answer).
    """

    def __init__(self, fail: Callable[[list[int]], Exception | None]) -> None:
        self.activations: list[weakref.ref[torch.Tensor]] = []
        self.alive_at_call: list[int] = []
        self.batches: list[list[int]] = []
        self.fail = fail

    def alive(self) -> int:
        return sum(ref() is not None for ref in self.activations)

    def __call__(self, items: list[int]) -> list[int]:
        self.alive_at_call.append(self.alive())
        self.batches.append(list(items))
        return self._forward(items)

    def _forward(self, items: list[int]) -> list[int]:
        hidden = torch.ones(len(items), 4096)  # [B,4096] the pass's activations
        self.activations.append(weakref.ref(hidden))
        return self._head(items, hidden)

    def _head(self, items: list[int], hidden: torch.Tensor) -> list[int]:
        error = self.fail(items)
        if error is not None:
            raise error
        return [item * 2 for item in items]


def out_of_memory_above(size: int) -> Callable[[list[int]], Exception | None]:
    def fail(items: list[int]) -> Exception | None:
        if len(items) > size:
            return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return None

    return fail


def run_batch(model: LeakyModel, items: list[int], on_out_of_memory: Callable[[], None]) -> list:
    """Submits ``items`` together into a batcher of ``model`` and returns each outcome."""

    async def scenario() -> list:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(
            "leaky",
            model,
            ThreadPoolExecutor(max_workers=1),
            BatchingSettings(max_batch_size=len(items), max_queue_delay_ms=200.0),
            on_out_of_memory=on_out_of_memory,
        )
        batcher.start()
        outcomes = await asyncio.gather(
            *(batcher.submit(item, deadline=FAR) for item in items), return_exceptions=True
        )
        await batcher.close()
        return outcomes

    return asyncio.run(scenario())


def test_an_out_of_memory_batch_is_released_before_its_halves_run() -> None:
    model = LeakyModel(out_of_memory_above(1))
    alive_when_freeing: list[int] = []
    outcomes = run_batch(model, [1, 2, 3, 4], lambda: alive_when_freeing.append(model.alive()))
    assert outcomes == [2, 4, 6, 8]
    assert model.batches == [[1, 2, 3, 4], [1, 2], [1], [2], [3, 4], [3], [4]]
    assert alive_when_freeing == [0, 0, 0], "the device cache is freed after the frames"
    assert model.alive_at_call == [0] * len(model.batches), "no retry runs beside a failed batch"
    assert model.alive() == 0


def test_an_item_too_big_alone_keeps_no_activations_in_its_error() -> None:
    model = LeakyModel(out_of_memory_above(0))
    outcomes = run_batch(model, [1, 2], lambda: None)
    assert all(isinstance(outcome, ResourceExhaustedError) for outcome in outcomes)
    assert model.alive_at_call == [0, 0, 0]
    assert model.alive() == 0, "the chained CUDA error no longer holds the pass's frames"
    cause = outcomes[0].__cause__
    assert isinstance(cause, torch.OutOfMemoryError)
    formatted = "".join(traceback.format_exception(cause))
    assert "_head" in formatted, "the traceback still says where it failed"


def test_a_failed_batch_is_released_before_each_item_is_retried_alone() -> None:
    def fail(items: list[int]) -> Exception | None:
        return ValueError(f"bad input in {items}") if -1 in items else None

    model = LeakyModel(fail)
    outcomes = run_batch(model, [1, -1, 3], lambda: pytest.fail("not out of memory"))
    assert outcomes[0] == 2
    assert isinstance(outcomes[1], ValueError)
    assert outcomes[2] == 6
    assert model.alive_at_call == [0, 0, 0, 0]
    assert model.alive() == 0


def test_release_frames_clears_causes_and_contexts_and_keeps_the_text() -> None:
    def inner() -> None:
        kept = torch.ones(8)
        refs.append(weakref.ref(kept))
        raise KeyError("first")

    def outer() -> None:
        try:
            inner()
        except KeyError as first:
            raise RuntimeError("CUDA error: out of memory") from first

    refs: list[weakref.ref[torch.Tensor]] = []
    try:
        outer()
    except RuntimeError as error:
        caught = release_frames(error)
    assert refs[0]() is None
    assert is_out_of_memory(caught)
    formatted = "".join(traceback.format_exception(caught))
    assert "KeyError: 'first'" in formatted
    assert "in inner" in formatted
