"""Work streams (issue 18, item 7), on the CPU with CUDA's streams and events faked
(tests/support/fake_cuda.py): the decoder's stream has the device's greatest priority, work runs
inside its stream, a consumer stream waits on the producer's event and keeps the tensors' memory,
a timed block reads its elapsed time only after its end event completed; on the CPU every one is
a no-op and timing is wall time."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fake_cuda import GREATEST_PRIORITY, TICK_MS, FakeCuda, install, on_cuda

from imgembed.runtime import streams as streams_module
from imgembed.runtime.batcher import BatchStats, DynamicBatcher
from imgembed.runtime.streams import WorkStream, ready_on_current_stream
from imgembed.settings import BatchingSettings

CUDA = torch.device("cuda", 0)


@pytest.fixture
def cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    return install(monkeypatch)


def test_priorities_normal_is_cudas_default_and_high_the_devices_greatest(cuda: FakeCuda) -> None:
    normal, high = WorkStream(CUDA, "normal"), WorkStream(CUDA, "high")
    assert (normal.stream.priority, high.stream.priority) == (0, GREATEST_PRIORITY)
    assert normal.stream is not high.stream
    assert cuda.streams() == [normal.stream, high.stream]


def test_work_inside_active_goes_to_the_stream_and_the_thread_gets_its_stream_back(
    cuda: FakeCuda,
) -> None:
    work = WorkStream(CUDA, "high")
    with work.active():
        assert cuda.current() is work.stream
    assert cuda.current() is cuda.default


def test_timed_synchronises_the_end_event_before_reading_the_elapsed_time(cuda: FakeCuda) -> None:
    work = WorkStream(CUDA)
    with work.active(), work.timed() as timing:
        inside = len(cuda.log)
    records = cuda.entries("record")
    assert len(records) == 2
    assert all(stream is work.stream for _, _, stream in records)
    start, end = records[0][1], records[1][1]
    assert cuda.log.index(records[0]) < inside, "start recorded before the block's work"
    order = [entry[0] for entry in cuda.log[inside:]]
    assert order[:3] == ["record", "synchronize", "elapsed"], order
    assert cuda.entries("synchronize") == [("synchronize", end)]
    assert cuda.entries("elapsed") == [("elapsed", start, end)]
    assert timing.seconds == pytest.approx(TICK_MS / 1000)
    assert timing.ready is end
    assert end.completed


def test_timed_waits_for_the_device_when_the_block_raises(cuda: FakeCuda) -> None:
    work = WorkStream(CUDA)
    with pytest.raises(ValueError, match="bad batch"), work.timed():
        raise ValueError("bad batch")
    assert len(cuda.entries("synchronize")) == 1, "a failed batch's work is done before its error"


def test_publish_and_adopt_order_the_streams_and_keep_the_memory(cuda: FakeCuda) -> None:
    encoder, decoder = WorkStream(CUDA), WorkStream(CUDA, "high")
    on_device, on_host = on_cuda(torch.zeros(2)), torch.zeros(2)
    with encoder.active():
        ready = encoder.publish([on_device, on_host])
    assert cuda.entries("record") == [("record", ready, encoder.stream)]
    assert cuda.entries("record_stream") == [("record_stream", on_device, cuda.default)], (
        "published tensors are kept for the default stream's readers; host tensors need nothing"
    )
    before = len(cuda.log)
    decoder.adopt([on_device, on_host], ready)
    assert cuda.log[before:] == [
        ("wait", decoder.stream, ready),
        ("record_stream", on_device, decoder.stream),
    ]


def test_adopt_without_an_event_only_keeps_the_memory(cuda: FakeCuda) -> None:
    decoder = WorkStream(CUDA, "high")
    tensor = on_cuda(torch.zeros(1))
    decoder.adopt([tensor])
    assert cuda.entries("wait") == []
    assert cuda.entries("record_stream") == [("record_stream", tensor, decoder.stream)]


def test_on_the_cpu_nothing_touches_cuda_and_timing_is_wall_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("CUDA touched on the CPU")

    for name in ("Stream", "Event", "stream", "device", "default_stream"):
        monkeypatch.setattr(torch.cuda, name, refuse)
    clock = iter([10.0, 12.5])
    monkeypatch.setattr(streams_module.time, "perf_counter", lambda: next(clock))
    work = WorkStream(torch.device("cpu"), "high")
    tensor = torch.zeros(1)
    with work.active(), work.timed() as timing:
        assert work.publish([tensor]) is None
        work.adopt([tensor], ready=object())
    assert not work.on_cuda
    assert (timing.seconds, timing.ready) == (2.5, None)


def _run_batcher(stream: WorkStream | None, run_batch, stats: list[BatchStats]) -> list[int]:  # type: ignore[no-untyped-def]
    async def scenario() -> list[int]:
        with ThreadPoolExecutor(1) as executor:
            batcher: DynamicBatcher[int, int] = DynamicBatcher(
                "model",
                run_batch,
                executor,
                BatchingSettings(max_batch_size=4, max_queue_delay_ms=50, max_queue_size=8),
                on_batch=stats.append,
                stream=stream,
            )
            batcher.start()
            try:
                return await batcher.submit_all([1, 2, 3], deadline=time.monotonic() + 30)
            finally:
                await batcher.close()

    return asyncio.run(scenario())


def test_a_batch_runs_inside_its_stream_and_is_timed_in_device_time(cuda: FakeCuda) -> None:
    work = WorkStream(CUDA, "high")
    seen: list[object] = []

    def run_batch(items: list[int]) -> list[int]:
        seen.append(cuda.current())
        return [item * 2 for item in items]

    stats: list[BatchStats] = []
    assert _run_batcher(work, run_batch, stats) == [2, 4, 6]
    assert seen == [work.stream], "the batch function ran on the stream, on the worker thread"
    (batch,) = stats
    assert batch.size == 3
    assert batch.compute_seconds == pytest.approx(TICK_MS / 1000), "elapsed between the events"
    (synchronised,) = cuda.entries("synchronize")
    assert synchronised[1].completed


def test_a_batchers_default_stream_is_the_cpus_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 100.75])
    monkeypatch.setattr(streams_module.time, "perf_counter", lambda: next(clock))
    stats: list[BatchStats] = []
    assert _run_batcher(None, lambda items: [item + 1 for item in items], stats) == [2, 3, 4]
    assert stats[0].compute_seconds == 0.75


def test_ready_on_current_stream_records_on_the_threads_stream_for_device_tensors(
    cuda: FakeCuda,
) -> None:
    assert ready_on_current_stream([torch.zeros(1)]) is None, "host tensors: nothing to wait for"
    work = WorkStream(CUDA)
    with work.active():
        event = ready_on_current_stream([torch.zeros(1), on_cuda(torch.zeros(1))])
    assert cuda.entries("record") == [("record", event, work.stream)]
