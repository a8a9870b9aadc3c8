"""Segment everything's memory (issue 18, item 3): one budget per device shared by every job,
counting the caching allocator's free blocks, and a pass that runs out of memory retried with half
the prompts. CUDA's memory queries are mocked; the passes run on the CPU."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable

import pytest
import torch
from everything_stubs import DecoderOn, features_on
from imagefactory import gradient_rgb

from imgembed.errors import ResourceExhaustedError
from imgembed.models.sam2 import Sam2Features
from imgembed.models.sam2_decoder import Sam2MaskPrediction
from imgembed.pipelines import sam2_everything, sam2_everything_memory
from imgembed.pipelines.sam2_everything import EverythingResult, generate_everything
from imgembed.pipelines.sam2_everything_memory import (
    MemoryBudget,
    batch_plan,
    pass_bytes,
    shared_budget,
    usable_bytes,
)
from imgembed.pipelines.sam2_everything_params import (
    DECODER_BYTES_PER_PROMPT,
    MEMORY_SHARE,
    Sam2EverythingParams,
)

GIB = 1 << 30
CROP = (1024, 1024)
"""A crop whose masks upscale to 16 MiB each: a pass's decoder dominates (48 MiB per prompt)."""


@pytest.fixture
def cuda_memory(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Mocks CUDA's memory queries with the values of the returned dict (change them at will)."""
    memory = {"free": 10 * GIB, "total": 80 * GIB, "reserved": 3 * GIB, "allocated": 1 * GIB}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (memory["free"], 80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: memory["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: memory["allocated"])
    monkeypatch.setattr(sam2_everything_memory, "_BUDGETS", {})
    return memory


def test_usable_memory_counts_the_allocators_cached_free_blocks(cuda_memory: dict) -> None:
    assert usable_bytes(torch.device("cuda:0")) == 10 * GIB + (3 - 1) * GIB
    cuda_memory["allocated"] = 4 * GIB  # more allocated than reserved cannot add negative memory
    assert usable_bytes(torch.device("cuda:0")) == 10 * GIB


def test_one_budget_per_device(cuda_memory: dict) -> None:
    assert shared_budget(torch.device("cuda:0")) is shared_budget(torch.device("cuda:0"))
    assert shared_budget(torch.device("cuda:1")) is not shared_budget(torch.device("cuda:0"))
    assert shared_budget(torch.device("cpu")) is shared_budget(torch.device("cpu"))


def test_one_job_alone_gets_the_whole_share(cuda_memory: dict) -> None:
    budget = shared_budget(torch.device("cuda:0"))
    pool = int(12 * GIB * MEMORY_SHARE)  # (free + cached free) x share
    with budget.job(), budget.claim(pass_bytes(1024, CROP), pass_bytes(1, CROP)) as granted:
        assert granted == pool
        plan = batch_plan(granted, CROP, 1024)
    assert plan.points == pool // DECODER_BYTES_PER_PROMPT == 128
    assert plan.chunk == pool // (16 * 1024 * 1024)
    assert budget.claimed == 0


def test_concurrent_jobs_share_one_budget_instead_of_each_taking_most(cuda_memory: dict) -> None:
    """Two jobs used to read free memory independently and take 50 % (decoder) + 25 % (post-
    processing) each: 150 % of it. Now their passes together hold the share at most."""
    budget = shared_budget(torch.device("cuda:0"))
    pool = int(12 * GIB * MEMORY_SHARE)
    want, least = pass_bytes(1024, CROP), pass_bytes(1, CROP)
    with budget.job(), budget.job():
        with budget.claim(want, least) as first:
            cuda_memory["free"] = 2 * GIB  # the first pass allocates; nothing is measured again
            with budget.claim(want, least) as second:
                assert first == second == pool // 2
                assert budget.claimed == first + second <= pool
                with budget.claim(want, least) as third:  # the pool is spent
                    assert third == least
        assert budget.claimed == 0
        with budget.claim(want, least) as again:  # idle: measured again, still split in two
            assert again == int((2 + 2) * GIB * MEMORY_SHARE) // 2


def test_a_caller_sized_pass_gets_what_it_asks_for(cuda_memory: dict) -> None:
    budget = MemoryBudget(lambda: GIB, share=0.5)
    with budget.job(), budget.claim(pass_bytes(64, CROP), pass_bytes(64, CROP)) as granted:
        assert batch_plan(granted, CROP, 64).points == 64


def test_a_share_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"share must be in \(0, 1\], got 1.5"):
        MemoryBudget(lambda: GIB, share=1.5)


PARAMS = Sam2EverythingParams(points_per_side=4, stability_score_thresh=0.5)
"""16 prompts, sized by the budget."""


def plenty() -> MemoryBudget:
    return MemoryBudget(lambda: 64 * GIB, share=1.0)


class RunsOutAbove(DecoderOn):
    """A CPU decoder that runs out of memory on passes of more than ``limit`` prompts, after
    allocating its activations (watched by a weakref)."""

    def __init__(self, limit: int) -> None:
        super().__init__("cpu")
        self.limit = limit
        self.sizes: list[int] = []
        self.activations: list[weakref.ref[torch.Tensor]] = []
        self.alive_at_call: list[int] = []

    def __call__(
        self,
        features: Sam2Features,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        multimask_output: bool,
    ) -> Sam2MaskPrediction:
        self.alive_at_call.append(sum(ref() is not None for ref in self.activations))
        self.sizes.append(len(point_coords))
        hidden = torch.ones(len(point_coords), 1024)  # [B,1024] the pass's activations
        self.activations.append(weakref.ref(hidden))
        if len(point_coords) > self.limit:
            raise ResourceExhaustedError("model sam2/decoder ran out of memory on a single request")
        return super().__call__(
            features, point_coords, point_labels, mask_input, has_mask_input, multimask_output
        )


def run(
    decoder: Callable[..., Sam2MaskPrediction],
    budget: MemoryBudget,
    params: Sam2EverythingParams = PARAMS,
) -> EverythingResult:
    """Segments everything in a 96x128 gradient with CPU features, ``decoder`` and ``budget``."""
    return generate_everything(
        gradient_rgb(96, 128),
        lambda crop: features_on("cpu"),
        decoder,
        params,
        device=torch.device("cpu"),
        budget=budget,
    )


def test_a_pass_that_runs_out_of_memory_is_retried_with_half_the_prompts() -> None:
    gc.disable()
    try:
        decoder = RunsOutAbove(4)
        result = run(decoder, plenty())
    finally:
        gc.enable()
    assert decoder.sizes == [16, 8, 4, 4, 4, 4]
    assert decoder.alive_at_call == [0] * 6, "a failed pass's tensors are gone before the retry"
    assert result.points_per_batch == 4
    assert result.prompts == 16
    expected = run(
        DecoderOn("cpu"),
        plenty(),
        Sam2EverythingParams(points_per_side=4, points_per_batch=4, stability_score_thresh=0.5),
    )
    assert [r.bbox for r in result.records] == [r.bbox for r in expected.records]
    assert [r.predicted_iou for r in result.records] == [r.predicted_iou for r in expected.records]


def test_a_caller_sized_pass_is_halved_too_and_one_prompt_that_never_fits_fails() -> None:
    decoder = RunsOutAbove(3)
    run(decoder, plenty(), Sam2EverythingParams(points_per_side=4, points_per_batch=12))
    assert decoder.sizes[:3] == [12, 6, 3]
    never = RunsOutAbove(0)
    with pytest.raises(ResourceExhaustedError, match="ran out of memory"):
        run(never, plenty())
    assert never.sizes == [16, 8, 4, 2, 1]


def test_post_processing_that_runs_out_of_memory_is_retried_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = sam2_everything.stability_scores
    chunks: list[int] = []

    def stability_scores(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
        chunks.append(len(logits))
        if len(logits) > 12:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(logits, threshold, offset)

    monkeypatch.setattr(sam2_everything, "stability_scores", stability_scores)
    # A grant of 8 prompts' worth upscales all masks of a pass at once: 8 prompts (24 masks, every
    # mask kept) run out of memory in post-processing; the 4-prompt passes (12 masks) fit.
    per_prompt = pass_bytes(1, (96, 128))
    params = Sam2EverythingParams(
        points_per_side=4, points_per_batch=8, pred_iou_thresh=0.0, stability_score_thresh=0.5
    )
    result = generate_everything(
        gradient_rgb(96, 128),
        lambda crop: features_on("cpu"),
        DecoderOn("cpu"),
        params,
        device=torch.device("cpu"),
        budget=MemoryBudget(lambda: 8 * per_prompt, share=1.0),
    )
    assert chunks == [24, 12, 12, 12, 12]
    assert result.points_per_batch == 4
    assert result.records
