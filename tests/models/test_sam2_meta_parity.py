"""Parity with Meta's SAM 2 on identical weights, for all eight released configurations.

For each config, Meta's ``SAM2Base`` is built and every weight overwritten with seeded noise, saved
as Meta's ``{"model": state_dict}`` ``.pt`` and loaded through :func:`load_sam2`. Both then encode
the same normalised image and decode the same prompts.

Prompt conventions, Meta's predictor against ``transformers.Sam2Model`` (what server-side mask
decoding must do to match Meta):

- Coordinates are ``(x, y)`` in the 1024x1024 model frame in both; both add 0.5 (pixel centre) and
  divide by 1024 inside the prompt encoder. Meta takes points ``[B,N,2]`` and labels ``[B,N]``;
  ``transformers`` takes ``input_points [B,P,N,2]`` and ``input_labels [B,P,N]``, P prompts per
  image each giving its own masks.
- Labels agree: 1 foreground click, 0 background click, 2 and 3 box top-left and bottom-right
  corners, -1 "not a point" (its positional encoding is replaced by ``not_a_point_embed``).
- Padding: Meta's predictor passes boxes as two points labelled 2, 3 *before* the clicks, and its
  prompt encoder always appends one ``(0, 0)`` point labelled -1. ``transformers`` appends that
  same -1 point itself whenever ``input_boxes`` is ``None``. So passing Meta's point list (boxes as
  labels 2/3 first, no padding) as ``input_points`` gives the identical token sequence; adding the
  -1 point yourself would add a second one and change the masks.
- ``transformers`` adds a label of its own, -10, for padding ragged prompt batches: that token's
  embedding becomes all zeros, but the token stays in the attention, so it is *not* neutral (see
  :func:`test_minus_ten_padding_is_not_neutral`). Meta has no such label. To match Meta, batch only
  prompts with the same number of points, or decode them separately.
- ``input_boxes [B,P,4]`` is embedded as corner, corner, not-a-point and placed *after* the clicks,
  and then the clicks get no -1 point: the same tokens as Meta's in another order. The two-way
  transformer has no token-order encoding, so masks agree to rounding (tested below).
- Outputs: low-resolution mask logits ``[..,3,256,256]`` (tokens 1 to 3 with
  ``multimask_output=True``) and sigmoid IoU predictions ``[..,3]``. Meta's predictor clamps the
  low-resolution logits it returns to [-32, 32]; the decoder outputs compared here are unclamped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from checkpoints import meta_decode, meta_set_image, randomise_, relative_error
from transformers import Sam2Model

from imgembed.models.sam2 import Sam2Features, encode_images
from imgembed.models.sam2_loading import load_sam2
from imgembed.models.sam2_registry import list_variants
from imgembed.models.sam2_variants import Sam2Variant

pytestmark = pytest.mark.parity
build_sam = pytest.importorskip("sam2.build_sam", reason="Meta's sam2 package is test-only")

CPU = torch.device("cpu")
TOLERANCE = 1e-4
MISTAKE_EFFECT = 10 * TOLERANCE
"""Least relative change a negative control must cause: ten times what the parity checks allow."""
POINT = (407.3, 611.8)
BOX = (120.5, 210.25, 760.0, 905.75)
PROMPTS = {
    # name: (Meta-layout points [N,2] in the 1024 frame, labels [N])
    "point": ([POINT], [1]),
    "box": ([BOX[:2], BOX[2:]], [2, 3]),
    "point_and_box": ([BOX[:2], BOX[2:], POINT], [2, 3, 1]),
}


def normalised_image(seed: int) -> torch.Tensor:
    """A ``[1,3,1024,1024]`` float32 image in [0, 1], normalised with ImageNet mean and std."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand((1, 3, 1024, 1024), generator=generator)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (pixels - mean) / std


