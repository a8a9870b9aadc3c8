"""The stateless decoder against Meta's prompt encoder and mask decoder on identical weights.

Meta's SAM 2.1 tiny gets seeded random weights, is saved as Meta's ``.pt`` and loaded through
:func:`load_sam2`. Both decoders then read the same features (Meta's own ``set_image`` output, so
only the decoders are compared) and the same prompts. The reference is what samexporter's decoder
graph computes: Meta's ``sam_prompt_encoder`` with boxes as corner points (one -1 padding point
appended) and the mask or none, Meta's ``sam_mask_decoder`` with ``multimask_output=True``, logits
clamped to [-32, 32]; each prompt of a batch is decoded on its own by Meta.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from checkpoints import (
    SEED,
    build_meta_model,
    meta_decode,
    meta_set_image,
    relative_error,
    save_meta_checkpoint,
)

from imgembed.models.sam2 import Sam2Features
from imgembed.models.sam2_decoder import Sam2MaskPrediction, decode_masks
from imgembed.models.sam2_loading import load_sam2
from imgembed.models.sam2_registry import resolve_variant

pytestmark = pytest.mark.parity

TINY = resolve_variant("sam2.1-hiera-tiny")
CPU = torch.device("cpu")
TOLERANCE = 1e-4
BOX_AND_CLICK = ([[120.5, 210.25], [760.0, 905.75], [407.3, 611.8]], [2, 3, 1])
CLICKS = ([[407.3, 611.8], [100.0, 900.0], [0.0, 0.0]], [1, 0, -1])
"""Two clicks padded with a -1 point, the way clients pad prompts to a common length."""
BOX = ([[120.5, 210.25], [760.0, 905.75], [0.0, 0.0]], [2, 3, -1])


@dataclass(frozen=True)
class DecoderCase:
    meta_model: torch.nn.Module
    model: torch.nn.Module
    features: Sam2Features


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> DecoderCase:
    meta_model = build_meta_model(TINY.meta_config, SEED)
    checkpoint = save_meta_checkpoint(
        meta_model, tmp_path_factory.mktemp("decoder") / TINY.meta_checkpoint
    )
    model = load_sam2(TINY.name, str(checkpoint), TINY.meta_config, device=CPU).model
    image = torch.randn((1, 3, 1024, 1024), generator=torch.Generator().manual_seed(SEED))
    return DecoderCase(meta_model, model, meta_set_image(meta_model, image))


def meta_prompt(
    meta_model: torch.nn.Module,
    features: Sam2Features,
    points: list[list[float]],
    labels: list[int],
    mask_input: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt through Meta's modules; ``[1,3,256,256]`` clamped logits and ``[1,3]`` IoU."""
    coords = torch.tensor([points], dtype=torch.float32)  # [1,N,2]
    label_tensor = torch.tensor([labels], dtype=torch.int32)  # [1,N]
    masks, iou, _ = meta_decode(meta_model, features, coords, label_tensor, mask_input)
    return masks.clamp(-32.0, 32.0), iou


def decode(
    case: DecoderCase,
    prompts: list[tuple[list[list[float]], list[int]]],
    *,
    features: Sam2Features | None = None,
    mask_input: torch.Tensor | None = None,
    has_mask_input: list[float] | None = None,
) -> Sam2MaskPrediction:
    """``decode_masks`` on a batch of prompts with the same number of points."""
    coords = torch.tensor([points for points, _ in prompts], dtype=torch.float32)  # [B,N,2]
    labels = torch.tensor([labels for _, labels in prompts])  # [B,N]
    return decode_masks(
        case.model,
        features or case.features,
        coords,
        labels,
        mask_input if mask_input is not None else torch.zeros(1, 1, 256, 256),
        torch.tensor(has_mask_input or [0.0]),
    )


