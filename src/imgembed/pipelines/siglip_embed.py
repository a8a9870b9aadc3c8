"""SigLIP 2 embedding pipeline: prepare on CPU, embed on the device, finish on CPU.

Images: :func:`prepare_image` (intermediate reduction, resize, normalise, NaFlex patches: on the
CPU with Pillow, or on the model's device with the same arithmetic in torch) ->
:func:`encode_images` (device, batched) -> :func:`finish` (CPU: one numpy vector per image).
Texts: :func:`prepare_texts` (CPU: lower-case, tokenize, pad to 64) -> :func:`encode_texts` ->
:func:`finish`. The stages are separate so the engine can run CPU stages in a worker pool while the
device works on another batch. :func:`embed_images` and :func:`embed_texts` chain them for
callers without an engine (CLI, benchmarks, notebooks).

Every embedding is L2-normalised in float32 on the device before any dtype conversion, so the dot
product of two returned vectors (image-image or image-text) is their cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, Siglip2Model, SiglipModel

from imgembed.models import siglip as siglip_math
from imgembed.models.siglip_loading import LoadedSiglip
from imgembed.models.siglip_variants import TEXT_MAX_LENGTH, ImageProcessing
from imgembed.preprocess import siglip_tensor
from imgembed.preprocess.image import DecodedImage
from imgembed.preprocess.siglip_pixels import (
    MAX_INTERMEDIATE_SIDE,
    fixres_pixel_values,
    naflex_patches,
    reduce_long_side,
)
from imgembed.preprocess.siglip_text import tokenize_texts
from imgembed.runtime.device import DevicePlacement
from imgembed.runtime.staging import ImageStaging, claim_for_current_stream
from imgembed.settings import FeatureDtype

_TORCH_DTYPES: dict[FeatureDtype, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class SiglipEmbedOptions:
    """What a client asks of an image embedding.

    Attributes:
        dtype: Numeric type of the returned vectors (normalised in float32 first).
        max_intermediate_side: Long side above which an image is first box-reduced, the seed
            worker's 2048; ``None`` to resize from full resolution exactly as ``transformers``.
        max_num_patches: NaFlex patch budget instead of the model's (256); ignored by FixRes.
    """

    dtype: FeatureDtype = "float32"
    max_intermediate_side: int | None = MAX_INTERMEDIATE_SIDE
    max_num_patches: int | None = None


@dataclass(frozen=True)
class PreparedSiglipImage:
    """One image ready for the model, on the CPU or (prepared there) on the model's device.

    Attributes:
        pixel_values: FixRes ``[3,S,S]`` float32; NaFlex ``[N,P*P*3]`` float32 patches.
        attention_mask: NaFlex ``[N]`` int32, 1 for image patches; ``None`` for FixRes.
        spatial_shape: NaFlex patch grid ``(rows, columns)``; ``None`` for FixRes.
        original_hw: Height and width of the decoded image.
        reduced_hw: Height and width after the intermediate reduction (equal to
            ``original_hw`` when none was needed), before the model's own resize.
    """

    pixel_values: torch.Tensor
    attention_mask: torch.Tensor | None
    spatial_shape: tuple[int, int] | None
    original_hw: tuple[int, int]
    reduced_hw: tuple[int, int]


def prepare_image(
    image: DecodedImage,
    processing: ImageProcessing,
    options: SiglipEmbedOptions,
    staging: ImageStaging | None = None,
) -> PreparedSiglipImage:
    """Reduces, resizes and normalises a decoded image for the model (run on a CPU worker).

    Args:
        image: The decoded image.
        processing: The model's image settings (``LoadedSiglip.image_processing``).
        options: The client's options.
        staging: Where to do it: ``None`` on the CPU with Pillow; else the 8-bit pixels are
            uploaded to the staging's device and prepared there
            (:mod:`imgembed.preprocess.siglip_tensor`: the reduction as Pillow's, the resize
            within one 8-bit level of Pillow's), unless the model's resize filter is one only
            Pillow does (then on the CPU).

    Returns:
        The model input (on the CPU, or on the staging's device) and the sizes it went through.
    """
    if staging is not None and siglip_tensor.supported(processing):
        return staging.run(
            image.pixels, lambda pixels: _prepare_on_device(pixels, processing, options)
        )
    reduced = reduce_long_side(image.pixels, options.max_intermediate_side)  # [h,w,3] uint8
    sizes = {"original_hw": (image.height, image.width), "reduced_hw": reduced.shape[:2]}
    if processing.family == "fixres":
        pixel_values = fixres_pixel_values(reduced, processing, max_intermediate_side=None)
        return PreparedSiglipImage(pixel_values, None, None, **sizes)
    patches = naflex_patches(
        reduced, processing, max_num_patches=options.max_num_patches, max_intermediate_side=None
    )
    return PreparedSiglipImage(
        patches.pixel_values, patches.attention_mask, patches.spatial_shape, **sizes
    )


def _prepare_on_device(
    pixels: torch.Tensor, processing: ImageProcessing, options: SiglipEmbedOptions
) -> PreparedSiglipImage:
    """:func:`prepare_image`'s steps on ``[H,W,3]`` uint8 pixels already on the device."""
    reduced = siglip_tensor.reduce_long_side(pixels, options.max_intermediate_side)  # [h,w,3]
    sizes = {
        "original_hw": (int(pixels.shape[0]), int(pixels.shape[1])),
        "reduced_hw": (int(reduced.shape[0]), int(reduced.shape[1])),
    }
    if processing.family == "fixres":
        pixel_values = siglip_tensor.fixres_pixel_values(
            reduced, processing, max_intermediate_side=None
        )
        return PreparedSiglipImage(pixel_values, None, None, **sizes)
    patches = siglip_tensor.naflex_patches(
        reduced, processing, max_num_patches=options.max_num_patches, max_intermediate_side=None
    )
    return PreparedSiglipImage(
        patches.pixel_values, patches.attention_mask, patches.spatial_shape, **sizes
    )


def _stack_naflex(
    prepared: Sequence[PreparedSiglipImage], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NaFlex inputs as one batch on ``device``, images with fewer padded patches padded up to
    the most.

    Extra padding patches are masked out of attention and pooling, so they change nothing but
    float rounding.

    Returns:
        ``[B,N,P*P*3]`` float32 patches and ``[B,N]`` int32 mask on ``device`` (items on the host
        copied there), and ``[B,2]`` int64 grids on the host.
    """
    length = max(item.pixel_values.shape[0] for item in prepared)
    width = prepared[0].pixel_values.shape[1]
    pixel_values = torch.zeros((len(prepared), length, width), dtype=torch.float32, device=device)
    mask = torch.zeros((len(prepared), length), dtype=torch.int32, device=device)
    for index, item in enumerate(prepared):
        assert item.attention_mask is not None, "NaFlex input has a mask"
        count = item.pixel_values.shape[0]
        pixel_values[index, :count] = item.pixel_values
        mask[index, :count] = item.attention_mask
    shapes = torch.tensor([item.spatial_shape for item in prepared], dtype=torch.int64)  # [B,2]
    return pixel_values, mask, shapes


def encode_images(
    model: SiglipModel | Siglip2Model,
    placement: DevicePlacement,
    prepared: Sequence[PreparedSiglipImage],
) -> torch.Tensor:
    """Runs the vision tower on a batch of prepared images of one model (device stage).

    Args:
        model: The loaded model, on ``placement.device``.
        placement: Device and compute precision.
        prepared: One or more images from :func:`prepare_image` with this model's settings.

    Returns:
        ``[B,D]`` float32 on the device, each row of norm 1, in the order of ``prepared``.
    """
    if not prepared:
        raise ValueError("encode_images needs at least one image")
    device = placement.device
    # Inputs prepared on the device were made on a staging stream and are read on this one.
    claim_for_current_stream(item.pixel_values for item in prepared)
    claim_for_current_stream(
        item.attention_mask for item in prepared if item.attention_mask is not None
    )
    if prepared[0].spatial_shape is None:
        assert isinstance(model, SiglipModel), "FixRes input needs a FixRes model"
        on_device = [item.pixel_values.to(device, non_blocking=True) for item in prepared]
        batch = torch.stack(on_device)  # B x [3,S,S] -> [B,3,S,S]
        with placement.autocast():
            return siglip_math.embed_images(model, batch)
    assert isinstance(model, Siglip2Model), "NaFlex input needs a NaFlex model"
    pixel_values, mask, shapes = _stack_naflex(prepared, device)
    with placement.autocast():
        return siglip_math.embed_images_naflex(
            model,
            pixel_values.to(device, non_blocking=True),
            mask.to(device, non_blocking=True),
            shapes.to(device, non_blocking=True),
        )


def prepare_texts(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int = TEXT_MAX_LENGTH,
) -> torch.Tensor:
    """Lower-cases, tokenizes and pads texts (CPU stage).

    Returns:
        ``[B,max_length]`` int64 token ids on the CPU.

    Raises:
        InvalidInputError: Not a non-empty list of non-blank strings.
    """
    return tokenize_texts(tokenizer, texts, max_length=max_length)


def encode_texts(
    model: SiglipModel | Siglip2Model, placement: DevicePlacement, input_ids: torch.Tensor
) -> torch.Tensor:
    """Runs the text tower on a batch of token ids (device stage).

    Args:
        model: The loaded model, on ``placement.device``.
        placement: Device and compute precision.
        input_ids: ``[B,L]`` int64 from :func:`prepare_texts`.

    Returns:
        ``[B,D]`` float32 on the device, each row of norm 1.
    """
    with placement.autocast():
        return siglip_math.embed_texts(model, input_ids.to(placement.device, non_blocking=True))


def finish(embeddings: torch.Tensor, dtype: FeatureDtype = "float32") -> np.ndarray:
    """Moves embeddings to the CPU as numpy in the requested dtype (CPU stage).

    Args:
        embeddings: ``[D]`` or ``[B,D]`` float32 normalised embeddings, on any device.
        dtype: Numeric type of the result.

    Returns:
        The same shape as ``embeddings``; ``bfloat16`` is held as its raw ``uint16`` bit patterns
        (NumPy has no bfloat16).
    """
    converted = embeddings.detach().to(dtype=_TORCH_DTYPES[dtype]).cpu().contiguous()
    if dtype == "bfloat16":
        return converted.view(torch.int16).numpy().view(np.uint16)
    return converted.numpy()


def embed_images(
    loaded: LoadedSiglip,
    placement: DevicePlacement,
    images: Sequence[DecodedImage],
    options: SiglipEmbedOptions | None = None,
) -> np.ndarray:
    """All three image stages in one call, for callers without an engine.

    Returns:
        ``[B,D]`` in ``options.dtype`` (float32 by default), each row of norm 1.
    """
    chosen = options or SiglipEmbedOptions()
    prepared = [prepare_image(image, loaded.image_processing, chosen) for image in images]
    return finish(encode_images(loaded.model, placement, prepared), chosen.dtype)


def embed_texts(
    loaded: LoadedSiglip,
    placement: DevicePlacement,
    texts: Sequence[str],
    dtype: FeatureDtype = "float32",
) -> np.ndarray:
    """All three text stages in one call, for callers without an engine.

    Returns:
        ``[B,D]`` in ``dtype``, each row of norm 1, comparable with image embeddings by dot
        product.
    """
    input_ids = prepare_texts(loaded.tokenizer, texts, max_length=loaded.text_max_length)
    return finish(encode_texts(loaded.model, placement, input_ids), dtype)
