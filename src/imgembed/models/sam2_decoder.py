"""SAM 2 prompt decoding: features and prompts in, low-resolution mask logits and IoU scores out.

Stateless: the model, the features and the prompts are passed in; nothing is kept between calls.

The semantics are those of the decoder graph that samexporter's ``export_sam2`` writes to ONNX (the
``sam2_decoder`` that browser clients and Triton model repositories run), so a client can switch
between that graph and this function without changing what it sends or what it reads back:

- Inputs ``point_coords [B,N,2]``, ``point_labels [B,N]``, ``mask_input [B,1,256,256]``,
  ``has_mask_input [B]``, plus the three encoder features.
- Points are ``(x, y)`` in the 1024x1024 model frame, exactly what Meta's predictor passes to its
  prompt encoder after scaling (``x' = x / W * 1024``); the half-pixel shift to the pixel centre and
  the division by 1024 happen inside the prompt encoder. One ``(0, 0)`` point labelled -1 is always
  appended, as Meta's prompt encoder does when no box tensor is given: boxes travel as two corner
  points labelled 2 and 3, and clients pad prompts of unequal length with points labelled -1.
- ``has_mask_input`` blends the mask embedding with the "no mask" embedding per prompt:
  ``dense = has * embed(mask_input) + (1 - has) * no_mask_embed``. With values 0 and 1 that is
  Meta's predictor without and with ``mask_input``.
- Output: the three multimask logits (tokens 1 to 3) and their IoU predictions by default (the
  exported graph always returns those); with ``multimask_output=False`` one mask per prompt, chosen
  as Meta's predictor chooses it (the single-mask token 0, replaced by the best of the three
  multimask outputs where its stability score is below the model's threshold:
  ``dynamic_multimask_via_stability``). The
  logits are the decoder's 256x256 low-resolution grid (stride 4 in the 1024 frame), clamped to
  [-32, 32] as Meta's predictor clamps the low-resolution masks it returns. They are not resized
  to the image: resize bilinearly (``align_corners=False``) to H x W and threshold at 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Sam2Model

from imgembed.models.sam2 import Sam2Features

LOW_RES_MASK_SIZE = 256
"""Side of the low-resolution mask grid, in cells; one cell is 4x4 pixels of the 1024 frame."""
NUM_MULTIMASK_OUTPUTS = 3
"""Masks returned per prompt."""
MASK_LOGIT_LIMIT = 32.0
"""Mask logits are clamped to ``[-MASK_LOGIT_LIMIT, MASK_LOGIT_LIMIT]``."""
POINT_LABELS = (-1, 0, 1, 2, 3)
"""Valid labels: -1 padding (not a point), 0 background, 1 foreground, 2 and 3 box corners."""


@dataclass(frozen=True)
class Sam2MaskPrediction:
    """Masks decoded from prompts.

    Attributes:
        masks: ``[B,K,256,256]`` mask logits (K = 3, or 1 for single-mask output) in the
            low-resolution grid (stride 4 of the 1024 frame), clamped to [-32, 32]; positive
            means inside the object.
        iou_predictions: ``[B,K]`` the decoder's estimate of each mask's IoU, in [0, 1].
    """

    masks: torch.Tensor
    iou_predictions: torch.Tensor


def _check_batch(name: str, tensor: torch.Tensor, batch: int) -> None:
    if tensor.shape[0] not in (1, batch):
        raise ValueError(
            f"{name} has batch {tensor.shape[0]}; expected 1 (shared by every prompt) or {batch} "
            "(one per prompt, the batch of point_coords)"
        )


def check_decoder_inputs(
    features: Sam2Features,
    point_coords: torch.Tensor,
    point_labels: torch.Tensor,
    mask_input: torch.Tensor,
    has_mask_input: torch.Tensor,
) -> None:
    """Raises ``ValueError`` naming the tensor when shapes do not fit :func:`decode_masks`."""
    if point_coords.ndim != 3 or point_coords.shape[-1] != 2 or point_coords.shape[1] < 1:
        raise ValueError(
            f"point_coords must be [B,N,2] with N >= 1, got {list(point_coords.shape)}"
        )
    batch, num_points = point_coords.shape[:2]
    if tuple(point_labels.shape) != (batch, num_points):
        raise ValueError(
            f"point_labels must be [{batch},{num_points}] like point_coords, "
            f"got {list(point_labels.shape)}"
        )
    expected_sides = {
        "image_embed": features.image_embed,
        "high_res_feats_0": features.high_res_feats_0,
        "high_res_feats_1": features.high_res_feats_1,
        "mask_input": mask_input,
        "has_mask_input": has_mask_input,
    }
    for name, tensor in expected_sides.items():
        _check_batch(name, tensor, batch)
    mask_shape = (1, LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE)
    if mask_input.ndim != 4 or tuple(mask_input.shape[1:]) != mask_shape:
        raise ValueError(f"mask_input must be [B,1,256,256], got {list(mask_input.shape)}")
    if has_mask_input.ndim != 1:
        raise ValueError(f"has_mask_input must be [B], got {list(has_mask_input.shape)}")


@torch.inference_mode()
def decode_masks(
    model: Sam2Model,
    features: Sam2Features,
    point_coords: torch.Tensor,
    point_labels: torch.Tensor,
    mask_input: torch.Tensor,
    has_mask_input: torch.Tensor,
    *,
    multimask_output: bool = True,
    clamp: bool = True,
) -> Sam2MaskPrediction:
    """Decodes B prompts into three candidate masks each, or one.

    Every tensor must be on the model's device. A batch of 1 in the features, ``mask_input`` or
    ``has_mask_input`` is shared by all B prompts (one image, many prompts: encode once, decode
    many); otherwise item ``i`` of each goes with prompt ``i``.

    Args:
        model: A loaded SAM 2 model in eval mode; only its prompt encoder and mask decoder run.
        features: ``image_embed [1|B,256,64,64]``, ``high_res_feats_0 [1|B,32,256,256]`` and
            ``high_res_feats_1 [1|B,64,128,128]`` as :func:`~imgembed.models.sam2.encode_images`
            returns them (decoder convolutions and ``no_mem_embed`` already applied).
        point_coords: ``[B,N,2]`` float ``(x, y)`` in the 1024x1024 model frame, N >= 1; boxes as
            two points (top-left labelled 2, bottom-right labelled 3).
        point_labels: ``[B,N]`` integer labels from :data:`POINT_LABELS`; pad prompts with fewer
            points with any coordinates labelled -1.
        mask_input: ``[1|B,1,256,256]`` float mask logits from an earlier round (one channel of
            :attr:`Sam2MaskPrediction.masks`); ignored where ``has_mask_input`` is 0.
        has_mask_input: ``[1|B]`` float, 1 to use ``mask_input``, 0 to ignore it.
        multimask_output: Three candidates per prompt; ``False`` for one, with the stability
            fallback described in the module docstring.
        clamp: Clamp the logits to ±32 (the exported graph's and Meta's returned low-resolution
            masks). ``False`` gives the raw logits, which Meta's predictor upscales to the image
            (clamping before a bilinear upscale can flip pixels near strong edges).

    Returns:
        ``[B,K,256,256]`` mask logits (clamped unless ``clamp`` is false) and ``[B,K]`` IoU
        predictions (K = 3, or 1 without ``multimask_output``), in the dtype the computation ran
        in, on the model's device.

    Raises:
        ValueError: A tensor's shape does not fit; the message names it.
    """
    check_decoder_inputs(features, point_coords, point_labels, mask_input, has_mask_input)
    batch = point_coords.shape[0]
    prompt_encoder = model.prompt_encoder
    # transformers takes P prompts per image: [B,N,2] -> [B,P=1,N,2], [B,N] -> [B,P=1,N]. With no
    # input_boxes it appends the (0, 0) point labelled -1 itself, as Meta's prompt encoder does.
    sparse_embeddings, _ = prompt_encoder(
        input_points=point_coords[:, None],
        input_labels=point_labels[:, None].long(),
        input_boxes=None,
        input_masks=None,
    )  # [B,1,N+1,256]
    mask_embedding = prompt_encoder.mask_embed(mask_input)  # [1|B,256,64,64]
    no_mask_embedding = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)  # [1,256,1,1]
    has_mask = has_mask_input.to(mask_embedding.dtype).reshape(-1, 1, 1, 1)  # [1|B] -> [1|B,1,1,1]
    dense_embeddings = has_mask * mask_embedding + (1 - has_mask) * no_mask_embedding
    dense_embeddings = dense_embeddings.expand(batch, -1, -1, -1)  # [B,256,64,64]
    positional = model.get_image_wide_positional_embeddings()  # [1,256,64,64]
    masks, iou_predictions, _, _ = model.mask_decoder(
        image_embeddings=features.image_embed.expand(batch, -1, -1, -1),
        image_positional_embeddings=positional.expand(batch, -1, -1, -1),
        sparse_prompt_embeddings=sparse_embeddings,
        dense_prompt_embeddings=dense_embeddings,
        multimask_output=multimask_output,
        high_resolution_features=[
            features.high_res_feats_0.expand(batch, -1, -1, -1),
            features.high_res_feats_1.expand(batch, -1, -1, -1),
        ],
    )  # masks [B,1,K,256,256], iou_predictions [B,1,K]
    masks = masks[:, 0]  # [B,1,K,256,256] -> [B,K,256,256]
    if clamp:
        masks = masks.clamp(-MASK_LOGIT_LIMIT, MASK_LOGIT_LIMIT)
    return Sam2MaskPrediction(masks=masks, iou_predictions=iou_predictions[:, 0])  # iou -> [B,K]