def assert_agrees(
    prediction: Sam2MaskPrediction, index: int, expected: tuple[torch.Tensor, torch.Tensor]
) -> None:
    masks, iou = prediction.masks[index : index + 1], prediction.iou_predictions[index : index + 1]
    expected_masks, expected_iou = expected
    assert masks.shape == expected_masks.shape == (1, 3, 256, 256)
    assert masks.dtype == torch.float32
    assert relative_error(masks, expected_masks) < TOLERANCE
    assert (iou - expected_iou).abs().max().item() < TOLERANCE
    assert masks.abs().max().item() <= 32.0


@pytest.mark.parametrize("prompt", [BOX_AND_CLICK, CLICKS, BOX], ids=["box+click", "clicks", "box"])
def test_single_prompt_matches_meta(case: DecoderCase, prompt: tuple) -> None:
    prediction = decode(case, [prompt])
    assert_agrees(prediction, 0, meta_prompt(case.meta_model, case.features, *prompt, None))


def test_many_prompts_on_one_image_match_meta_one_by_one(case: DecoderCase) -> None:
    prompts = [BOX_AND_CLICK, CLICKS, BOX]
    prediction = decode(case, prompts)
    assert prediction.masks.shape == (3, 3, 256, 256)
    assert prediction.iou_predictions.shape == (3, 3)
    for index, prompt in enumerate(prompts):
        expected = meta_prompt(case.meta_model, case.features, *prompt, None)
        assert_agrees(prediction, index, expected)


def test_one_image_per_prompt_matches_meta(case: DecoderCase) -> None:
    """Features with batch B: prompt i is decoded against image i."""
    other = Sam2Features(
        image_embed=case.features.image_embed.flip(-1),
        high_res_feats_0=case.features.high_res_feats_0.flip(-1),
        high_res_feats_1=case.features.high_res_feats_1.flip(-1),
    )
    stacked = Sam2Features(
        image_embed=torch.cat([case.features.image_embed, other.image_embed]),
        high_res_feats_0=torch.cat([case.features.high_res_feats_0, other.high_res_feats_0]),
        high_res_feats_1=torch.cat([case.features.high_res_feats_1, other.high_res_feats_1]),
    )
    prediction = decode(case, [BOX_AND_CLICK, BOX_AND_CLICK], features=stacked)
    for index, features in enumerate((case.features, other)):
        expected = meta_prompt(case.meta_model, features, *BOX_AND_CLICK, None)
        assert_agrees(prediction, index, expected)


def test_mask_input_matches_meta_per_prompt(case: DecoderCase) -> None:
    """A refinement round: the previous best mask as ``mask_input`` where has_mask_input is 1."""
    first = decode(case, [BOX_AND_CLICK])
    best = int(first.iou_predictions[0].argmax())
    previous = first.masks[:, best : best + 1]  # [1,3,256,256] -> [1,1,256,256]
    prediction = decode(
        case, [BOX_AND_CLICK, BOX_AND_CLICK], mask_input=previous, has_mask_input=[1.0, 0.0]
    )
    with_mask = meta_prompt(case.meta_model, case.features, *BOX_AND_CLICK, previous)
    without_mask = meta_prompt(case.meta_model, case.features, *BOX_AND_CLICK, None)
    assert_agrees(prediction, 0, with_mask)
    assert_agrees(prediction, 1, without_mask)
    assert relative_error(with_mask[0], without_mask[0]) > 10 * TOLERANCE, "mask had no effect"


def test_shapes_that_do_not_fit_are_refused(case: DecoderCase) -> None:
    with pytest.raises(ValueError, match="point_labels must be"):
        decode_masks(
            case.model,
            case.features,
            torch.zeros(2, 3, 2),
            torch.ones(2, 2),
            torch.zeros(1, 1, 256, 256),
            torch.zeros(1),
        )
    with pytest.raises(ValueError, match="has_mask_input has batch 3"):
        decode_masks(
            case.model,
            case.features,
            torch.zeros(2, 1, 2),
            torch.ones(2, 1),
            torch.zeros(1, 1, 256, 256),
            torch.zeros(3),
        )
