"""Fixtures for the ``models`` layer: SAM 2 weights on disk in every real format, and a network guard.

Weights are random (seeded) but in the exact layouts users have: Meta's ``{"model": state_dict}``
``.pt`` files, ``save_pretrained`` folders, and Hugging Face hub cache snapshots.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shutil
import socket
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch
from transformers import Sam2Model, Sam2VideoConfig, Sam2VideoModel

from imgembed.models.sam2_registry import build_sam2_config, resolve_variant

SEED = 20240729
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"
"""A made-up 40-hex commit hash for the fake hub cache snapshots."""


def _is_loopback(host: object) -> bool:
    """Whether a socket address host is this machine."""
    if host in ("localhost", None):
        return True
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails any test here that resolves or connects to anything but 127.0.0.1 / ::1."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def guarded_connect(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0] if isinstance(address, tuple) else address
            if not _is_loopback(host):
                raise AssertionError(f"test tried to connect to {address!r}; only loopback allowed")
        real_connect(self, address)

    def guarded_getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if not _is_loopback(host):
            raise AssertionError(f"test tried to resolve {host!r}; only loopback allowed")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)


def randomise_(state: Mapping[str, torch.Tensor], seed: int) -> None:
    """Overwrites every floating tensor of a state dict in place with seeded N(0, 0.02) noise, so
    that no two weights are equal and none keeps its initial zeros or ones. (The parity tests in
    ``tests/parity`` use scales that also keep activations alive; here only equality matters.)"""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key in sorted(state):
            tensor = state[key]
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * 0.02
            tensor.copy_(noise.to(tensor.dtype))


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
