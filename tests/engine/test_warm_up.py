"""Warm-up runs each SAM 2 pass on the thread that will run it (issue 18, item 10): CUDA sets up
per thread, so a decoder warmed up on the encoder's thread leaves the first click to pay for its
own thread's set-up."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch
from fakes import SAM2_MODEL, FakeServedSam2, fake_config, fake_engine, fake_spec

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
