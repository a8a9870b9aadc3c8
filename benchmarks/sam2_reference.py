"""The reference: Meta's ``sam2`` model doing what the seed worker does, without torchvision.

``SAM2ImagePredictor.set_image`` needs torchvision only for its transforms; here they are written
out with plain torch (``ToTensor`` is ``/255``, torchvision's tensor ``Resize`` is
``interpolate(bilinear, antialias=True)``, then ``Normalize``), and the encoder call is the
predictor's: ``forward_image``, ``_prepare_backbone_features``, ``no_mem_embed`` added.
"""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image

INPUT_SIZE = 1024
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NPZ_KEYS = ("embedding", "high_res_feats_0", "high_res_feats_1")
"""Member names of the seed's ``.npz`` (``embedding`` is ``image_embed``), plus the two levels."""


def build_reference(meta_config: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Meta's ``SAM2Base`` for a config name, on ``device``, in eval mode, random weights."""
    from sam2.build_sam import build_sam2

    return build_sam2(meta_config, ckpt_path=None, device=str(device), mode="eval")


def reference_pixel_values(rgb: np.ndarray) -> torch.Tensor:
    """``[H,W,3]`` uint8 RGB to ``[1,3,1024,1024]`` normalised float32, as ``SAM2Transforms``."""
    image = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float() / 255.0  # [1,3,H,W]
    resized = F.interpolate(
        image, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True
    )
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (resized - mean) / std


@torch.inference_mode()
def reference_encode(model: torch.nn.Module, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    """The encoder half of ``SAM2ImagePredictor.set_image``.

    Args:
        model: Meta's ``SAM2Base``.
        pixel_values: ``[B,3,1024,1024]`` normalised images.

    Returns:
        ``image_embed`` ``[B,256,64,64]``, ``high_res_feats_0`` ``[B,32,256,256]`` and
        ``high_res_feats_1`` ``[B,64,128,128]``.
    """
    backbone_out = model.forward_image(pixel_values)
    _, vision_feats, _, feat_sizes = model._prepare_backbone_features(backbone_out)
    if model.directly_add_no_mem_embed:
        vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
    batch = pixel_values.shape[0]
    # Each level is [H*W,B,C]; the predictor keeps [B,C,H,W].
    maps = [
        feat.permute(1, 2, 0).view(batch, -1, height, width)
        for feat, (height, width) in zip(vision_feats, feat_sizes, strict=True)
    ]
    return {"high_res_feats_0": maps[0], "high_res_feats_1": maps[1], "image_embed": maps[2]}


def seed_request(model: torch.nn.Module, image_b64: str, dtype: str) -> dict[str, float]:
    """One seed-style ``embed_image`` request in-process, base64 in, JSON body out.

    Args:
        model: Meta's ``SAM2Base``, on the device it runs on (the pixels follow it there).
        image_b64: The image file as base64.
        dtype: ``float16`` or ``float32``, the features' wire dtype.

    Returns:
        Stage times in milliseconds (``decode``, ``preprocess``, ``encode``, ``postprocess``),
        ``wall`` (their sum, milliseconds) and ``response_bytes``.
    """
    started = time.perf_counter()
    data = base64.b64decode(image_b64)
    with Image.open(io.BytesIO(data)) as image:
        rgb = np.array(image.convert("RGB"))  # a writable copy, as torch wants
    decoded = time.perf_counter()
    device = next(model.parameters()).device
    pixel_values = reference_pixel_values(rgb).to(device)
    prepared = time.perf_counter()
    features = reference_encode(model, pixel_values)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the encoder's kernels are done: "encode" is their time
    encoded = time.perf_counter()
    arrays = [
        features[name][0].cpu().numpy().astype(dtype)
        for name in ("image_embed", "high_res_feats_0", "high_res_feats_1")
    ]
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **dict(zip(NPZ_KEYS, arrays, strict=True)))
    body = {
        "type": "map",
        "encoding": "npz_base64",
        "data": base64.b64encode(buffer.getvalue()).decode("ascii"),
        "shape": list(arrays[0].shape),
        "dtype": dtype,
        "meta": {"orig_size": list(rgb.shape[:2]), "input_size": [INPUT_SIZE, INPUT_SIZE]},
        "device": device.type,
    }
    response = json.dumps(body).encode()
    finished = time.perf_counter()
    stages = {
        "decode": decoded - started,
        "preprocess": prepared - decoded,
        "encode": encoded - prepared,
        "postprocess": finished - encoded,
    }
    return {
        **{name: seconds * 1000 for name, seconds in stages.items()},
        "wall": (finished - started) * 1000,
        "response_bytes": len(response),
    }
