"""Decoder passes shared across requests equal each request's prompts decoded alone.

:func:`decode_jobs` is what the decoder batcher runs: jobs from different requests (different
images, prompt lengths, output modes, mask inputs) in as few passes as their shapes allow. Each
job's result must equal :func:`decode_masks` on that job alone, which the decoder parity tests
prove equal to Meta's decoder. Features are seeded random tensors of the real shapes: the decoder
consumes them as it would an encoder's output.
"""

from __future__ import annotations

import pytest
import torch

from imgembed.models.sam2 import Sam2Features
from imgembed.models.sam2_decoder import decode_masks
from imgembed.models.sam2_loading import load_sam2
from imgembed.pipelines.sam2_decode import DecodeJob, decode_jobs
from imgembed.runtime.device import choose_placement

pytestmark = pytest.mark.parity

CPU = choose_placement("cpu")
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_sam2("sam2.1-hiera-tiny", "dummy", device=CPU.device).model


def features(seed: int, batch: int = 1) -> Sam2Features:
    generator = torch.Generator().manual_seed(seed)
    return Sam2Features(
        image_embed=torch.randn((batch, 256, 64, 64), generator=generator),
        high_res_feats_0=torch.randn((batch, 32, 256, 256), generator=generator),
        high_res_feats_1=torch.randn((batch, 64, 128, 128), generator=generator),
    )


def job(
    image: Sam2Features,
    prompts: int,
    points: int,
    seed: int,
    *,
    multimask_output: bool = True,
    clamp: bool = True,
    with_mask: bool = False,
) -> DecodeJob:
    generator = torch.Generator().manual_seed(seed)
    return DecodeJob(
        features=image,
        point_coords=torch.rand((prompts, points, 2), generator=generator) * 1024,  # [B,N,2]
        point_labels=torch.randint(0, 2, (prompts, points), generator=generator),  # [B,N]
        mask_input=torch.randn((prompts, 1, 256, 256), generator=generator) * 8,
        has_mask_input=torch.full((prompts,), 1.0 if with_mask else 0.0),
        multimask_output=multimask_output,
        clamp=clamp,
    )


def alone(model: torch.nn.Module, decode_job: DecodeJob, row: int) -> tuple[torch.Tensor, ...]:
    """One prompt of a job decoded by itself: ``[K,256,256]`` logits and ``[K]`` IoU."""
    one = slice(row, row + 1)
    image = decode_job.features
    if image.image_embed.shape[0] > 1:
        image = image[row]
    prediction = decode_masks(
        model,
        image,
        decode_job.point_coords[one],
        decode_job.point_labels[one],
        decode_job.mask_input[one],
        decode_job.has_mask_input[one],
        multimask_output=decode_job.multimask_output,
        clamp=decode_job.clamp,
    )
    return prediction.masks[0], prediction.iou_predictions[0]


def assert_each_prompt_equals_alone(model: torch.nn.Module, jobs: list[DecodeJob]) -> None:
    results = decode_jobs(model, CPU, jobs)
    assert len(results) == len(jobs)
    for decode_job, result in zip(jobs, results, strict=True):
        channels = 3 if decode_job.multimask_output else 1
        assert result.masks.shape == (decode_job.prompts, channels, 256, 256)
        assert result.masks.dtype == torch.float32
        for row in range(decode_job.prompts):
            masks, iou = alone(model, decode_job, row)
            torch.testing.assert_close(result.masks[row], masks, atol=TOLERANCE, rtol=0)
            torch.testing.assert_close(result.iou_predictions[row], iou, atol=TOLERANCE, rtol=0)
            assert torch.equal(result.masks[row] > 0, masks > 0)


def test_requests_on_different_images_share_a_pass_and_match_decoding_alone(
    model: torch.nn.Module,
) -> None:
    first, second = features(1), features(2)
    jobs = [job(first, 3, 2, seed=10), job(second, 2, 2, seed=11), job(first, 1, 2, seed=12)]
    assert len({j.pass_key for j in jobs}) == 1
    assert_each_prompt_equals_alone(model, jobs)


def test_prompt_lengths_output_modes_and_clamping_never_mix_in_a_pass(
    model: torch.nn.Module,
) -> None:
    image = features(3)
    jobs = [
        job(image, 2, 1, seed=20),
        job(image, 2, 3, seed=21),
        job(features(4), 1, 1, seed=22, multimask_output=False),
        job(image, 2, 1, seed=23, clamp=False, with_mask=True),
        job(features(5, batch=2), 2, 3, seed=24, with_mask=True),
    ]
    assert len({j.pass_key for j in jobs}) == 4
    assert_each_prompt_equals_alone(model, jobs)
    clamped = decode_jobs(model, CPU, [jobs[0]])[0].masks
    assert clamped.abs().max() <= 32.0


def test_a_job_with_mismatched_shapes_is_refused_with_the_tensor_named() -> None:
    image = features(6)
    with pytest.raises(ValueError, match="point_labels"):
        DecodeJob(
            image,
            torch.zeros(2, 3, 2),
            torch.zeros(2, 2),
            torch.zeros(1, 1, 256, 256),
            torch.zeros(1),
        )
    with pytest.raises(ValueError, match="mask_input"):
        DecodeJob(
            image,
            torch.zeros(2, 3, 2),
            torch.zeros(2, 3),
            torch.zeros(3, 1, 256, 256),
            torch.zeros(1),
        )
