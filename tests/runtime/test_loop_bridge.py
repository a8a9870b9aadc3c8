"""A worker thread waiting on the event loop's coroutines, and stopping when its request is cancelled."""

from __future__ import annotations

import asyncio

import pytest

from imgembed.runtime.loop_bridge import LoopBridge, PipelineCancelledError


def test_a_worker_thread_gets_results_and_errors_of_coroutines_on_the_loop() -> None:
    async def double(value: int) -> int:
        await asyncio.sleep(0)
        return value * 2

    async def fail() -> None:
        raise ValueError("bad prompt")

    def pipeline(bridge: LoopBridge) -> list[int]:
        results = [bridge.call(double(value)) for value in range(3)]
        with pytest.raises(ValueError, match="bad prompt"):
            bridge.call(fail())
        return results

    async def scenario() -> list[int]:
        bridge = LoopBridge(asyncio.get_running_loop())
        return await asyncio.to_thread(pipeline, bridge)

    assert asyncio.run(scenario()) == [0, 2, 4]


def test_cancelling_stops_the_waiting_call_and_refuses_later_ones() -> None:
    async def scenario() -> tuple[bool, list[str]]:
        loop = asyncio.get_running_loop()
        bridge = LoopBridge(loop)
        started = asyncio.Event()
        coroutine_cancelled = asyncio.Event()
        ran_after_cancel: list[str] = []

        async def wait_forever() -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                coroutine_cancelled.set()
                raise

        async def must_not_run() -> None:
            ran_after_cancel.append("ran")

        def pipeline() -> list[str]:
            outcomes = []
            for coroutine in (wait_forever(), must_not_run()):
                try:
                    bridge.call(coroutine)
                except PipelineCancelledError:
                    outcomes.append("cancelled")
            return outcomes

        worker = loop.run_in_executor(None, pipeline)
        await started.wait()
        bridge.cancel()
        outcomes = await worker
        await asyncio.wait_for(coroutine_cancelled.wait(), timeout=10)
        assert not ran_after_cancel
        return coroutine_cancelled.is_set(), outcomes

    cancelled, outcomes = asyncio.run(scenario())
    assert cancelled
    assert outcomes == ["cancelled", "cancelled"]
