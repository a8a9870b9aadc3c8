"""The exported graphs on ONNX Runtime against imgembed's PyTorch path, on identical weights.

Features: relative L2 under 1e-4 per map. Decoder: mask agreement (same side of 0) over 99.9 %
and IoU predictions within 1e-4, for clicks, boxes (points labelled 2 and 3), -1 padding, mask
prompts, many prompts on one image's features, one image per prompt, and a dynamic number of
points and prompts. The float32 graphs were traced at batch 2, 3 prompts and 4 points; other sizes
prove the axes are dynamic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import relative_error

from imgembed.export.onnx_backend import OnnxRuntimeSettings, OnnxSam2Backend
from imgembed.export.onnx_export import ExportResult
from imgembed.models.sam2 import Sam2Features, encode_images
from imgembed.models.sam2_decoder import decode_masks
from imgembed.models.sam2_loading import LoadedSam2

pytestmark = pytest.mark.parity

FEATURE_TOLERANCE = 1e-4
MASK_AGREEMENT = 0.999
IOU_TOLERANCE = 1e-4
FEATURE_NAMES = ("image_embed", "high_res_feats_0", "high_res_feats_1")


def mask_agreement(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Share of mask cells on the same side of 0 (inside or outside the object)."""
    return ((actual > 0) == (expected > 0)).double().mean().item()


@pytest.fixture(scope="module")
def backend(onnx_export: ExportResult) -> OnnxSam2Backend:
    return OnnxSam2Backend(onnx_export, OnnxRuntimeSettings(provider="cpu"))


def test_features_match_pytorch(onnx_features: Sam2Features, torch_features: Sam2Features) -> None:
    for name in FEATURE_NAMES:
        error = relative_error(getattr(onnx_features, name), getattr(torch_features, name))
        assert error < FEATURE_TOLERANCE, f"{name}: relative L2 {error:.2e}"


def test_encoder_batch_is_dynamic(
    tiny: LoadedSam2, backend: OnnxSam2Backend, image_batch: torch.Tensor
) -> None:
    """Batch 3 (the graph was traced at 2): each image's features match PyTorch's."""
    onnx_features = backend.encode(image_batch.numpy())  # NumPy input is accepted too
    torch_features = encode_images(tiny.model, image_batch)
    assert onnx_features.image_embed.shape == (3, 256, 64, 64)
    for index in range(3):
        for name in FEATURE_NAMES:
            error = relative_error(
                getattr(onnx_features[index], name), getattr(torch_features[index], name)
            )
            assert error < FEATURE_TOLERANCE, f"image {index} {name}: relative L2 {error:.2e}"


@dataclass(frozen=True)
class Prompts:
    """Decoder inputs: ``[B,N,2]`` points, ``[B,N]`` labels, mask inputs of batch 1 or B."""

    point_coords: torch.Tensor
    point_labels: torch.Tensor
    mask_input: torch.Tensor
    has_mask_input: torch.Tensor


def _prompts(
    points: list[list[list[float]]],
    labels: list[list[int]],
    mask_input: torch.Tensor | None = None,
    has_mask: list[float] | None = None,
) -> Prompts:
    if mask_input is None:
        mask_input = torch.zeros(1, 1, 256, 256)
    return Prompts(
        point_coords=torch.tensor(points, dtype=torch.float32),
        point_labels=torch.tensor(labels, dtype=torch.int64),
        mask_input=mask_input,
        has_mask_input=torch.tensor(has_mask if has_mask is not None else [0.0]),
    )


def _mask_logits(count: int) -> torch.Tensor:
    """``[count,1,256,256]`` smooth logits with a blob, like a previous round's output."""
    rows = torch.linspace(-1, 1, 256)[:, None]
    cols = torch.linspace(-1, 1, 256)[None, :]
    blobs = [10 * (0.3 - ((rows - 0.2 * i) ** 2 + (cols + 0.1 * i) ** 2)) for i in range(count)]
    return torch.stack(blobs)[:, None]


