"""The fake models themselves: real shapes and dtypes, deterministic, input-dependent answers, and
plugged in through the family registry only where model math runs."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from fakes import (
    FAKE_MASK_RADII,
    SAM2_MODEL,
    SIGLIP_MODEL,
    FakeServedSam2,
    FakeServedSiglip,
    NoModel,
    fake_config,
    fake_decode,
    fake_engine,
    fake_families,
    fake_sam2_features,
    fake_spec,
)
from imagefactory import encode, gradient_rgb
from PIL import Image

from imgembed.engine import FAMILIES, Sam2Service, SiglipService
from imgembed.models.sam2 import Sam2Features
from imgembed.pipelines.sam2_decode import DecodeJob
from imgembed.types import ImageBytes


def features_of(seed: int) -> Sam2Features:
    pixels = torch.from_numpy(np.random.default_rng(seed).normal(size=(1, 3, 1024, 1024)))
    return fake_sam2_features(pixels.float())


def decode_job(points: list[list[float]], labels: list[int], **options: object) -> DecodeJob:
    return DecodeJob(
        features=features_of(0),
        point_coords=torch.tensor([points], dtype=torch.float32),
        point_labels=torch.tensor([labels], dtype=torch.int32),
        mask_input=torch.zeros(1, 1, 256, 256),
        has_mask_input=torch.zeros(1),
        **options,  # type: ignore[arg-type]
    )


def test_families_replace_only_the_model_math_of_sam2_and_siglip() -> None:
    faked = fake_families()
    assert [family.name for family in faked] == [family.name for family in FAMILIES]
    for real, fake in zip(FAMILIES, faked, strict=True):
        assert fake.service is real.service
        assert fake.canonical_name is real.canonical_name
        if real.name in ("sam2", "siglip"):
            assert fake.load_weights is not real.load_weights
            assert fake.serve is not real.serve
        else:
            assert fake == real


def test_encoder_features_have_the_real_shapes_and_follow_the_image() -> None:
    first, again, other = features_of(1), features_of(1), features_of(2)
    assert first.image_embed.shape == (1, 256, 64, 64)
    assert first.high_res_feats_0.shape == (1, 32, 256, 256)
    assert first.high_res_feats_1.shape == (1, 64, 128, 128)
    assert first.image_embed.dtype == torch.float32
    torch.testing.assert_close(first.image_embed, again.image_embed, rtol=0, atol=0)
    assert not torch.equal(first.image_embed, other.image_embed)


def test_decoder_masks_are_discs_around_points_boxes_and_carved_by_background() -> None:
    (prediction,) = [
        fake_decode(
            job.features, job.point_coords, job.point_labels, job.mask_input, job.has_mask_input
        )
        for job in [decode_job([[400.0, 600.0], [440.0, 600.0]], [1, 0])]
    ]
    assert prediction.masks.shape == (1, 3, 256, 256)
    assert prediction.iou_predictions.shape == (1, 3)
    inside = prediction.masks[0] > 0  # [3,256,256], cell (row, column) centred at 4*index + 2
    for k, radius in enumerate(FAKE_MASK_RADII):
        assert inside[k, 600 // 4, (400 - int(radius) + 8) // 4], k  # in the disc, left of it
        assert not inside[k, 600 // 4, (400 - int(radius) - 8) // 4], k
        assert not inside[k, 600 // 4, 440 // 4], k  # the background point is carved out
    assert (prediction.iou_predictions[0, :-1] > prediction.iou_predictions[0, 1:]).all()
    box = decode_job([[100.0, 200.0], [300.0, 260.0]], [2, 3], multimask_output=False)
    (boxed,) = FakeServedSam2.decode_batch(_bare_sam2(), [box])
    assert boxed.masks.shape == (1, 1, 256, 256)
    rows, columns = np.nonzero(boxed.masks[0, 0].numpy() > 0)
    assert (columns.min(), rows.min(), columns.max(), rows.max()) == (25, 50, 74, 64)


def test_mask_input_moves_the_logits_and_clamping_holds() -> None:
    job = decode_job([[500.0, 500.0]], [1])
    plain = fake_decode(
        job.features, job.point_coords, job.point_labels, job.mask_input, job.has_mask_input
    )
    pushed = fake_decode(
        job.features,
        job.point_coords,
        job.point_labels,
        torch.full((1, 1, 256, 256), 100.0),
        torch.ones(1),
    )
    assert ((plain.masks.abs() - 10).abs() < 0.1).all()  # ±10, and a trace of the image
    assert (pushed.masks == 32).all()


def _bare_sam2() -> FakeServedSam2:
    """A fake SAM 2 model outside an engine (its batch methods need nothing else)."""
    engine = fake_engine(fake_config(fake_spec(SAM2_MODEL)))
    engine.load()
    served = engine.resolve_model(None)
    assert isinstance(served, FakeServedSam2)
    return served


def test_loaded_weights_are_the_real_variant_and_refuse_model_math() -> None:
    served = _bare_sam2()
    assert served.name == SAM2_MODEL
    assert served.loaded.variant.meta_config.endswith("sam2.1_hiera_t.yaml")
    assert (served.source, served.untrained, served.loaded.weights_location) == (
        "dummy",
        True,
        "fake",
    )
    assert isinstance(served.loaded.model, NoModel)
    with pytest.raises(AssertionError, match="does not fake"):
        served.loaded.model.state_dict()
    # The family's own serve named it: canonical name, hub id, Meta's checkpoint and config.
    assert {
        "facebook/sam2.1-hiera-tiny",
        "sam2.1_hiera_tiny.pt",
        "sam2.1_hiera_t.yaml",
    } <= served.names


def test_an_engine_runs_the_real_pipelines_around_the_fakes() -> None:
    png = encode(Image.fromarray(gradient_rgb(40, 60)), "PNG")

    async def scenario() -> None:
        async with fake_engine(fake_config()) as engine:
            sam2 = engine.service(Sam2Service)
            first = await sam2.embed(ImageBytes(png))
            again = await sam2.embed(ImageBytes(png))
            assert first.embedding.arrays["image_embed"].shape == (256, 64, 64)
            assert first.embedding.mapping.orig_hw == (40, 60)
            assert (first.cache_hit, again.cache_hit) == (False, True)
            assert again.image_id == first.image_id
            served = engine.resolve_model(SAM2_MODEL)
            assert isinstance(served, FakeServedSam2)
            assert served.encoder.batches == [1]
            siglip = engine.service(SiglipService)
            vectors, model = await siglip.embed_texts(["a cat", "a dog", "a cat"])
            assert isinstance(model, FakeServedSiglip)
            assert model.name == SIGLIP_MODEL
            assert vectors.shape == (3, 768)
            assert vectors.dtype == np.float32
            np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)
            np.testing.assert_array_equal(vectors[0], vectors[2])
            assert not np.allclose(vectors[0], vectors[1])
            images = await siglip.embed_images([ImageBytes(png), ImageBytes(png[:50])])
            assert images.outcomes[0].vector is not None
            assert images.outcomes[0].vector.shape == (768,)
            assert images.outcomes[1].error is not None

    asyncio.run(scenario())


def test_a_fakes_failure_fails_the_batch_as_a_model_bug_would() -> None:
    served = _bare_sam2()
    served.encoder.fail_when = lambda items: True
    with pytest.raises(RuntimeError, match="simulated"):
        served.encode_batch([torch.zeros(3, 1024, 1024)])
    assert served.encoder.batches == []
