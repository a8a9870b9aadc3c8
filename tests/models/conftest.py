"""Fixtures for the ``models`` layer: SAM 2 weights on disk in every real format, and a network guard.

Weights are random (seeded) but in the exact layouts users have: Meta's ``{"model": state_dict}``
``.pt`` files, ``save_pretrained`` folders, and Hugging Face hub cache snapshots.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch
from checkpoints import SEED, build_meta_model, make_hub_cache, save_meta_checkpoint
from transformers import Sam2Model, Sam2VideoConfig, Sam2VideoModel

from imgembed.models.sam2_registry import build_sam2_config, resolve_variant


@pytest.fixture(scope="session")
def meta_tiny_model() -> torch.nn.Module:
    """Meta's SAM 2.1 tiny with seeded random weights."""
    return build_meta_model(resolve_variant("sam2.1-hiera-tiny").meta_config, SEED)


@pytest.fixture(scope="session")
def meta_tiny_checkpoint(
    meta_tiny_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``sam2.1_hiera_tiny.pt`` in Meta's format, random weights."""
    folder = tmp_path_factory.mktemp("meta_checkpoint")
    return save_meta_checkpoint(meta_tiny_model, folder / "sam2.1_hiera_tiny.pt")


@pytest.fixture(scope="session")
def hf_tiny_model() -> Sam2Model:
    """A ``transformers`` SAM 2.1 tiny with seeded random weights (``transformers``' own init)."""
    torch.manual_seed(SEED)
    return Sam2Model(build_sam2_config(resolve_variant("sam2.1-hiera-tiny"))).eval()


@pytest.fixture(scope="session")
def hf_tiny_folder(hf_tiny_model: Sam2Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``save_pretrained`` folder of :func:`hf_tiny_model`: ``config.json`` + ``model.safetensors``."""
    folder = tmp_path_factory.mktemp("hf_tiny")
    hf_tiny_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def hf_video_tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Sam2VideoModel]:
    """A ``Sam2VideoModel`` folder (``model_type: sam2_video``), the layout of the released
    ``facebook/sam2.1-hiera-*`` hub repositories, with the video model it was saved from."""
    torch.manual_seed(SEED + 1)
    image_config = build_sam2_config(resolve_variant("sam2.1-hiera-tiny"))
    model = Sam2VideoModel(Sam2VideoConfig(vision_config=image_config.vision_config)).eval()
    folder = tmp_path_factory.mktemp("hf_video_tiny")
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture
def hub_cache_dir(tmp_path: Path) -> Path:
    """An empty Hugging Face hub cache folder."""
    cache_dir = tmp_path / "hub"
    cache_dir.mkdir()
    return cache_dir


@pytest.fixture
def add_to_hub_cache(hub_cache_dir: Path) -> Callable[[str, Mapping[str, Path | bytes]], Path]:
    """A function putting a repository into :func:`hub_cache_dir`; see :func:`make_hub_cache`."""

    def add(repo_id: str, files: Mapping[str, Path | bytes]) -> Path:
        return make_hub_cache(hub_cache_dir, repo_id, files)

    return add


@pytest.fixture(scope="session")
def meta_checkpoint_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str, str], Path]:
    """A function writing a seeded random Meta checkpoint: ``(meta_config, file name) -> path``."""

    def write(meta_config: str, file_name: str) -> Path:
        folder = tmp_path_factory.mktemp("meta_checkpoints")
        return save_meta_checkpoint(build_meta_model(meta_config, SEED), folder / file_name)

    return write
