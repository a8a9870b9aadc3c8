"""SAM 2's encoder and decoder on streams of their own (issue 18, item 7), through the engine with
fake models and CUDA's streams and events faked (tests/support/fake_cuda.py): the encoder's batch
runs on a normal-priority stream and publishes its features with an event; the decoder's batch
runs on the device's highest-priority stream, which waits on that event and keeps the features'
memory; every batch's time is the device time between its events, read after the end event
completed; and on the CPU the same requests touch no CUDA at all."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from engine_metrics import histogram_totals
from fake_cuda import GREATEST_PRIORITY, TICK_MS, FakeCuda, install, on_cuda
from fakes import (
    SAM2_MODEL,
    FakeServedSam2,
    fake_config,
    fake_engine,
    fake_sam2_features,
    fake_spec,
    served_fake,
)
from imagefactory import encode, gradient_rgb
from PIL import Image

from imgembed.engine import Engine, Sam2Service
from imgembed.engine import served as served_module
from imgembed.engine.feature_store import FeatureStore
from imgembed.models.sam2 import Sam2Features
from imgembed.models.sam2_decoder import Sam2MaskPrediction
from imgembed.pipelines.sam2_decode import DecodeJob
from imgembed.pipelines.sam2_segment import SegmentObject
from imgembed.preprocess.sam2_frame import FrameMapping
from imgembed.runtime.streams import StreamPriority, WorkStream
from imgembed.types import ImageBytes

PNG = encode(Image.fromarray(gradient_rgb(64, 48)), "PNG")
CLICK = [SegmentObject(points=np.array([[20.0, 10.0]]), labels=np.ones(1, np.int64))]


@pytest.fixture
def cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    """Fake CUDA, the served models' streams made for ``cuda:0``, and the fakes' passes logged
    (the encoder's features reported on the device)."""
    cuda = install(monkeypatch)

    def stream_on_cuda(device: torch.device, priority: StreamPriority = "normal") -> WorkStream:
        return WorkStream(torch.device("cuda", 0), priority)

    monkeypatch.setattr(served_module, "WorkStream", stream_on_cuda)
    encode_batch, decode_batch = FakeServedSam2.encode_batch, FakeServedSam2.decode_batch

    def logged_encode(self: FakeServedSam2, pixels: list[torch.Tensor]) -> list[Sam2Features]:
        cuda.log.append(("encode", cuda.current()))
        return [
            Sam2Features(*(on_cuda(tensor) for tensor in features.tensors))
            for features in encode_batch(self, pixels)
        ]

    def logged_decode(self: FakeServedSam2, jobs: list[DecodeJob]) -> list[Sam2MaskPrediction]:
        cuda.log.append(("decode", cuda.current(), [job.features for job in jobs]))
        return decode_batch(self, jobs)

    monkeypatch.setattr(FakeServedSam2, "encode_batch", logged_encode)
    monkeypatch.setattr(FakeServedSam2, "decode_batch", logged_decode)
    return cuda


def _compute_seconds(engine: Engine, model: str) -> tuple[float, float]:
    """Sum and count of a batcher's compute-time histogram, from the engine's metrics."""
    return histogram_totals(engine, "imgembed_compute_duration_seconds", model)


def test_the_decoder_runs_on_its_high_priority_stream_after_the_features_event(
    cuda: FakeCuda,
) -> None:
    async def scenario() -> dict[str, Any]:
        async with fake_engine(fake_config(fake_spec(SAM2_MODEL))) as engine:
            service = engine.service(Sam2Service)
            first = await service.segment(ImageBytes(PNG), CLICK)
            second = await service.segment(None, CLICK, image_id=first.image_id)
            served = served_fake(engine)
            return {
                "encoder": served.device_stream.stream,
                "decoder": served.decoder_stream.stream,
                "encoder_time": _compute_seconds(engine, SAM2_MODEL),
                "decoder_time": _compute_seconds(engine, SAM2_MODEL + "/decoder"),
                "hit": second.cache_hit,
            }

    found = asyncio.run(scenario())
    encoder, decoder = found["encoder"], found["decoder"]
    assert (encoder.priority, decoder.priority) == (0, GREATEST_PRIORITY)
    assert found["hit"]
    log = cuda.log
    (encoded,) = [i for i, entry in enumerate(log) if entry[0] == "encode"]
    assert log[encoded][1] is encoder, "the encoder's batch ran inside the encoder's stream"
    # The event published after the features were computed, on the encoder's stream.
    published = [
        (i, entry[1]) for i, entry in enumerate(log) if entry[:1] == ("record",) and i > encoded
    ]
    ready_at, ready = next((i, event) for i, event in published if not event.enable_timing)
    assert ready.stream is encoder
    decodes = [(i, entry) for i, entry in enumerate(log) if entry[0] == "decode"]
    assert len(decodes) == 2, "one decoder pass per request"
    for at, (_, stream, features) in decodes:
        assert stream is decoder, "the decoder's batch ran inside the decoder's stream"
        assert all(item.ready is ready for item in features), "the cached features carry it"
        waits = [i for i, entry in enumerate(log[:at]) if entry == ("wait", decoder, ready)]
        assert waits, "the decoder's stream waited on the features' event"
        assert waits[-1] > ready_at, "after the event was recorded"
        kept = {
            id(entry[1])
            for entry in log[ready_at:at]
            if entry[0] == "record_stream" and entry[2] is decoder
        }
        assert {id(tensor) for tensor in features[0].tensors} <= kept, "memory kept for it"
    assert found["encoder_time"] == pytest.approx((TICK_MS / 1000 * 2, 1)), (
        "one encoder batch: start, publish and end events, two ticks apart"
    )
    decoder_sum, decoder_batches = found["decoder_time"]
    assert decoder_batches == 2
    assert decoder_sum == pytest.approx(decoder_batches * 2 * TICK_MS / 1000)


def test_batch_timing_reads_every_elapsed_time_after_its_end_event_completed(
    cuda: FakeCuda,
) -> None:
    async def scenario() -> None:
        async with fake_engine(fake_config(fake_spec(SAM2_MODEL))) as engine:
            await engine.service(Sam2Service).segment(ImageBytes(PNG), CLICK)

    asyncio.run(scenario())
    elapsed = cuda.entries("elapsed")
    assert len(elapsed) == 2, "one encoder batch and one decoder batch"
    for entry in elapsed:
        end = entry[2]
        assert ("synchronize", end) in cuda.log[: cuda.log.index(entry)]


def test_an_encoder_batch_of_several_images_gives_each_its_own_storage_on_the_stream(
    cuda: FakeCuda,
) -> None:
    async def scenario() -> list[Sam2Features]:
        async with fake_engine(fake_config(fake_spec(SAM2_MODEL))) as engine:
            served = served_fake(engine)
            return await asyncio.get_running_loop().run_in_executor(
                served.device_executor, served.run_encoder, [torch.rand(3, 1024, 1024)] * 2
            )

    features = asyncio.run(scenario())
    for item in features:
        for tensor in item.tensors:
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    assert features[0].ready is features[1].ready is not None


def test_on_the_cpu_requests_touch_no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("CUDA touched on the CPU")

    for name in ("Stream", "Event", "stream", "device", "default_stream", "mem_get_info"):
        monkeypatch.setattr(torch.cuda, name, refuse)

    async def scenario() -> tuple[bool, float]:
        async with fake_engine(fake_config(fake_spec(SAM2_MODEL, warmup=True))) as engine:
            service = engine.service(Sam2Service)
            first = await service.segment(ImageBytes(PNG), CLICK)
            second = await service.segment(None, CLICK, image_id=first.image_id)
            served = served_fake(engine)
            assert not served.device_stream.on_cuda
            assert not served.decoder_stream.on_cuda
            return second.cache_hit, _compute_seconds(engine, SAM2_MODEL)[1]

    assert asyncio.run(scenario()) == (True, 1)


def test_features_the_store_copies_carry_an_event_of_the_copying_stream(cuda: FakeCuda) -> None:
    """Features that are views of a batch are copied by the store on the event loop's (default)
    stream, after that stream waited on the encoder's event; the decoder must wait for the copy,
    so the entry's event is recorded there after the copy, not the encoder's event."""
    batch = fake_sam2_features(torch.rand(2, 3, 1024, 1024))
    encoder_ready = object()
    view = Sam2Features(*(on_cuda(tensor[:1]) for tensor in batch.tensors), ready=encoder_ready)
    store = FeatureStore(SAM2_MODEL, 1 << 30)

    async def encode() -> tuple[Sam2Features, FrameMapping]:
        return view, FrameMapping.for_image(64, 64, 1024, "stretch")

    entry, hit = asyncio.run(store.get_or_encode("image", encode))
    assert not hit
    ready = entry.features.ready
    assert ready is not encoder_ready
    assert cuda.entries("record") == [("record", ready, cuda.default)]
    wait = ("wait", cuda.default, encoder_ready)
    assert cuda.log.index(wait) < cuda.log.index(("record", ready, cuda.default)), (
        "the copying stream waited on the encoder's event before copying"
    )
    for tensor in entry.features.tensors:
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


def test_features_of_their_own_pass_through_the_store_with_the_encoders_event(
    cuda: FakeCuda,
) -> None:
    owned = Sam2Features(
        *(on_cuda(tensor) for tensor in fake_sam2_features(torch.rand(1, 3, 1024, 1024)).tensors),
        ready=object(),
    )
    store = FeatureStore(SAM2_MODEL, 1 << 30)

    async def encode() -> tuple[Sam2Features, FrameMapping]:
        return owned, FrameMapping.for_image(64, 64, 1024, "stretch")

    entry, _ = asyncio.run(store.get_or_encode("image", encode))
    assert entry.features is owned
    assert cuda.entries("record") == []


def test_prompts_made_on_the_device_are_waited_for_and_kept_by_the_decoder(
    cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Segment-everything builds its labels, points and mask logits on the device, on its job
    thread's stream; the decoder's stream must wait for that work and keep their memory."""
    answer = SimpleNamespace(masks=on_cuda(torch.zeros(4, 3, 256, 256)), iou_predictions=None)
    answer.iou_predictions = on_cuda(torch.zeros(4, 3))
    monkeypatch.setattr(FakeServedSam2, "decode_batch", lambda self, jobs: [answer] * len(jobs))
    features = Sam2Features(
        *(on_cuda(tensor) for tensor in fake_sam2_features(torch.zeros(1, 3, 1024, 1024)).tensors)
    )
    making_stream = torch.cuda.Stream()
    with torch.cuda.stream(making_stream):
        job = DecodeJob(
            features,
            on_cuda(torch.zeros(4, 1, 2)),
            on_cuda(torch.ones(4, 1, dtype=torch.int64)),
            on_cuda(torch.zeros(4, 1, 256, 256)),
            on_cuda(torch.ones(4)),
        )
    assert job.ready is not None
    assert job.ready.stream is making_stream, "the event follows the prompts' own stream"
    served = FakeServedSam2.__new__(FakeServedSam2)
    decoder = WorkStream(torch.device("cuda", 0), "high")
    monkeypatch.setattr(FakeServedSam2, "decoder_stream", property(lambda self: decoder))
    served.run_decoder([job])
    assert ("wait", decoder.stream, job.ready) in cuda.log
    kept = {id(entry[1]) for entry in cuda.entries("record_stream") if entry[2] is decoder.stream}
    assert {id(tensor) for tensor in job.prompt_tensors} <= kept


def test_prompts_in_host_memory_carry_no_event() -> None:
    job = DecodeJob(
        fake_sam2_features(torch.zeros(1, 3, 1024, 1024)),
        torch.zeros(1, 1, 2),
        torch.ones(1, 1, dtype=torch.int64),
        torch.zeros(1, 1, 256, 256),
        torch.zeros(1),
    )
    assert job.ready is None
