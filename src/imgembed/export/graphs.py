"""Thin ``torch.nn.Module`` shells around the stateless SAM 2 functions, for graph export.

The math is :func:`~imgembed.models.sam2.encode_images` and
:func:`~imgembed.models.sam2_decoder.decode_masks`, unchanged; these modules only fix the tensor
names and order of :mod:`imgembed.export.sam2_io` and make the decoder's "batch 1 or B" inputs
explicit, so an exported graph computes what imgembed's PyTorch path computes.
"""

from __future__ import annotations

import torch
from transformers import Sam2Model

from imgembed.models.sam2 import Sam2Features, encode_images
from imgembed.models.sam2_decoder import decode_masks


class Sam2EncoderGraph(torch.nn.Module):
    """``image [B,3,1024,1024]`` to ``(high_res_feats_0, high_res_feats_1, image_embed)``."""

    def __init__(self, model: Sam2Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encodes a batch of images.

        Args:
            image: ``[B,3,1024,1024]`` normalised images.

        Returns:
            ``high_res_feats_0 [B,32,256,256]``, ``high_res_feats_1 [B,64,128,128]`` and
            ``image_embed [B,256,64,64]``, float32, as
            :class:`~imgembed.models.sam2.Sam2Features` describes them.
        """
        features = encode_images(self.model, image)
        return features.high_res_feats_0, features.high_res_feats_1, features.image_embed


def _one_per_prompt(tensor: torch.Tensor, prompts: int) -> torch.Tensor:
    """Item ``min(i, len - 1)`` for each prompt ``i``: a batch of 1 is shared by every prompt, a
    batch of ``prompts`` pairs item ``i`` with prompt ``i``.

    Written with tensors only (no Python arithmetic on the batch sizes), so an exported graph keeps
    both batch sizes dynamic and needs no branch on them.

    Args:
        tensor: ``[1|P,...]``.
        prompts: P.

    Returns:
        ``[P,...]``.
    """
    positions = torch.arange(prompts, device=tensor.device)  # [P]
    last = torch.arange(tensor.shape[0], device=tensor.device)[-1]  # [] = len - 1
    return tensor.index_select(0, torch.minimum(positions, last))


class Sam2DecoderGraph(torch.nn.Module):
    """samexporter's decoder signature over :func:`~imgembed.models.sam2_decoder.decode_masks`.

    Inputs ``image_embed, high_res_feats_0, high_res_feats_1, point_coords, point_labels,
    mask_input, has_mask_input``; outputs ``masks, iou_predictions``. ``point_labels`` is float
    (as in samexporter's graph and on the v2 wire) and is cast to integers here.
    """

    def __init__(self, model: Sam2Model, *, multimask_output: bool = True) -> None:
        super().__init__()
        self.model = model
        self.multimask_output = multimask_output

    def forward(
        self,
        image_embed: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decodes B prompts.

        Args:
            image_embed: ``[1|B,256,64,64]``.
            high_res_feats_0: ``[1|B,32,256,256]``.
            high_res_feats_1: ``[1|B,64,128,128]``.
            point_coords: ``[B,N,2]`` ``(x, y)`` in the 1024x1024 input frame.
            point_labels: ``[B,N]`` float labels (-1, 0, 1, 2, 3).
            mask_input: ``[1|B,1,256,256]`` mask logits.
            has_mask_input: ``[1|B]`` 1 to use ``mask_input``, 0 to ignore it.

        Returns:
            ``masks [B,K,256,256]`` clamped logits in the 256x256 low-resolution grid (stride 4 of
            the 1024 frame) and ``iou_predictions [B,K]``; K = 3, or 1 for a single-mask graph.
        """
        prompts = point_coords.shape[0]
        features = Sam2Features(
            image_embed=_one_per_prompt(image_embed, prompts),
            high_res_feats_0=_one_per_prompt(high_res_feats_0, prompts),
            high_res_feats_1=_one_per_prompt(high_res_feats_1, prompts),
        )
        prediction = decode_masks(
            self.model,
            features,
            point_coords,
            point_labels.to(torch.int64),
            _one_per_prompt(mask_input, prompts),
            _one_per_prompt(has_mask_input, prompts),
            multimask_output=self.multimask_output,
        )
        return prediction.masks, prediction.iou_predictions
