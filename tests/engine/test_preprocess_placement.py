"""Where the engine preprocesses (issue 18, item 8): ``preprocess`` resolved per model, reported in
``/v1/models``, and the device path through the whole engine giving the CPU path's answers."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
from fakes import (
    SAM2_MODEL,
    SIGLIP_MODEL,
    expected_sam2_arrays,
    expected_siglip_image_vector,
    fake_config,
    fake_engine,
    fake_spec,
    served_fake,
)
from imagefactory import encode, gradient_rgb
from PIL import Image

from imgembed.engine import Sam2Service, SiglipService
from imgembed.pipelines import sam2_embed
from imgembed.runtime.staging import ImageStaging
from imgembed.types import ImageBytes


def test_cpu_models_preprocess_on_the_cpu_by_default() -> None:
    async def scenario() -> None:
        async with fake_engine(fake_config()) as engine:
            for name in (SAM2_MODEL, SIGLIP_MODEL):
                served = served_fake(engine, name)
                assert served.preprocess == "cpu"
                assert served.staging is None
                assert served.describe()["preprocess"] == "cpu"

    asyncio.run(scenario())


def test_device_preprocessing_through_the_engine_answers_as_the_cpu_path() -> None:
    png = encode(Image.fromarray(gradient_rgb(90, 130)), "PNG")
    config = fake_config(
        fake_spec(SAM2_MODEL, preprocess="device"), fake_spec(SIGLIP_MODEL, preprocess="device")
    )

    async def scenario() -> None:
        async with fake_engine(config) as engine:
            sam2 = served_fake(engine, SAM2_MODEL)
            siglip = served_fake(engine, SIGLIP_MODEL)
            assert isinstance(sam2.staging, ImageStaging)
            assert isinstance(siglip.staging, ImageStaging)
            assert sam2.describe()["preprocess"] == "device"
            runs = []
            original = ImageStaging.run

            def counted(self: ImageStaging, pixels: np.ndarray, step):  # type: ignore[no-untyped-def]
                runs.append(self)
                return original(self, pixels, step)

            ImageStaging.run = counted  # type: ignore[method-assign]
            try:
                result = await engine.service(Sam2Service).embed(
                    ImageBytes(png), options=sam2_embed.Sam2EmbedOptions()
                )
                (outcome,) = (
                    await engine.service(SiglipService).embed_images([ImageBytes(png)])
                ).outcomes
            finally:
                ImageStaging.run = original  # type: ignore[method-assign]
            assert runs == [sam2.staging, siglip.staging]
            for name, array in expected_sam2_arrays(png).items():
                np.testing.assert_allclose(result.embedding.arrays[name], array, atol=1e-5)
            expected = expected_siglip_image_vector(png, siglip)
            assert outcome.error is None
            np.testing.assert_allclose(outcome.vector, expected, atol=2e-3)

    asyncio.run(scenario())


def test_a_siglip_filter_without_a_device_version_is_reported_as_cpu() -> None:
    """Only bilinear (the released checkpoints' filter) is reproduced on the device; a checkpoint
    that resizes otherwise is prepared by Pillow, and /v1/models must not say "device"."""

    async def scenario() -> None:
        async with fake_engine(fake_config(fake_spec(SIGLIP_MODEL, preprocess="device"))) as engine:
            served = served_fake(engine, SIGLIP_MODEL)
            assert served.preprocess == "device"
            processing = dataclasses.replace(served.loaded.image_processing, resample="bicubic")
            served.loaded = dataclasses.replace(served.loaded, image_processing=processing)
            assert served.preprocess == "cpu"
            assert served.describe()["preprocess"] == "cpu"

    asyncio.run(scenario())
