"""Removing work ``transformers.Sam2Model`` does that the image encoder's outputs never use.

Two pieces of transformers 5's SAM 2 image path compute values nobody reads (measured in
``benchmarks/sam2_encoder_variants.py``, about 3 % of a CPU forward each):

- every Hiera attention computes a full softmax(Q K^T) score matrix, then discards it and runs
  the real attention;
- the FPN neck rebuilds sine position encodings for every level on every call (its one-entry cache
  never hits with four sizes), which image features do not need.

:func:`fpn_features` is the neck without the position encodings; :func:`streamline_attention`
rebinds each Hiera attention module's ``forward`` to one without the discarded scores. Outputs
are identical (the parity tests compare them with Meta's model bit for bit).
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812
from transformers import Sam2Model
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.sam2 import modeling_sam2


def fpn_features(model: Sam2Model, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """Backbone and FPN neck of the SAM 2 image encoder, without position encodings.

    Args:
        model: A SAM 2 model.
        pixel_values: ``[B,3,1024,1024]`` normalised images.

    Returns:
        The FPN levels the mask decoder uses, finest first, ``[B,256,H,W]`` each: H = 256, 128, 64
        (before ``conv_s0``/``conv_s1`` and ``no_memory_embedding``).
    """
    vision = model.vision_encoder
    neck = vision.neck
    stages = vision.backbone(pixel_values).intermediate_hidden_states  # [B,H,W,C] per stage
    last = len(neck.convs) - 1
    levels: list[torch.Tensor] = []
    previous: torch.Tensor | None = None
    # Top-down: coarsest stage first, each finer level adds the upsampled coarser one.
    for stage_index in range(last, -1, -1):
        conv = neck.convs[last - stage_index]
        stage = stages[stage_index].permute(0, 3, 1, 2)  # [B,H,W,C] -> [B,C,H,W]
        lateral = conv(stage.to(conv.weight.dtype))
        if previous is None or stage_index not in neck.fpn_top_down_levels:
            previous = lateral
        else:
            upsampled = F.interpolate(previous.to(torch.float32), scale_factor=2.0, mode="nearest")
            previous = lateral + upsampled.to(lateral.dtype)
        levels.append(previous)
    return levels[-vision.num_feature_levels :][::-1]


def _attention_forward(
    self: modeling_sam2.Sam2MultiScaleAttention, hidden_states: torch.Tensor, **kwargs: object
) -> torch.Tensor:
    """``Sam2MultiScaleAttention.forward`` without its unused score matrix.

    Args:
        hidden_states: ``[B,H,W,C]`` tokens of one window or the whole map.

    Returns:
        ``[B,H',W',C_out]``: H', W' are H, W divided by the query stride when pooling.
    """
    batch_size, height, width, _ = hidden_states.shape
    qkv = self.qkv(hidden_states).reshape(  # [B,H,W,3C] -> [B,H*W,3,heads,C/heads]
        batch_size, height * width, 3, self.num_attention_heads, -1
    )
    query, key, value = torch.unbind(qkv, 2)  # [B,H*W,heads,C/heads] each
    if self.query_stride:
        pooled = modeling_sam2.do_pool(
            query.reshape(batch_size, height, width, -1), self.query_stride
        )  # [B,H,W,C] -> [B,H',W',C]
        height, width = pooled.shape[1:3]
        query = pooled.reshape(batch_size, height * width, self.num_attention_heads, -1)
    attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, modeling_sam2.eager_attention_forward
    )
    output, _ = attention(
        self,
        query.transpose(1, 2),  # -> [B,heads,H'*W',C/heads]
        key.transpose(1, 2),
        value.transpose(1, 2),
        attention_mask=None,
        is_causal=self.is_causal,
        scaling=self.scale,
        **kwargs,
    )
    return self.proj(output.reshape(batch_size, height, width, -1))  # -> [B,H',W',C_out]


def streamline_attention(model: Sam2Model) -> int:
    """Rebinds every Hiera attention module's ``forward`` to :func:`_attention_forward`.

    Returns:
        How many modules were rebound.
    """
    count = 0
    for module in model.vision_encoder.backbone.modules():
        if isinstance(module, modeling_sam2.Sam2MultiScaleAttention):
            module.forward = types.MethodType(_attention_forward, module)
            count += 1
    return count
