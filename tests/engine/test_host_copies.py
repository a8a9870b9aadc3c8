"""Device-to-host copies run on worker threads, never on the event loop (issue 18, item 4).

On CUDA a copy to the host waits until the device has drained the work queued before it; on the
event loop that stalls every request. The decoder's answers are wrapped in a tensor subclass that
records the thread of each copy (``.cpu()``, ``.to()``, ``.numpy()``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from fakes import SAM2_MODEL, FakeServedSam2, fake_config, fake_engine, fake_sam2_features

from imgembed.engine import Sam2Service
from imgembed.models.sam2_decoder import Sam2MaskPrediction
from imgembed.pipelines.sam2_decode import DecodeJob

_COPIES = {torch.Tensor.cpu, torch.Tensor.to, torch.Tensor.numpy}


class Watched(torch.Tensor):
    """A tensor that records the thread of every copy made of it."""

    copies: ClassVar[list[str]] = []

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func in _COPIES:
            cls.copies.append(threading.current_thread().name)
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.fixture
def watched_decoder(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Makes every fake decoder answer :class:`Watched` tensors; yields the copies' threads."""
    real = FakeServedSam2.decode_batch

    def decode_batch(self: FakeServedSam2, jobs: list[DecodeJob]) -> list[Sam2MaskPrediction]:
        return [
            Sam2MaskPrediction(
                prediction.masks.as_subclass(Watched),
                prediction.iou_predictions.as_subclass(Watched),
            )
            for prediction in real(self, jobs)
        ]

    monkeypatch.setattr(FakeServedSam2, "decode_batch", decode_batch)
    Watched.copies = []
    return Watched.copies


def test_the_v2_decode_copies_its_answer_to_the_host_on_a_worker_thread(
    watched_decoder: list[str],
) -> None:
    features = fake_sam2_features(torch.rand(1, 3, 1024, 1024))

    async def scenario() -> Sam2MaskPrediction:
        async with fake_engine(fake_config()) as engine:
            return await engine.service(Sam2Service).decode(
                features,
                torch.tensor([[[500.0, 400.0]], [[100.0, 100.0]]]),  # [2,1,2]
                torch.ones(2, 1, dtype=torch.int64),
                torch.zeros(1, 1, 256, 256),
                torch.zeros(1),
                model=SAM2_MODEL,
            )

    prediction = asyncio.run(scenario())
    assert watched_decoder, "the answer was copied to the host"
    assert all(name.startswith("imgembed-cpu") for name in watched_decoder), watched_decoder
    assert prediction.masks.shape == (2, 3, 256, 256)
    assert prediction.masks.device.type == "cpu"
    assert prediction.masks.dtype == torch.float32
    assert prediction.iou_predictions.shape == (2, 3)
    assert np.isfinite(prediction.masks.as_subclass(torch.Tensor).numpy()).all()
