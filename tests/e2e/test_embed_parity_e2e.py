"""Correct features end to end, for a random-weight checkpoint of each format.

Each server is a real ``imgembed serve`` process (or the runpod SDK's local API server) loading
weights from disk: Meta's ``.pt`` (also through the seed's ``SAM2_CHECKPOINT``/``SAM2_MODEL_CFG``),
a Hugging Face folder, and a hub id resolved from a Hugging Face cache offline. Every response is
compared with the reference implementation run in the test on the same image: Meta's model for the
``.pt``, ``transformers``' model for the Hugging Face formats, each fed the reference transform
(ToTensor, antialiased bilinear resize, ImageNet normalisation).

The servers run on the CPU in float32 (tests/support/servers.py pins the device); each response's
tolerance is still chosen by its ``compute_dtype`` as well as its ``dtype``, so a server started
on a GPU in bfloat16 is held to bfloat16's tolerance instead of failing float32's.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from checkpoints import (
    SEED,
    build_meta_model,
    make_hub_cache,
    meta_set_image,
    randomise_,
    relative_error,
    save_meta_checkpoint,
)
from imagefactory import encode
from PIL import Image
from servers import imgembed_server, runpod_api_server
from transformers import Sam2Model

from imgembed.client import ImgembedClient
from imgembed.codecs import decode_npz
from imgembed.models.sam2 import Sam2Features
from imgembed.models.sam2_registry import build_sam2_config, resolve_variant

pytestmark = [pytest.mark.e2e, pytest.mark.parity]

TINY = resolve_variant("sam2.1-hiera-tiny")
TRANSPORT_TOLERANCE = {"float32": 1e-4, "float16": 1e-3, "bfloat16": 1e-2}
"""Relative L2 error of the features sent in each ``dtype``, computed in float32."""
COMPUTE_TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
"""Relative L2 error of features computed in each ``compute_dtype`` (CPU autocast on these random
weights measured at most 2.1e-3 for float16 and 1.6e-2 for bfloat16, on image_embed)."""


def tolerance(dtype: str, compute_dtype: str) -> float:
    """The bound for features sent in ``dtype`` that were computed in ``compute_dtype``."""
    return max(TRANSPORT_TOLERANCE[dtype], COMPUTE_TOLERANCE[compute_dtype])


def photo(height: int = 240, width: int = 320) -> np.ndarray:
    """A smooth, textured ``[H,W,3]`` uint8 image, so features depend on content and position."""
    generator = np.random.default_rng(7)
    rows, cols = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(6 * rows), np.cos(5 * cols), np.sin(4 * (rows + cols))], axis=2)
    noise = generator.normal(0, 0.1, (height, width, 3))
    return np.clip((base + noise + 1) * 127.5, 0, 255).astype(np.uint8)  # [H,W,3]


PHOTO = photo()
JPEG = encode(Image.fromarray(PHOTO), "JPEG", quality=92)
JPEG_B64 = base64.b64encode(JPEG).decode()


def reference_pixels(jpeg: bytes, mode: str = "stretch") -> torch.Tensor:
    """``[1,3,1024,1024]``: the reference transform of the decoded image (letterbox pads with 0)."""
    pixels = np.array(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0  # [H,W,3] -> [1,3,H,W]
    height, width = pixels.shape[:2]
    scale = 1024 / max(height, width)
    size = (
        (1024, 1024) if mode == "stretch" else (int(height * scale + 0.5), int(width * scale + 0.5))
    )
    resized = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    normalised = (resized - mean) / std
    return F.pad(normalised, (0, 1024 - size[1], 0, 1024 - size[0]))


def transformers_features(model: Sam2Model, pixels: torch.Tensor) -> Sam2Features:
    with torch.inference_mode():
        high_res_0, high_res_1, image_embed = model.get_image_embeddings(pixels)
    return Sam2Features(image_embed, high_res_0, high_res_1)


def assert_matches(arrays: dict[str, np.ndarray], expected: Sam2Features, tolerance: float) -> None:
    """Every returned level equals the reference within ``tolerance`` relative L2."""
    assert arrays, "no features returned"
    for name, array in arrays.items():
        reference = getattr(expected, name)[0]
        assert array.shape == tuple(reference.shape), name
        error = relative_error(torch.from_numpy(np.asarray(array, dtype=np.float32)), reference)
        assert error < tolerance, f"{name}: relative L2 error {error:.2e} >= {tolerance:.0e}"


def client_arrays(features: object) -> dict[str, np.ndarray]:
    names = ("image_embed", "high_res_feats_0", "high_res_feats_1")
    return {name: getattr(features, name) for name in names if getattr(features, name) is not None}


@pytest.fixture(scope="module")
def meta_model() -> torch.nn.Module:
    return build_meta_model(TINY.meta_config, SEED)


@pytest.fixture(scope="module")
def meta_checkpoint(meta_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoints")
    return save_meta_checkpoint(meta_model, folder / "sam2.1_hiera_tiny.pt")


@pytest.fixture(scope="module")
def meta_reference(meta_model: torch.nn.Module) -> Sam2Features:
    return meta_set_image(meta_model, reference_pixels(JPEG))


@pytest.fixture(scope="module")
def meta_server(meta_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("meta_server") / "server.log"
    with imgembed_server(["--weights", str(meta_checkpoint)], log_path=log) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def hf_model() -> Sam2Model:
    model = Sam2Model(build_sam2_config(TINY)).eval()
    randomise_(model.state_dict(), SEED + 1)
    return model


@pytest.fixture(scope="module")
def hf_folder(hf_model: Sam2Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf_folder")
    hf_model.save_pretrained(folder)
    return folder


def test_meta_checkpoint_over_http_json_and_binary(
    meta_server: str, meta_reference: Sam2Features
) -> None:
    response = httpx.post(
        f"{meta_server}/v1/sam2/embed",
        json={"image_b64": JPEG_B64, "dtype": "float32"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["weights"] == {
        "source": "meta_checkpoint",
        "location": payload["weights"]["location"],
        "untrained": False,
    }
    assert payload["meta"]["orig_size"] == [240, 320]
    npz = decode_npz(base64.b64decode(payload["data"]))
    assert set(npz) == {"embedding", "high_res_feats_0", "high_res_feats_1"}
    npz["image_embed"] = npz.pop("embedding")
    assert_matches(npz, meta_reference, tolerance("float32", payload["compute_dtype"]))

    with ImgembedClient(meta_server) as client:
        binary = client.sam2_embed(JPEG, encoding="binary")
    assert binary.meta == payload["meta"]
    for name, array in client_arrays(binary).items():
        np.testing.assert_array_equal(array, npz[name])


def test_meta_checkpoint_half_precision_and_sam1_style(
    meta_server: str, meta_reference: Sam2Features
) -> None:
    with ImgembedClient(meta_server) as client:
        half = client.sam2_embed(JPEG, dtype="float16")
        brain = client.sam2_embed(JPEG, dtype="bfloat16", include_high_res=False)
    assert half.image_embed.dtype == np.float16
    assert_matches(client_arrays(half), meta_reference, tolerance("float16", half.compute_dtype))
    assert brain.high_res_feats_0 is None
    assert brain.high_res_feats_1 is None
    assert brain.dtype == "bfloat16"
    assert_matches(client_arrays(brain), meta_reference, tolerance("bfloat16", brain.compute_dtype))


def test_letterbox_matches_reference_on_padded_input(
    meta_server: str, meta_model: torch.nn.Module
) -> None:
    with ImgembedClient(meta_server) as client:
        features = client.sam2_embed(JPEG, resize_mode="letterbox")
    assert features.meta["pad"] == [0, 0, 256, 0]
    assert features.meta["resized_size"] == [768, 1024]
    expected = meta_set_image(meta_model, reference_pixels(JPEG, "letterbox"))
    assert_matches(client_arrays(features), expected, tolerance("float32", features.compute_dtype))


def test_seed_runpod_event_with_seed_variables(
    meta_checkpoint: Path, meta_reference: Sam2Features, tmp_path: Path
) -> None:
    env = {"SAM2_CHECKPOINT": str(meta_checkpoint), "SAM2_MODEL_CFG": "sam2.1_hiera_t.yaml"}
    event = {
        "input": {
            "action": "embed_image",
            "image_b64": "data:image/jpeg;base64," + JPEG_B64,
            "dtype": "float16",
            "resize_longer_side": 1024,
        }
    }
    with runpod_api_server(env, log_path=tmp_path / "runpod.log") as base_url:
        response = httpx.post(f"{base_url}/runsync", json=event, timeout=180)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "COMPLETED", job
    output = job["output"]
    assert output["meta"]["model"] == "sam2.1_hiera_t.yaml"
    assert output["shape"] == [256, 64, 64]
    assert output["dtype"] == "float16"
    arrays = decode_npz(base64.b64decode(output["data"]))
    arrays["image_embed"] = arrays.pop("embedding")
    assert_matches(arrays, meta_reference, tolerance("float16", output["compute_dtype"]))


def test_hugging_face_folder_over_http(
    hf_folder: Path, hf_model: Sam2Model, tmp_path: Path
) -> None:
    expected = transformers_features(hf_model, reference_pixels(JPEG))
    with (
        imgembed_server(["--weights", str(hf_folder)], log_path=tmp_path / "s.log") as base_url,
        ImgembedClient(base_url) as client,
    ):
        features = client.sam2_embed(JPEG)
        assert client.models()[0]["weights"]["source"] == "folder"
    assert_matches(client_arrays(features), expected, tolerance("float32", features.compute_dtype))


def test_hub_id_from_the_hugging_face_cache_offline(
    hf_folder: Path, hf_model: Sam2Model, tmp_path: Path
) -> None:
    cache = tmp_path / "hub"
    files = {name: hf_folder / name for name in ("config.json", "model.safetensors")}
    make_hub_cache(cache, TINY.hub_id, files)
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    expected = transformers_features(hf_model, reference_pixels(JPEG))
    arguments = ["--model", TINY.hub_id]
    with (
        imgembed_server(arguments, env, log_path=tmp_path / "s.log") as base_url,
        ImgembedClient(base_url) as client,
    ):
        features = client.sam2_embed(JPEG)
        described = client.models()[0]
    assert described["weights"] == {"source": "hub", "location": TINY.hub_id, "untrained": False}
    assert_matches(client_arrays(features), expected, tolerance("float32", features.compute_dtype))
