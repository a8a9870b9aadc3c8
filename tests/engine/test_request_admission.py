"""A request is admitted once, for all its items (issue 18): the texts of one text request, the
images of one image batch and the prompt groups of one segment request never refuse each other
(429) as if they were separate clients, while the queue still refuses other requests when full."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from fakes import (
    SAM2_MODEL,
    SIGLIP_MODEL,
    FakeServedSam2,
    FakeServedSiglip,
    fake_config,
    fake_engine,
    fake_spec,
    served_fake,
)
from imagefactory import encode, gradient_rgb
from PIL import Image

from imgembed.engine import Sam2Service, SiglipService
from imgembed.errors import QueueFullError
from imgembed.pipelines.sam2_segment import SegmentObject
from imgembed.settings import BatchingSettings, InputLimits
from imgembed.types import ImageBytes

MAX_TEXTS = InputLimits().max_texts
"""IMGEMBED_MAX_TEXTS' default: 256, four times the default queue of 64."""


def texts(count: int) -> list[str]:
    return [f"photo number {index}" for index in range(count)]


def test_a_request_of_max_texts_texts_is_embedded_not_refused_by_its_own_texts() -> None:
    assert BatchingSettings().max_queue_size < MAX_TEXTS  # the case the bug was about

    async def scenario() -> None:
        async with fake_engine(fake_config()) as engine:
            vectors, served = await engine.service(SiglipService).embed_texts(texts(MAX_TEXTS))
            assert isinstance(served, FakeServedSiglip)
            assert vectors.shape == (MAX_TEXTS, 768)
            np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
            assert sum(served.text_tower.batches) == MAX_TEXTS
            assert served.text_batcher is not None
            assert served.text_batcher.waiting == 0, "every reserved place was used or returned"

    asyncio.run(scenario())


def test_a_full_text_queue_still_refuses_the_next_request_whole() -> None:
    """While one request's 256 texts wait behind a held batch, the next request is refused with
    429 as a whole: the queue stays bounded, by requests instead of by texts."""
    hold = threading.Event()

    async def scenario() -> None:
        async with fake_engine(fake_config()) as engine:
            service = engine.service(SiglipService)
            served = served_fake(engine, SIGLIP_MODEL)
            served.text_tower.hold = hold
            batcher = served.text_batcher
            first = asyncio.create_task(service.embed_texts(texts(MAX_TEXTS)))
            while batcher.in_flight == 0:
                await asyncio.sleep(0.005)
            with pytest.raises(QueueFullError, match="limit"):
                await service.embed_texts(["one more"])
            hold.set()
            vectors, _ = await first
            assert vectors.shape == (MAX_TEXTS, 768)
            assert batcher.waiting == 0

    try:
        asyncio.run(scenario())
    finally:
        hold.set()


def test_an_image_batch_larger_than_the_queue_is_embedded_whole() -> None:
    """IMGEMBED_MAX_BATCH_IMAGES above the image queue's size: every image gets its vector (each
    image used to take a place of its own while decoding, so the batch refused its own tail)."""
    count, queue = 12, 3
    config = fake_config(
        fake_spec(SIGLIP_MODEL, batching=BatchingSettings(2, 5.0, queue)),
        limits=InputLimits(max_batch_images=count),
    )
    images = [
        ImageBytes(encode(Image.fromarray(gradient_rgb(20 + index, 24)), "PNG"))
        for index in range(count)
    ]

    async def scenario() -> None:
        async with fake_engine(config) as engine:
            result = await engine.service(SiglipService).embed_images(images)
            assert [outcome.error for outcome in result.outcomes] == [None] * count
            served = served_fake(engine, SIGLIP_MODEL)
            assert sum(served.image_tower.batches) == count
            assert served.image_batcher.waiting == 0

    asyncio.run(scenario())


def test_a_failed_image_gives_back_its_place() -> None:
    config = fake_config(fake_spec(SIGLIP_MODEL, batching=BatchingSettings(1, 1.0, 2)))
    good = ImageBytes(encode(Image.fromarray(gradient_rgb(20, 24)), "PNG"))

    async def scenario() -> None:
        async with fake_engine(config) as engine:
            service = engine.service(SiglipService)
            for _ in range(3):  # a leaked place per failed image would fill the queue of 2
                result = await service.embed_images([good, ImageBytes(b"not an image")])
                assert result.outcomes[0].error is None
                assert result.outcomes[1].error is not None
            assert served_fake(engine, SIGLIP_MODEL).image_batcher.waiting == 0

    asyncio.run(scenario())


def test_a_segment_request_with_more_prompt_groups_than_the_decoder_queue_is_answered() -> None:
    """Objects with four different prompt lengths make four decoder jobs; a decoder queue of 2 used
    to refuse the request's own third job."""
    spec = fake_spec(SAM2_MODEL, decoder_batching=BatchingSettings(1, 1.0, 2))
    png = encode(Image.fromarray(gradient_rgb(64, 64)), "PNG")
    objects = [
        SegmentObject(
            points=np.array([[10.0 + k, 10.0 + 2 * k] for k in range(count)]),
            labels=np.ones(count, dtype=np.int64),
        )
        for count in (1, 2, 3, 4)
    ]

    async def scenario() -> None:
        async with fake_engine(fake_config(spec)) as engine:
            result = await engine.service(Sam2Service).segment(ImageBytes(png), objects)
            assert len(result.objects) == len(objects)
            served = served_fake(engine, SAM2_MODEL)
            assert isinstance(served, FakeServedSam2)
            assert sorted(served.prompt_decoder.batches) == [1, 1, 1, 1]
            assert served.decoder.waiting == 0
            assert served.batcher.waiting == 0

    asyncio.run(scenario())
