"""SAM 2 embedding pipeline: prepare on CPU, encode on the device, finish on CPU.

The three stages are separate functions so the engine can run CPU stages in a worker pool while
the device works on another request, and can batch the middle stage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from transformers import Sam2Model

from imgembed.models.sam2 import SAM2_INPUT_SIZE, Sam2Features, encode_images
from imgembed.preprocess.image import DecodedImage
from imgembed.preprocess.sam2_frame import FrameMapping, sam2_pixel_values
from imgembed.runtime.device import DevicePlacement
from imgembed.runtime.staging import ImageStaging, claim_for_current_stream
from imgembed.settings import FeatureDtype, ResizeMode

FEATURE_NAMES = ("image_embed", "high_res_feats_0", "high_res_feats_1")
"""Tensor names, as the exported ONNX decoder takes them."""

_TORCH_DTYPES: dict[FeatureDtype, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class Sam2EmbedOptions:
    """What a client asks of an embedding.

    Attributes:
        dtype: Numeric type of the returned features.
        include_high_res: Return the two high-resolution levels as well as ``image_embed``.
        resize_mode: ``stretch`` (SAM 2's training resize) or ``letterbox``.
    """

    dtype: FeatureDtype = "float32"
    include_high_res: bool = True
    resize_mode: ResizeMode = "stretch"


@dataclass(frozen=True)
class PreparedSam2Image:
    """One image ready for the encoder.

    Attributes:
        pixel_values: ``[3,1024,1024]`` float32, ImageNet-normalised, on the CPU, or on the
            model's device when prepared there.
        mapping: Original-pixel to 1024-frame mapping.
    """

    pixel_values: torch.Tensor
    mapping: FrameMapping


@dataclass(frozen=True)
class Sam2Embedding:
    """Features of one image, on the CPU, in the requested dtype.

    Attributes:
        arrays: Name (see :data:`FEATURE_NAMES`) to ``[C,H,W]`` array; ``bfloat16`` is held as its
            raw ``uint16`` bit patterns (NumPy has no bfloat16).
        dtype: The dtype the arrays represent.
        mapping: Original-pixel to 1024-frame mapping.
    """

    arrays: dict[str, np.ndarray]
    dtype: FeatureDtype
    mapping: FrameMapping


MAX_DEVICE_DOWNSCALE = 16.0
"""Largest shrink factor along a side that SAM 2 preprocessing does on the device: 16384 px to
1024. A larger factor needs an antialiasing window wider than CUDA's resize kernel holds; a
16384 px side already exceeds what cameras and scanners usually give, and the CPU path handles
the rest."""


def prepare(
    image: DecodedImage, options: Sam2EmbedOptions, staging: ImageStaging | None = None
) -> PreparedSam2Image:
    """Resizes and normalises a decoded image for the SAM 2 encoder (run on a CPU worker).

    Args:
        image: The decoded image.
        options: The resize mode.
        staging: Where to do it: ``None`` on the CPU; else the 8-bit pixels are uploaded to the
            staging's device and resized and normalised there, by the same arithmetic
            (:func:`~imgembed.preprocess.sam2_frame.sam2_pixel_values` on that device).

    Returns:
        ``[3,1024,1024]`` float32 input on the CPU, or on the staging's device, and its mapping.
        An image shrunk by more than :data:`MAX_DEVICE_DOWNSCALE` along a side is prepared on
        the CPU whatever the staging: CUDA's antialiased resize refuses such factors (its kernel
        keeps a filter window that wide in shared memory).
    """
    height, width = image.pixels.shape[:2]
    if max(height, width) / SAM2_INPUT_SIZE > MAX_DEVICE_DOWNSCALE:
        staging = None
    if staging is None:
        pixels = torch.from_numpy(image.pixels)  # [H,W,3] uint8, shares memory
        pixel_values, mapping = sam2_pixel_values(pixels, SAM2_INPUT_SIZE, options.resize_mode)
    else:
        pixel_values, mapping = staging.run(
            image.pixels,
            lambda pixels: sam2_pixel_values(pixels, SAM2_INPUT_SIZE, options.resize_mode),
        )
    return PreparedSam2Image(pixel_values=pixel_values, mapping=mapping)


def encode(
    model: Sam2Model, placement: DevicePlacement, pixel_values: list[torch.Tensor]
) -> Sam2Features:
    """Runs the encoder on a batch (device stage).

    Args:
        model: The loaded SAM 2 model, on ``placement.device``.
        placement: Device and compute precision.
        pixel_values: ``[3,1024,1024]`` float32 tensors, one per image, on the CPU or already on
            the device (:func:`prepare` with a staging).

    Returns:
        Features for the batch, ``[B,...]`` each, on the device, all three in the compute dtype.
    """
    claim_for_current_stream(pixel_values)  # prepared on a staging stream, read on this one
    # A batch may mix inputs prepared on the device with host ones (v2 tensors, crops).
    on_device = [item.to(placement.device, non_blocking=True) for item in pixel_values]
    batch = torch.stack(on_device)  # B x [3,1024,1024] -> [B,3,1024,1024]
    with placement.autocast():
        features = encode_images(model, batch)
    return in_compute_dtype(features, placement)


def in_compute_dtype(features: Sam2Features, placement: DevicePlacement) -> Sam2Features:
    """The three feature maps in the compute dtype, on the device they are on.

    Under autocast the maps come out in mixed dtypes: ``image_embed`` is float32 (the level-2
    features plus the float32 ``no_mem_embed`` parameter) while the high-resolution maps stay in
    the autocast dtype. One dtype for all three keeps the feature cache's size per image what it
    says (16 MiB in float32, 8 MiB in bfloat16 or float16) and the precision of every map what
    ``compute_dtype`` reports; an ONNX Runtime encoder's float32 output is cast the same way.

    Args:
        features: ``[B,...]`` maps of one or more images, in any dtypes.
        placement: Whose compute dtype to use.

    Returns:
        The same maps; a map already in the compute dtype is the same tensor, not a copy.
    """
    dtype = placement.torch_dtype
    return dataclasses.replace(
        features,
        image_embed=features.image_embed.to(dtype=dtype),
        high_res_feats_0=features.high_res_feats_0.to(dtype=dtype),
        high_res_feats_1=features.high_res_feats_1.to(dtype=dtype),
    )


def finish(
    features: Sam2Features, mapping: FrameMapping, options: Sam2EmbedOptions
) -> Sam2Embedding:
    """Converts one image's features to the requested dtype on the CPU (CPU stage).

    Args:
        features: Features of one image, ``[1,...]`` each, on any device.
        mapping: The image's frame mapping.
        options: Requested dtype and levels.

    Returns:
        ``[C,H,W]`` arrays for ``image_embed`` and, unless excluded, the high-resolution levels.
    """
    dtype = _TORCH_DTYPES[options.dtype]
    tensors = {"image_embed": features.image_embed}
    if options.include_high_res:
        tensors["high_res_feats_0"] = features.high_res_feats_0
        tensors["high_res_feats_1"] = features.high_res_feats_1
    arrays = {name: _to_numpy(tensor[0], dtype) for name, tensor in tensors.items()}
    return Sam2Embedding(arrays=arrays, dtype=options.dtype, mapping=mapping)


def _to_numpy(tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """A ``[C,H,W]`` tensor as a CPU array of ``dtype`` (bfloat16 as ``uint16`` bit patterns)."""
    converted = tensor.detach().to(dtype=dtype).cpu().contiguous()
    if dtype == torch.bfloat16:
        return converted.view(torch.int16).numpy().view(np.uint16)
    return converted.numpy()
