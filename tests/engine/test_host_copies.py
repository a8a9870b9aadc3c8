"""Device-to-host copies run on worker threads, never on the event loop (issue 18, item 4), once
per prompt group rather than per object, and shared inputs cross to the device once (item 9).

On CUDA a copy to the host waits until the device has drained the work queued before it; on the
event loop that stalls every request. The decoder's answers are wrapped in a tensor subclass that
records the thread of each copy (``.cpu()``, ``.to()``, ``.numpy()``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from fakes import SAM2_MODEL, FakeServedSam2, fake_config, fake_engine, fake_sam2_features
from imagefactory import encode, gradient_rgb
from PIL import Image

from imgembed.engine import Sam2Service
from imgembed.models.sam2_decoder import Sam2MaskPrediction
from imgembed.pipelines.sam2_decode import DecodeJob, _stack
from imgembed.pipelines.sam2_segment import SegmentObject, build_prompt_groups
from imgembed.preprocess.sam2_frame import FrameMapping
from imgembed.types import ImageBytes

_COPIES = {torch.Tensor.cpu, torch.Tensor.to, torch.Tensor.numpy}


class Watched(torch.Tensor):
    """A tensor that plays "on the device": what is computed from it stays on the device, and
    each copy of it to the host (``.cpu()``, ``.to()``, ``.numpy()``) records its thread."""

    copies: ClassVar[list[str]] = []
    on_device: bool = False

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        from_device = any(isinstance(arg, Watched) and arg.on_device for arg in args)
        if from_device and func in _COPIES:
            cls.copies.append(threading.current_thread().name)
        result = super().__torch_function__(func, types, args, kwargs or {})
        if from_device and func in _COPIES and result is args[0]:
            # On the CPU a copy to the CPU may return the tensor itself: on a device it would not.
            with torch._C.DisableTorchFunctionSubclass():
                return result.as_subclass(Watched)
        if from_device and func not in _COPIES:
            for tensor in result if isinstance(result, tuple | list) else (result,):
                if isinstance(tensor, Watched):
                    tensor.on_device = True
        return result


def on_device(tensor: torch.Tensor) -> Watched:
    watched = tensor.as_subclass(Watched)
    watched.on_device = True
    return watched


@pytest.fixture
def watched_decoder(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Makes every fake decoder answer :class:`Watched` tensors; yields the copies' threads."""
    real = FakeServedSam2.decode_batch

    def decode_batch(self: FakeServedSam2, jobs: list[DecodeJob]) -> list[Sam2MaskPrediction]:
        return [
            Sam2MaskPrediction(on_device(prediction.masks), on_device(prediction.iou_predictions))
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


def test_segment_copies_each_prompt_group_once_not_each_object(
    watched_decoder: list[str],
) -> None:
    """Three one-click objects share a decoder pass, a two-click object has its own: two groups,
    two copies each (masks and scores), whatever the number of objects."""
    png = encode(Image.fromarray(gradient_rgb(64, 64)), "PNG")
    objects = [
        SegmentObject(points=np.array([[10.0 * k, 20.0]]), labels=np.ones(1, np.int64))
        for k in (1, 2, 3)
    ]
    objects.append(SegmentObject(np.array([[5.0, 5.0], [30.0, 30.0]]), np.ones(2, np.int64)))

    async def scenario() -> int:
        async with fake_engine(fake_config()) as engine:
            result = await engine.service(Sam2Service).segment(ImageBytes(png), objects)
            return len(result.objects)

    assert asyncio.run(scenario()) == len(objects)
    assert len(watched_decoder) == 2 * 2, watched_decoder
    assert all(name.startswith("imgembed-cpu") for name in watched_decoder), watched_decoder


def test_a_group_without_mask_prompts_shares_one_zero_mask() -> None:
    mapping = FrameMapping.for_image(64, 64, 1024, "stretch")
    clicks = [SegmentObject(np.array([[10.0, 10.0]]), np.ones(1, np.int64)) for _ in range(5)]
    (group,) = build_prompt_groups(clicks, mapping)
    assert group.mask_input.shape == (1, 1, 256, 256)
    assert group.has_mask_input.tolist() == [0.0]
    with_mask = [*clicks[:2], replace(clicks[2], mask_input=np.ones((256, 256), np.float32))]
    (group,) = build_prompt_groups(with_mask, mapping)
    assert group.mask_input.shape == (3, 1, 256, 256)
    assert group.has_mask_input.tolist() == [0.0, 0.0, 1.0]


class Uploads(torch.Tensor):
    """A tensor that records the shape of every ``.to()`` made of it."""

    shapes: ClassVar[list[tuple[int, ...]]] = []

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func is torch.Tensor.to:
            cls.shapes.append(tuple(args[0].shape))
        return super().__torch_function__(func, types, args, kwargs or {})


def test_features_shared_by_many_prompts_cross_to_the_device_once_then_expand() -> None:
    Uploads.shapes = []
    first = torch.rand(1, 256, 64, 64).as_subclass(Uploads)
    second = torch.rand(1, 256, 64, 64).as_subclass(Uploads)
    stacked = _stack([(first, 48), (second, 16)], torch.device("cpu"))
    assert stacked.shape == (64, 256, 64, 64)
    assert Uploads.shapes == [(1, 256, 64, 64), (1, 256, 64, 64)], "never the expanded 48 or 16"
    torch.testing.assert_close(
        stacked.as_subclass(torch.Tensor)[47], first[0].as_subclass(torch.Tensor)
    )
