"""SAM 2 image encoder math: pixels in, the three feature maps a SAM 2 mask decoder needs out.

Stateless: the model is passed in, features are returned, nothing is kept between calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Sam2Model

from imgembed.models.sam2_streamline import fpn_features

SAM2_INPUT_SIZE = 1024
"""Side of the square image the SAM 2 encoder takes, in pixels."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel mean SAM 2 normalises RGB in [0, 1] with (ImageNet's)."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel standard deviation SAM 2 normalises with (ImageNet's)."""

IMAGE_EMBED_SHAPE = (256, 64, 64)
HIGH_RES_FEATS_0_SHAPE = (32, 256, 256)
HIGH_RES_FEATS_1_SHAPE = (64, 128, 128)
FEATURE_STRIDE = 16
"""Pixels of the 1024 frame per cell of ``image_embed``."""


@dataclass(frozen=True)
class Sam2Features:
    """Encoder output exactly as Meta's ``SAM2ImagePredictor.set_image`` stores it.

    ``conv_s0``/``conv_s1`` of the mask decoder are already applied to the two high-resolution
    levels and ``no_mem_embed`` is already added to ``image_embed``, so a decoder consumes these as is.

    Attributes:
        image_embed: ``[B,256,64,64]``, stride 16 in the 1024 frame.
        high_res_feats_0: ``[B,32,256,256]``, stride 4 in the 1024 frame.
        high_res_feats_1: ``[B,64,128,128]``, stride 8 in the 1024 frame.
        ready: An event that completes once the tensors are computed, when they were computed
            on a CUDA stream that others read them from (set by the engine's encoder; a
            consumer on another stream waits on it). ``None``: nothing to wait for.
    """

    image_embed: torch.Tensor
    high_res_feats_0: torch.Tensor
    high_res_feats_1: torch.Tensor
    ready: Any = field(default=None, compare=False, repr=False)

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``image_embed``, ``high_res_feats_0``, ``high_res_feats_1``."""
        return (self.image_embed, self.high_res_feats_0, self.high_res_feats_1)

    def to(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> Sam2Features:
        """The same features converted to ``dtype`` on ``device``, without :attr:`ready`: the
        conversion is queued on the caller's current stream, so a consumer on another stream
        needs an event of that stream, not of the encoder's (the caller records one)."""
        return Sam2Features(
            image_embed=self.image_embed.to(device=device, dtype=dtype),
            high_res_feats_0=self.high_res_feats_0.to(device=device, dtype=dtype),
            high_res_feats_1=self.high_res_feats_1.to(device=device, dtype=dtype),
        )

    def __getitem__(self, index: int) -> Sam2Features:
        """Features of one batch item, keeping a batch axis of 1 (views of this batch's
        storage, ready when the batch is)."""
        return Sam2Features(
            image_embed=self.image_embed[index : index + 1],
            high_res_feats_0=self.high_res_feats_0[index : index + 1],
            high_res_feats_1=self.high_res_feats_1[index : index + 1],
            ready=self.ready,
        )


@torch.inference_mode()
def encode_images(model: Sam2Model, pixel_values: torch.Tensor) -> Sam2Features:
    """Runs the SAM 2 image encoder.

    Args:
        model: A loaded SAM 2 model in eval mode.
        pixel_values: ``[B,3,1024,1024]`` normalised images (ImageNet mean/std), on the model's
            device, in the model's parameter dtype (autocast, if any, is the caller's choice).

    Returns:
        Features for each image, in the dtype the computation produced, on the model's device.
    """
    if pixel_values.ndim != 4 or pixel_values.shape[1:] != (3, SAM2_INPUT_SIZE, SAM2_INPUT_SIZE):
        raise ValueError(
            f"pixel_values must be [B,3,{SAM2_INPUT_SIZE},{SAM2_INPUT_SIZE}], "
            f"got {list(pixel_values.shape)}"
        )
    # What Sam2Model.get_image_embeddings computes, without the position encodings it discards.
    level_0, level_1, level_2 = fpn_features(model, pixel_values)
    no_memory = model.no_memory_embedding.view(1, -1, 1, 1)  # [1,1,256] -> [1,256,1,1]
    return Sam2Features(
        image_embed=level_2 + no_memory,
        high_res_feats_0=model.mask_decoder.conv_s0(level_0),
        high_res_feats_1=model.mask_decoder.conv_s1(level_1),
    )
