"""The inputs and outputs of the exported SAM 2 graphs, as data.

Names, order and meaning are those of samexporter's ``export_sam2`` graphs (what browser tools and
Triton repositories run today, seed 002) and of imgembed's own v2 models ``sam2_encoder`` /
``sam2_decoder`` (:mod:`imgembed.server.v2_models`), so features from any of them feed any decoder
by name. A dimension is a size, or the name of a dynamic axis.

Every exported graph takes all of its inputs as plain graph inputs, none of them also an
initializer: onnxruntime-web does not list an input that an initializer shadows and refuses a feed
for it, so a browser tool sending samexporter's seven decoder feeds (seed 002) must find seven
inputs. ``mask_input`` and ``has_mask_input`` may still be left out where a serving layer supplies
zeros (no mask) for them: imgembed's v2 ``sam2_decoder`` and the unbatched Triton decoder, whose
graph gets zero defaults written in (:func:`imgembed.export.onnx_export.write_with_input_defaults`).

Decoder batching: ``point_coords``/``point_labels`` carry B prompts. The features, ``mask_input``
and ``has_mask_input`` each have batch 1 (shared by all B prompts: one image, many prompts) or B
(item ``i`` with prompt ``i``); each has its own axis name because each may be 1 independently.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgembed.models.sam2 import (
    HIGH_RES_FEATS_0_SHAPE,
    HIGH_RES_FEATS_1_SHAPE,
    IMAGE_EMBED_SHAPE,
    SAM2_INPUT_SIZE,
)
from imgembed.models.sam2_decoder import LOW_RES_MASK_SIZE, NUM_MULTIMASK_OUTPUTS

Dimension = int | str
"""A fixed size, or the name of a dynamic axis."""


@dataclass(frozen=True)
class GraphTensor:
    """One input or output of an exported graph; every one is float32.

    Attributes:
        name: The tensor's name in the graph, in Triton's config and on the v2 wire.
        shape: Dimensions; a string names a dynamic axis.
        description: What the tensor holds, for the export metadata.
        zero_default: Whether a serving layer may let a caller leave the input out and feed
            zeros of :attr:`default_shape` instead; the exported graphs still require it.
    """

    name: str
    shape: tuple[Dimension, ...]
    description: str
    zero_default: bool = False

    @property
    def default_shape(self) -> tuple[int, ...]:
        """The shape of a zero default: 1 on every dynamic axis."""
        return tuple(size if isinstance(size, int) else 1 for size in self.shape)

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """Axis index to axis name, for every dynamic axis."""
        return {axis: size for axis, size in enumerate(self.shape) if isinstance(size, str)}


ENCODER_BATCH = "batch"
PROMPT_BATCH = "prompt_batch"
NUM_POINTS = "num_points"
FEATURE_BATCH = "feature_batch"
MASK_BATCH = "mask_batch"
HAS_MASK_BATCH = "has_mask_batch"

IMAGE = GraphTensor(
    "image",
    (ENCODER_BATCH, 3, SAM2_INPUT_SIZE, SAM2_INPUT_SIZE),
    "RGB in [0,1], resized to 1024x1024 (stretch, bilinear with antialias), normalised with "
    "ImageNet mean/std; NCHW.",
)

ENCODER_INPUTS = (IMAGE,)
ENCODER_OUTPUTS = (
    GraphTensor(
        "high_res_feats_0",
        (ENCODER_BATCH, *HIGH_RES_FEATS_0_SHAPE),
        "Level-0 FPN features after the mask decoder's conv_s0; stride 4 in the 1024 frame.",
    ),
    GraphTensor(
        "high_res_feats_1",
        (ENCODER_BATCH, *HIGH_RES_FEATS_1_SHAPE),
        "Level-1 FPN features after the mask decoder's conv_s1; stride 8 in the 1024 frame.",
    ),
    GraphTensor(
        "image_embed",
        (ENCODER_BATCH, *IMAGE_EMBED_SHAPE),
        "Level-2 FPN features plus no_mem_embed; stride 16 in the 1024 frame.",
    ),
)

_MASK_SIDES = (LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE)

DECODER_INPUTS = (
    GraphTensor(
        "image_embed", (FEATURE_BATCH, *IMAGE_EMBED_SHAPE), "Encoder output, batch 1 or B."
    ),
    GraphTensor(
        "high_res_feats_0",
        (FEATURE_BATCH, *HIGH_RES_FEATS_0_SHAPE),
        "Encoder output, batch 1 or B.",
    ),
    GraphTensor(
        "high_res_feats_1",
        (FEATURE_BATCH, *HIGH_RES_FEATS_1_SHAPE),
        "Encoder output, batch 1 or B.",
    ),
    GraphTensor(
        "point_coords",
        (PROMPT_BATCH, NUM_POINTS, 2),
        "(x, y) in the 1024x1024 input frame: x' = x / W * 1024, y' = y / H * 1024 for a "
        "stretched image; boxes as two points (top-left, bottom-right).",
    ),
    GraphTensor(
        "point_labels",
        (PROMPT_BATCH, NUM_POINTS),
        "1 foreground, 0 background, 2 box top-left, 3 box bottom-right, -1 padding.",
    ),
    GraphTensor(
        "mask_input",
        (MASK_BATCH, 1, *_MASK_SIDES),
        "Mask logits from an earlier round (one channel of masks); batch 1 or B; zeros when there is none.",
        zero_default=True,
    ),
    GraphTensor(
        "has_mask_input",
        (HAS_MASK_BATCH,),
        "1 to use mask_input, 0 to ignore it; batch 1 or B.",
        zero_default=True,
    ),
)


def decoder_outputs(masks_per_prompt: int) -> tuple[GraphTensor, GraphTensor]:
    """The decoder's outputs for ``masks_per_prompt`` masks (3 multimask, or 1)."""
    return (
        GraphTensor(
            "masks",
            (PROMPT_BATCH, masks_per_prompt, *_MASK_SIDES),
            "Low-resolution mask logits clamped to [-32, 32], stride 4 in the 1024 frame; resize "
            "bilinearly (align_corners=False) to H x W and threshold at 0.",
        ),
        GraphTensor(
            "iou_predictions",
            (PROMPT_BATCH, masks_per_prompt),
            "The decoder's estimate of each mask's IoU.",
        ),
    )


DECODER_OUTPUTS = decoder_outputs(NUM_MULTIMASK_OUTPUTS)
SINGLE_MASK_DECODER_OUTPUTS = decoder_outputs(1)