PROMPT_CASES = {
    "one_click": _prompts([[[512.0, 384.0]]], [[1]]),
    "click_and_background_padded": _prompts(
        [[[407.3, 611.8], [100.0, 900.0], [0.0, 0.0]]], [[1, 0, -1]]
    ),
    "box": _prompts([[[120.5, 210.25], [760.0, 905.75]]], [[2, 3]]),
    "box_and_click": _prompts([[[120.5, 210.25], [760.0, 905.75], [407.3, 611.8]]], [[2, 3, 1]]),
    "mask_refinement": _prompts([[[300.0, 700.0]]], [[1]], _mask_logits(1), [1.0]),
    "five_prompts_one_image": _prompts(
        [
            [[10.0, 20.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
            [[1000.0, 1000.0], [30.0, 40.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
            [[100.0, 100.0], [900.0, 800.0], [500.0, 500.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
            [[1.0, 1023.0], [512.0, 0.5], [256.0, 768.0], [768.0, 256.0], [600.0, 60.0], [5, 5]],
            [[200.0, 300.0], [700.0, 800.0], [450.0, 550.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
        ],
        [
            [1, -1, -1, -1, -1, -1],
            [0, 1, -1, -1, -1, -1],
            [1, 0, 1, -1, -1, -1],
            [1, 1, 0, 0, 1, 0],
            [2, 3, 1, -1, -1, -1],
        ],
    ),
    "per_prompt_masks_mixed": _prompts(
        [[[300.0, 700.0], [0.0, 0.0]], [[600.0, 200.0], [610.0, 210.0]], [[50.0, 50.0], [0, 0]]],
        [[1, -1], [1, 1], [0, -1]],
        _mask_logits(3),
        [1.0, 0.0, 1.0],
    ),
}


def _decode_both(
    tiny: LoadedSam2,
    backend: OnnxSam2Backend,
    features: Sam2Features,
    prompts: Prompts,
    multimask_output: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    arguments = (
        features,
        prompts.point_coords,
        prompts.point_labels,
        prompts.mask_input,
        prompts.has_mask_input,
    )
    onnx = backend.decode(*arguments, multimask_output=multimask_output)
    reference = decode_masks(tiny.model, *arguments, multimask_output=multimask_output)
    return onnx.masks, onnx.iou_predictions, reference.masks, reference.iou_predictions


def _assert_close(
    masks: torch.Tensor, iou: torch.Tensor, ref_masks: torch.Tensor, ref_iou: torch.Tensor
) -> None:
    assert masks.shape == ref_masks.shape
    assert iou.shape == ref_iou.shape
    agreement = mask_agreement(masks, ref_masks)
    assert agreement > MASK_AGREEMENT, f"mask agreement {agreement:.5f}"
    # The masks are not trivially all inside or all outside, so agreement means something.
    inside = (ref_masks > 0).double().mean().item()
    assert 0.001 < inside < 0.999, f"reference masks are {inside:.1%} inside"
    assert (iou - ref_iou).abs().max().item() < IOU_TOLERANCE


@pytest.mark.parametrize("multimask_output", [True, False], ids=["three_masks", "single_mask"])
@pytest.mark.parametrize("case", list(PROMPT_CASES))
def test_decoder_matches_pytorch(
    tiny: LoadedSam2,
    backend: OnnxSam2Backend,
    torch_features: Sam2Features,
    case: str,
    multimask_output: bool,
) -> None:
    """Each prompt set on one image's features (batch 1, shared by every prompt)."""
    prompts = PROMPT_CASES[case]
    masks, iou, ref_masks, ref_iou = _decode_both(
        tiny, backend, torch_features, prompts, multimask_output
    )
    expected_masks = 3 if multimask_output else 1
    assert masks.shape == (prompts.point_coords.shape[0], expected_masks, 256, 256)
    _assert_close(masks, iou, ref_masks, ref_iou)


def test_decoder_one_image_per_prompt(
    tiny: LoadedSam2, backend: OnnxSam2Backend, torch_features: Sam2Features
) -> None:
    """Features of batch B pair item i with prompt i (here two different images' features)."""
    base = torch_features
    shifted = Sam2Features(
        image_embed=base.image_embed.flip(-1),
        high_res_feats_0=base.high_res_feats_0.flip(-1),
        high_res_feats_1=base.high_res_feats_1.flip(-1),
    )
    features = Sam2Features(
        image_embed=torch.cat([base.image_embed, shifted.image_embed]),
        high_res_feats_0=torch.cat([base.high_res_feats_0, shifted.high_res_feats_0]),
        high_res_feats_1=torch.cat([base.high_res_feats_1, shifted.high_res_feats_1]),
    )
    prompts = _prompts(
        [[[512.0, 384.0], [0.0, 0.0]], [[512.0, 384.0], [0.0, 0.0]]],
        [[1, -1], [1, -1]],
        _mask_logits(2),
        [0.0, 1.0],
    )
    masks, iou, ref_masks, ref_iou = _decode_both(tiny, backend, features, prompts, True)
    _assert_close(masks, iou, ref_masks, ref_iou)
    # Same prompt, different features: the pairing is real, not a broadcast of item 0.
    assert mask_agreement(masks[0], masks[1]) < 0.99


def test_decoder_on_onnx_features(
    tiny: LoadedSam2,
    backend: OnnxSam2Backend,
    onnx_features: Sam2Features,
    torch_features: Sam2Features,
) -> None:
    """End to end: exported encoder then exported decoder vs PyTorch encoder then decoder."""
    prompts = PROMPT_CASES["box_and_click"]
    onnx = backend.decode(
        onnx_features,
        prompts.point_coords,
        prompts.point_labels,
        prompts.mask_input,
        prompts.has_mask_input,
    )
    reference = decode_masks(
        tiny.model,
        torch_features,
        prompts.point_coords,
        prompts.point_labels,
        prompts.mask_input,
        prompts.has_mask_input,
    )
    _assert_close(onnx.masks, onnx.iou_predictions, reference.masks, reference.iou_predictions)


def test_mask_inputs_may_be_left_out_where_defaults_are_written(
    onnx_export: ExportResult, torch_features: Sam2Features, tmp_path: Path
) -> None:
    """With zero defaults written in (what Triton's unbatched decoder gets),
    ``mask_input``/``has_mask_input`` default to "no mask", as on imgembed's v2 decoder; the
    exported graph itself requires them (onnxruntime-web refuses shadowed inputs)."""
    import onnxruntime as ort

    from imgembed.export.onnx_export import write_with_input_defaults
    from imgembed.export.sam2_io import DECODER_INPUTS

    defaulted = tmp_path / "decoder_with_defaults.onnx"
    write_with_input_defaults(onnx_export.decoder_path, defaulted, DECODER_INPUTS)
    session = ort.InferenceSession(str(defaulted), providers=["CPUExecutionProvider"])
    features = {name: getattr(torch_features, name).numpy() for name in FEATURE_NAMES}
    prompts = {
        "point_coords": np.array([[[512.0, 384.0]], [[100.0, 900.0]]], np.float32),
        "point_labels": np.array([[1.0], [1.0]], np.float32),
    }
    left_out = session.run(None, {**features, **prompts})
    explicit = session.run(
        None,
        {
            **features,
            **prompts,
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
        },
    )
    for given, default in zip(explicit, left_out, strict=True):
        np.testing.assert_array_equal(given, default)
