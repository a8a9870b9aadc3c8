"""SigLIP 2 embedding math: pixels or token ids in, L2-normalised embeddings out.

Stateless: the model is passed in, embeddings are returned, nothing is kept between calls. Image
and text embeddings live in one space (SigLIP's contrastive training), so after normalisation the
dot product of an image and a text embedding is their cosine similarity, and
``sigmoid(logit_scale.exp() * cosine + logit_bias)`` is the model's match probability.
"""

from __future__ import annotations

import torch
from transformers import Siglip2Model, SiglipModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

NORM_EPSILON = 1e-12
"""Smallest norm divided by; only an all-zero embedding gets near it."""


def l2_normalise(embeddings: torch.Tensor) -> torch.Tensor:
    """Scales each row to unit length, in float32.

    Args:
        embeddings: ``[B,D]`` of any floating dtype, on any device.

    Returns:
        ``[B,D]`` float32 on the same device, each row of norm 1 (up to float32 rounding).
    """
    as_float = embeddings.to(torch.float32)
    norms = torch.linalg.vector_norm(as_float, dim=-1, keepdim=True)  # [B,1]
    return as_float / norms.clamp_min(NORM_EPSILON)


def _pooled(output: torch.Tensor | BaseModelOutputWithPooling) -> torch.Tensor:
    """The ``[B,D]`` embedding from a ``get_*_features`` result (a tensor in ``transformers`` 4,
    an output whose ``pooler_output`` it is in ``transformers`` 5)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = output.pooler_output
    assert pooled is not None, "SigLIP's vision and text towers always pool"
    return pooled


@torch.inference_mode()
def embed_images(model: SiglipModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """Image embeddings of a FixRes model.

    Args:
        model: A FixRes SigLIP 2 model (``SiglipModel``).
        pixel_values: ``[B,3,S,S]`` float, S the model's image size, normalised as
            :func:`imgembed.preprocess.siglip_pixels.fixres_pixel_values` makes it, on the
            model's device.

    Returns:
        ``[B,D]`` float32, each row of norm 1, on the model's device; D is the model's embedding
        size (768 base, 1024 large, 1152 so400m, 1536 giant-opt).
    """
    return l2_normalise(_pooled(model.get_image_features(pixel_values=pixel_values)))


@torch.inference_mode()
def embed_images_naflex(
    model: Siglip2Model,
    pixel_values: torch.Tensor,
    pixel_attention_mask: torch.Tensor,
    spatial_shapes: torch.Tensor,
) -> torch.Tensor:
    """Image embeddings of a NaFlex model.

    Args:
        model: A NaFlex SigLIP 2 model (``Siglip2Model``).
        pixel_values: ``[B,N,P*P*3]`` float, N the padded patch count; each row one patch,
            pixels in (row, column, channel) order, normalised.
        pixel_attention_mask: ``[B,N]`` integer, 1 for real patches, 0 for padding.
        spatial_shapes: ``[B,2]`` int64, each image's patch grid (rows, columns).

    Returns:
        ``[B,D]`` float32, each row of norm 1, on the model's device.
    """
    output = model.get_image_features(
        pixel_values=pixel_values,
        pixel_attention_mask=pixel_attention_mask,
        spatial_shapes=spatial_shapes,
    )
    return l2_normalise(_pooled(output))


@torch.inference_mode()
def embed_texts(model: SiglipModel | Siglip2Model, input_ids: torch.Tensor) -> torch.Tensor:
    """Text embeddings, in the same space as the image embeddings.

    No attention mask is passed: SigLIP was trained on texts padded to a fixed length with the
    padding attended to, and its released tokenizers return ``input_ids`` only.

    Args:
        model: A SigLIP 2 model of either family.
        input_ids: ``[B,L]`` int64 token ids, L the model's text length (64), each text padded on
            the right, on the model's device.

    Returns:
        ``[B,D]`` float32, each row of norm 1, on the model's device.
    """
    return l2_normalise(_pooled(model.get_text_features(input_ids=input_ids)))
