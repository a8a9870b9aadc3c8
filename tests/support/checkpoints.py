"""SAM 2 checkpoints for tests: Meta's model with seeded random weights, saved in real formats.

Weights are random but in the exact layouts users have: Meta's ``{"model": state_dict}`` ``.pt``
files and Hugging Face hub cache snapshots. Also the reference computation of Meta's
``SAM2ImagePredictor.set_image`` (without its torchvision transforms).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from imgembed.models.sam2 import Sam2Features

SEED = 20240729
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"
"""A made-up 40-hex commit hash for the fake hub cache snapshots."""
BACKBONE_FEATURE_SIZES = ((256, 256), (128, 128), (64, 64))
"""``SAM2ImagePredictor._bb_feat_sizes``: feature map sides, finest level first."""


def randomise_(state: Mapping[str, torch.Tensor], seed: int) -> None:
    """Overwrites every floating tensor of a state dict in place with seeded noise.

    Nothing keeps its initial value, so weights that start at zero (``no_mem_embed``, biases,
    ``pos_embed``) or at one (norm scales) cannot hide a mapping mistake. The scales keep every
    layer's output alive: plain N(0, 0.02) everywhere made the features nearly independent of the
    image (biases dominated, and a swapped first-block norm moved ``image_embed`` by only 2e-3).

    - matrices and kernels (``*.weight`` with two or more axes): N(0, 1/fan_in);
    - norm scales (one-axis ``*.weight``): 1 + N(0, 0.2);
    - the prompt encoder's random Fourier matrix: N(0, 1), its natural scale;
    - everything else (biases, positional embeddings, ``no_mem_embed``): N(0, 0.02).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key in sorted(state):
            tensor = state[key]
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if key.endswith(".weight") and tensor.ndim >= 2:
                tensor.copy_(noise / tensor[0].numel() ** 0.5)
            elif key.endswith(".weight"):
                tensor.copy_(1.0 + 0.2 * noise)
            elif key.endswith("positional_encoding_gaussian_matrix"):
                tensor.copy_(noise)
            else:
                tensor.copy_(0.02 * noise)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64."""
    difference = (actual.double() - expected.double()).norm()
    return (difference / expected.double().norm()).item()


def build_meta_model(meta_config: str, seed: int) -> torch.nn.Module:
    """Meta's ``SAM2Base`` for a config, on the CPU in eval mode, every weight seeded noise."""
    build_sam = pytest.importorskip("sam2.build_sam", reason="Meta's sam2 package is test-only")
    model = build_sam.build_sam2(meta_config, ckpt_path=None, device="cpu", mode="eval")
    randomise_(model.state_dict(), seed)
    return model


def save_meta_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """Saves a model the way Meta's release files are laid out: ``{"model": state_dict}``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, path)
    return path


def make_hub_cache(cache_dir: Path, repo_id: str, files: Mapping[str, Path | bytes]) -> Path:
    """Lays out one repository in a Hugging Face hub cache exactly as ``huggingface_hub`` does.

    ``models--{org}--{name}/blobs/<hash>`` holds the contents, ``snapshots/<commit>/<file>`` links
    to the blobs and ``refs/main`` names the commit.

    Returns:
        The snapshot folder.
    """
    repo_folder = cache_dir / f"models--{repo_id.replace('/', '--')}"
    blobs = repo_folder / "blobs"
    snapshot = repo_folder / "snapshots" / HUB_COMMIT
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content if isinstance(content, bytes) else None
        digest = hashlib.sha256(data if data is not None else str(content).encode()).hexdigest()
        blob = blobs / digest
        if data is not None:
            blob.write_bytes(data)
        else:
            shutil.copyfile(content, blob)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", digest))
    (repo_folder / "refs").mkdir(exist_ok=True)
    (repo_folder / "refs" / "main").write_text(HUB_COMMIT)
    return snapshot


@torch.inference_mode()
def meta_set_image(meta_model: torch.nn.Module, image: torch.Tensor) -> Sam2Features:
    """The body of Meta's ``SAM2ImagePredictor.set_image`` after its (torchvision) transforms.

    Returns:
        Float32 features: ``[1,32,256,256]``, ``[1,64,128,128]``, ``[1,256,64,64]``.
    """
    backbone_out = meta_model.forward_image(image)
    _, vision_feats, _, _ = meta_model._prepare_backbone_features(backbone_out)
    if meta_model.directly_add_no_mem_embed:
        vision_feats[-1] = vision_feats[-1] + meta_model.no_mem_embed
    # Each level [H*W,1,C] -> [1,C,H,W].
    high_res_0, high_res_1, image_embed = (
        feature.permute(1, 2, 0).view(1, -1, *size)
        for feature, size in zip(vision_feats, BACKBONE_FEATURE_SIZES, strict=True)
    )
    return Sam2Features(image_embed, high_res_0, high_res_1)


@torch.inference_mode()
def meta_decode(
    meta_model: torch.nn.Module,
    features: Sam2Features,
    points: torch.Tensor,
    labels: torch.Tensor,
    mask_input: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Meta's ``SAM2ImagePredictor._predict`` up to its (unclamped) decoder outputs.

    Args:
        meta_model: Meta's model.
        features: Its features of one image.
        points: ``[1,N,2]`` float32 points in the 1024 frame, boxes as corner points first.
        labels: ``[1,N]`` int32 labels.
        mask_input: ``[1,1,256,256]`` low-resolution mask logits of an earlier round, or ``None``.

    Returns:
        Mask logits ``[1,3,256,256]``, IoU predictions ``[1,3]``, object score logits ``[1,1]``.
    """
    sparse, dense = meta_model.sam_prompt_encoder(
        points=(points, labels), boxes=None, masks=mask_input
    )
    masks, iou, _, object_score = meta_model.sam_mask_decoder(
        image_embeddings=features.image_embed,
        image_pe=meta_model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=True,
        repeat_image=False,
        high_res_features=[features.high_res_feats_0, features.high_res_feats_1],
    )
    return masks, iou, object_score