@torch.inference_mode()
def transformers_decode(
    model: Sam2Model, features: Sam2Features, **prompt: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Sam2Model`` on precomputed features, for one prompt of one image.

    Returns:
        Mask logits ``[1,3,256,256]``, IoU predictions ``[1,3]``, object score logits ``[1,1]``.
    """
    output = model(
        image_embeddings=[
            features.high_res_feats_0,
            features.high_res_feats_1,
            features.image_embed,
        ],
        multimask_output=True,
        **prompt,
    )
    # [1,P=1,...] -> [1,...]
    return output.pred_masks[:, 0], output.iou_scores[:, 0], output.object_score_logits[:, 0]


@dataclass(frozen=True)
class ParityCase:
    """One configuration: both models on identical weights, and their features of one image."""

    variant: Sam2Variant
    meta_model: torch.nn.Module
    model: Sam2Model
    image: torch.Tensor
    meta_features: Sam2Features
    features: Sam2Features


@pytest.fixture(scope="module", params=list_variants(), ids=lambda variant: variant.name)
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ParityCase:
    """Builds, loads and encodes once per configuration; tests of one configuration share it."""
    variant: Sam2Variant = request.param
    seed = list_variants().index(variant)
    meta_model = build_sam.build_sam2(variant.meta_config, ckpt_path=None, device="cpu")
    randomise_(meta_model.state_dict(), seed)
    checkpoint = tmp_path_factory.mktemp(variant.name) / variant.meta_checkpoint
    torch.save({"model": meta_model.state_dict()}, checkpoint)
    loaded = load_sam2(variant.name, str(checkpoint), variant.meta_config, device=CPU)
    checkpoint.unlink()
    image = normalised_image(seed)
    return ParityCase(
        variant=variant,
        meta_model=meta_model,
        model=loaded.model,
        image=image,
        meta_features=meta_set_image(meta_model, image),
        features=encode_images(loaded.model, image),
    )


def test_encoder_matches_meta(case: ParityCase) -> None:
    for name, expected_shape in (
        ("image_embed", (1, 256, 64, 64)),
        ("high_res_feats_0", (1, 32, 256, 256)),
        ("high_res_feats_1", (1, 64, 128, 128)),
    ):
        actual = getattr(case.features, name)
        expected = getattr(case.meta_features, name)
        assert actual.shape == expected.shape == expected_shape, name
        assert actual.dtype == expected.dtype == torch.float32, name
        assert relative_error(actual, expected) < TOLERANCE, name


def _meta_prompt(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A prompt in Meta's layout: points ``[1,N,2]`` float32 and labels ``[1,N]`` int32."""
    points, labels = PROMPTS[name]
    return torch.tensor([points], dtype=torch.float32), torch.tensor([labels], dtype=torch.int32)


def _assert_decoders_agree(
    actual: tuple[torch.Tensor, ...], expected: tuple[torch.Tensor, ...]
) -> None:
    masks, iou, object_score = actual
    expected_masks, expected_iou, expected_object_score = expected
    assert masks.shape == expected_masks.shape == (1, 3, 256, 256)
    assert relative_error(masks, expected_masks) < TOLERANCE
    assert (iou - expected_iou).abs().max().item() < TOLERANCE
    assert (object_score - expected_object_score).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_decoder_matches_meta_with_meta_layout(case: ParityCase, prompt: str) -> None:
    points, labels = _meta_prompt(prompt)
    expected = meta_decode(case.meta_model, case.meta_features, points, labels)
    # [1,N,2] -> [1,P=1,N,2] and [1,N] -> [1,P=1,N]; transformers appends the -1 point itself.
    actual = transformers_decode(
        case.model, case.features, input_points=points[:, None], input_labels=labels[:, None]
    )
    _assert_decoders_agree(actual, expected)


@pytest.mark.parametrize("prompt", ["box", "point_and_box"])
def test_decoder_matches_meta_with_input_boxes(case: ParityCase, prompt: str) -> None:
    points, labels = _meta_prompt(prompt)
    expected = meta_decode(case.meta_model, case.meta_features, points, labels)
    clicks = {}
    if prompt == "point_and_box":
        # The click alone, [1,P=1,1,2] and [1,P=1,1]: no -1 point is added when a box is given.
        clicks = {"input_points": points[:, None, 2:], "input_labels": labels[:, None, 2:]}
    box = torch.tensor([[BOX]], dtype=torch.float32)  # [1,P=1,4]
    actual = transformers_decode(case.model, case.features, input_boxes=box, **clicks)
    _assert_decoders_agree(actual, expected)


def test_minus_ten_padding_is_not_neutral(case: ParityCase) -> None:
    """A click padded with transformers' -10 label does not decode like the click alone."""
    points, labels = _meta_prompt("point")
    expected = meta_decode(case.meta_model, case.meta_features, points, labels)
    padded_points = torch.cat([points, torch.zeros(1, 1, 2)], dim=1)  # [1,2,2]
    padded_labels = torch.tensor([[1, -10]], dtype=torch.int32)
    masks, _, _ = transformers_decode(
        case.model,
        case.features,
        input_points=padded_points[:, None],
        input_labels=padded_labels[:, None],
    )
    assert relative_error(masks, expected[0]) > MISTAKE_EFFECT


def _swap_rows_(parameter: torch.Tensor, first: int, second: int) -> None:
    """Swaps two rows of a weight in place, the effect of mapping them the wrong way round."""
    with torch.no_grad():
        parameter[[first, second]] = parameter[[second, first]]


@pytest.mark.parametrize(
    "mistake",
    ["point_embed_box_corners_swapped", "hypernetwork_mlps_swapped", "no_mask_embed_zeroed"],
)
def test_decoder_check_catches_mapping_mistakes(case: ParityCase, mistake: str) -> None:
    """Negative control: with these weights a plausible conversion mistake fails the check."""
    model = copy.deepcopy(case.model)
    decoder, prompt_encoder = model.mask_decoder, model.prompt_encoder
    with torch.no_grad():
        if mistake == "point_embed_box_corners_swapped":
            _swap_rows_(prompt_encoder.point_embed.weight, 2, 3)
        elif mistake == "hypernetwork_mlps_swapped":
            first, second = (
                decoder.output_hypernetworks_mlps[1],
                decoder.output_hypernetworks_mlps[2],
            )
            decoder.output_hypernetworks_mlps[1], decoder.output_hypernetworks_mlps[2] = (
                second,
                first,
            )
        else:
            prompt_encoder.no_mask_embed.weight.zero_()
    points, labels = _meta_prompt("point_and_box")
    expected = meta_decode(case.meta_model, case.meta_features, points, labels)
    masks, _, _ = transformers_decode(
        model, case.features, input_points=points[:, None], input_labels=labels[:, None]
    )
    assert relative_error(masks, expected[0]) > MISTAKE_EFFECT


@pytest.fixture(scope="module")
def tiny_model_and_features() -> tuple[Sam2Model, torch.Tensor, Sam2Features]:
    """A tiny model with the parity weights' statistics, an image, and its features."""
    model = load_sam2("sam2.1-hiera-tiny", "dummy", device=CPU).model
    randomise_(model.state_dict(), seed=99)
    image = normalised_image(seed=99)
    return model, image, encode_images(model, image)


@pytest.mark.parametrize("mistake", ["no_memory_embedding_zeroed", "first_layer_norms_swapped"])
def test_encoder_check_catches_mapping_mistakes(
    tiny_model_and_features: tuple[Sam2Model, torch.Tensor, Sam2Features], mistake: str
) -> None:
    """Negative control: a wrong ``no_mem_embed`` or a mix-up in the first Hiera block shows up
    in the encoder features far above the tolerance, so the parity check would catch it."""
    model, image, features = tiny_model_and_features
    model = copy.deepcopy(model)
    blocks = model.vision_encoder.backbone.blocks
    with torch.no_grad():
        if mistake == "no_memory_embedding_zeroed":
            model.no_memory_embedding.zero_()
        else:
            first, second = blocks[0].layer_norm1.weight, blocks[1].layer_norm1.weight
            first_values = first.clone()
            first.copy_(second)
            second.copy_(first_values)
    corrupted = encode_images(model, image)
    assert relative_error(corrupted.image_embed, features.image_embed) > MISTAKE_EFFECT
    if mistake == "first_layer_norms_swapped":
        assert (
            relative_error(corrupted.high_res_feats_0, features.high_res_feats_0) > MISTAKE_EFFECT
        )
