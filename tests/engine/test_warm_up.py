"""Warm-up runs each SAM 2 pass on the thread that will run it (issue 18, item 10): CUDA sets up
per thread, so a decoder warmed up on the encoder's thread leaves the first click to pay for its
own thread's set-up. And it runs only where it buys latency (issue 15): ``auto``, the default,
warms up on a GPU and not on a CPU, where the first request measured no faster after it."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest
import torch
from fakes import SAM2_MODEL, FakeServedSam2, fake_config, fake_engine, fake_spec

from imgembed.engine.served import ServedModel
from imgembed.models.sam2 import Sam2Features
from imgembed.models.sam2_decoder import Sam2MaskPrediction
from imgembed.pipelines.sam2_decode import DecodeJob


def test_the_decoder_warms_up_on_its_own_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: dict[str, str] = {}
    encode, decode = FakeServedSam2.encode_batch, FakeServedSam2.decode_batch

    def encode_batch(self: FakeServedSam2, pixels: list[torch.Tensor]) -> list[Sam2Features]:
        threads["encoder"] = threading.current_thread().name
        return encode(self, pixels)

    def decode_batch(self: FakeServedSam2, jobs: list[DecodeJob]) -> list[Sam2MaskPrediction]:
        threads["decoder"] = threading.current_thread().name
        return decode(self, jobs)

    monkeypatch.setattr(FakeServedSam2, "encode_batch", encode_batch)
    monkeypatch.setattr(FakeServedSam2, "decode_batch", decode_batch)

    async def scenario() -> None:
        async with fake_engine(fake_config(fake_spec(SAM2_MODEL, warmup=True))) as engine:
            served = engine.resolve_model(SAM2_MODEL)
            assert served.warmup_seconds is not None

    asyncio.run(scenario())
    assert threads["encoder"].startswith(f"imgembed-{SAM2_MODEL}"), threads
    assert threads["decoder"].startswith("imgembed-decoder"), threads


# Which models warm up (issue 15): ``auto``, the default, only on a GPU.


@pytest.mark.parametrize(
    ("setting", "on_gpu", "expected"),
    [
        ("auto", False, False),
        ("auto", True, True),
        (True, False, True),
        (True, True, True),
        (False, False, False),
        (False, True, False),
    ],
)
def test_warms_up_follows_the_setting_and_the_device(
    setting: bool | str, on_gpu: bool, expected: bool
) -> None:
    served = SimpleNamespace(spec=fake_spec(SAM2_MODEL, warmup=setting), on_gpu=on_gpu)
    assert ServedModel.warms_up.fget(served) is expected


def passes_at_start(monkeypatch: pytest.MonkeyPatch, setting: bool | str, on_gpu: bool) -> int:
    """How many encoder passes an engine runs before it reports ready."""
    passes = []
    encode = FakeServedSam2.encode_batch

    def encode_batch(self: FakeServedSam2, pixels: list[torch.Tensor]) -> list[Sam2Features]:
        passes.append(len(pixels))
        return encode(self, pixels)

    monkeypatch.setattr(FakeServedSam2, "encode_batch", encode_batch)
    # The fake computes on the CPU whatever it is told; only the engine's choice is at stake.
    monkeypatch.setattr(FakeServedSam2, "on_gpu", property(lambda self: on_gpu))

    async def scenario() -> None:
        async with fake_engine(fake_config(fake_spec(SAM2_MODEL, warmup=setting))) as engine:
            served = engine.resolve_model(SAM2_MODEL)
            assert engine.ready
            assert (served.warmup_seconds is not None) == bool(passes)

    asyncio.run(scenario())
    return len(passes)


def test_auto_does_not_warm_up_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert passes_at_start(monkeypatch, "auto", on_gpu=False) == 0


def test_auto_warms_up_on_a_gpu_with_one_pass_of_one_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert passes_at_start(monkeypatch, "auto", on_gpu=True) == 1


def test_true_warms_up_on_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert passes_at_start(monkeypatch, True, on_gpu=False) == 1
