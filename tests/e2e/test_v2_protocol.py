"""The Open Inference Protocol (v2) through a real ``imgembed serve``, with the real tritonclient.

One server for the module loads a random-weight ``transformers`` checkpoint from a folder.
Encoder results are compared with the server's native ``/v1/sam2/embed`` features, decoder results
with :func:`decode_masks` run in the test on the same checkpoint. Bad input is in
``test_v2_bad_input.py``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from checkpoints import SEED, randomise_, relative_error
from imagefactory import encode, gradient_rgb
from PIL import Image
from servers import imgembed_server
from transformers import Sam2Model

from imgembed.client import ImgembedClient
from imgembed.models.sam2 import Sam2Features
from imgembed.models.sam2_decoder import decode_masks
from imgembed.models.sam2_loading import load_sam2
from imgembed.models.sam2_registry import build_sam2_config, resolve_variant
from imgembed.pipelines import sam2_embed
from imgembed.preprocess.image import decode_image
from imgembed.settings import InputLimits

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient is a test extra")
triton_utils = pytest.importorskip("tritonclient.utils")

pytestmark = pytest.mark.e2e

TINY = resolve_variant("sam2.1-hiera-tiny")
FEATURES = ("high_res_feats_0", "high_res_feats_1", "image_embed")
PNG_A = encode(Image.fromarray(gradient_rgb()), "PNG")
PNG_B = encode(Image.fromarray(gradient_rgb(64, 40)[::-1].copy()), "PNG")
FEATURE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = Sam2Model(build_sam2_config(TINY)).eval()
    randomise_(model.state_dict(), SEED + 3)
    folder = tmp_path_factory.mktemp("v2_checkpoint")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"IMGEMBED_WARMUP": "0"}
    log = tmp_path_factory.mktemp("v2_server") / "server.log"
    with imgembed_server(["--weights", str(checkpoint)], env, log_path=log) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> Sam2Model:
    return load_sam2(TINY.name, str(checkpoint), device=torch.device("cpu")).model


@pytest.fixture(scope="module")
def native_a(server: str) -> dict[str, np.ndarray]:
    """The native API's features of ``PNG_A``, ``[1,C,H,W]`` float32 each."""
    with ImgembedClient(server) as native:
        embedding = native.sam2_embed(PNG_A, encoding="binary")
    return {name: getattr(embedding, name)[None] for name in FEATURES}


def infer_input(name: str, array: np.ndarray, *, binary: bool = True) -> httpclient.InferInput:
    datatype = "BYTES" if array.dtype == object else triton_utils.np_to_triton_dtype(array.dtype)
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


@pytest.fixture(scope="module")
def batch_ab(client: httpclient.InferenceServerClient) -> dict[str, np.ndarray]:
    """``PNG_A`` and ``PNG_B`` in one binary v2 encoder request, ``[2,...]`` per name."""
    files = np.array([PNG_A, PNG_B], dtype=object)
    result = client.infer("sam2_encoder", [infer_input("image_bytes", files)])
    return {name: result.as_numpy(name).copy() for name in FEATURES}


@pytest.fixture(scope="module")
def features_a(batch_ab: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The v2 encoder's features of ``PNG_A``, ``[1,...]`` per name."""
    return {name: array[:1].copy() for name, array in batch_ab.items()}


def assert_same_features(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    for name in FEATURES:
        assert actual[name].shape == expected[name].shape, name
        assert actual[name].dtype == np.float32, name
        error = relative_error(torch.tensor(actual[name]), torch.tensor(expected[name]))
        assert error < FEATURE_TOLERANCE, f"{name}: relative error {error:.1e}"


def preprocessed(png: bytes) -> np.ndarray:
    """``[3,1024,1024]`` float32: imgembed's own stretch preprocessing of ``png``."""
    decoded = decode_image(png, InputLimits())
    return sam2_embed.prepare(decoded, sam2_embed.Sam2EmbedOptions()).pixel_values.numpy()


def test_server_and_model_metadata(server: str, client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    server_metadata = client.get_server_metadata()
    assert server_metadata["name"] == "imgembed"
    assert "binary_tensor_data" in server_metadata["extensions"]
    assert client.is_model_ready("sam2_encoder")
    assert client.is_model_ready("sam2_decoder", model_version="1")
    assert client.is_model_ready(f"{TINY.name}_decoder")
    assert not client.is_model_ready("sam2_decoder", model_version="2")
    assert not client.is_model_ready("sam3_decoder")
    encoder = client.get_model_metadata("sam2_encoder", model_version="1")
    assert encoder["versions"] == ["1"]
    assert {entry["name"]: entry["shape"] for entry in encoder["inputs"]} == {
        "image": [-1, 3, 1024, 1024],
        "image_bytes": [-1],
    }
    assert {entry["name"]: entry["shape"] for entry in encoder["outputs"]} == {
        "high_res_feats_0": [-1, 32, 256, 256],
        "high_res_feats_1": [-1, 64, 128, 128],
        "image_embed": [-1, 256, 64, 64],
    }
    decoder = client.get_model_metadata("sam2_decoder")
    assert [entry["name"] for entry in decoder["inputs"]] == [
        "image_embed", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels",
        "mask_input", "has_mask_input",
    ]  # fmt: skip
    assert {entry["name"]: entry["shape"] for entry in decoder["outputs"]} == {
        "masks": [-1, 3, 256, 256],
        "iou_predictions": [-1, 3],
    }
    assert all(entry["datatype"] == "FP32" for entry in decoder["inputs"] + decoder["outputs"])
    config = client.get_model_config("sam2_decoder")
    assert {entry["name"]: entry["optional"] for entry in config["input"]}["mask_input"] is True
    index = client.get_model_repository_index()
    assert {"name": "sam2_encoder", "version": "1", "state": "READY"} in index
    listed = httpx.get(f"{server}/v2/models", timeout=10).json()["models"]
    assert {model["name"] for model in listed} >= {"sam2_encoder", "sam2_decoder"}


def test_image_bytes_batch_matches_native_features(
    batch_ab: dict[str, np.ndarray],
    features_a: dict[str, np.ndarray],
    native_a: dict[str, np.ndarray],
) -> None:
    assert_same_features(features_a, native_a)
    assert batch_ab["image_embed"].shape == (2, 256, 64, 64)
    assert not np.allclose(batch_ab["image_embed"][0], batch_ab["image_embed"][1])


def test_image_bytes_as_base64_json_with_json_output(
    client: httpclient.InferenceServerClient, native_a: dict[str, np.ndarray]
) -> None:
    text = np.array([base64.b64encode(PNG_A)], dtype=object)
    result = client.infer(
        "sam2_encoder",
        [infer_input("image_bytes", text, binary=False)],
        outputs=[httpclient.InferRequestedOutput("image_embed", binary_data=False)],
        request_id="json-1",
    )
    response = result.get_response()
    assert response["id"] == "json-1"
    assert [output["name"] for output in response["outputs"]] == ["image_embed"]
    assert "data" in response["outputs"][0]
    assert result.as_numpy("high_res_feats_0") is None
    error = relative_error(
        torch.tensor(result.as_numpy("image_embed")), torch.tensor(native_a["image_embed"])
    )
    assert error < FEATURE_TOLERANCE


def test_preprocessed_image_binary_and_json(
    client: httpclient.InferenceServerClient, native_a: dict[str, np.ndarray]
) -> None:
    exact = preprocessed(PNG_A)
    coarse = np.round(exact * 4) / 4  # values with short decimals, so the JSON body stays small
    images = np.stack([exact, coarse]).astype(np.float32)  # [2,3,1024,1024]
    binary = client.infer("sam2_encoder", [infer_input("image", images)])
    assert_same_features({name: binary.as_numpy(name)[:1] for name in FEATURES}, native_a)
    as_json = client.infer(
        "sam2_encoder",
        [infer_input("image", coarse[None], binary=False)],
        outputs=[httpclient.InferRequestedOutput(name) for name in FEATURES],
    )
    assert_same_features(
        {name: as_json.as_numpy(name) for name in FEATURES},
        {name: binary.as_numpy(name)[1:] for name in FEATURES},
    )


def prompts(count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` prompts of two points in the 1024 frame: a click plus -1 padding, or a box."""
    coords = np.zeros((count, 2, 2), np.float32)
    labels = np.zeros((count, 2), np.float32)
    for index in range(count):
        if index % 2:
            coords[index] = [[60 + 40 * index, 100], [700, 500 + 50 * index]]
            labels[index] = [2, 3]
        else:
            coords[index] = [[100 + 90 * index, 900 - 80 * index], [0, 0]]
            labels[index] = [1, -1]
    return coords, labels


def decode_inputs(
    features: dict[str, np.ndarray], coords: np.ndarray, labels: np.ndarray, *, binary: bool
) -> list[httpclient.InferInput]:
    inputs = [infer_input(name, features[name]) for name in FEATURES]
    inputs += [
        infer_input("point_coords", coords, binary=binary),
        infer_input("point_labels", labels, binary=binary),
    ]
    return inputs


def reference_decode(
    model: Sam2Model,
    features: dict[str, np.ndarray],
    coords: np.ndarray,
    labels: np.ndarray,
    mask_input: np.ndarray,
    has_mask_input: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    tensors = Sam2Features(**{name: torch.from_numpy(features[name]) for name in FEATURES})
    prediction = decode_masks(
        model,
        tensors,
        torch.from_numpy(coords),
        torch.from_numpy(labels).long(),
        torch.from_numpy(mask_input),
        torch.from_numpy(has_mask_input),
    )
    return prediction.masks.numpy(), prediction.iou_predictions.numpy()


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert relative_error(torch.tensor(actual), torch.tensor(expected)) < 1e-5


def test_decoder_round_trip_encode_once_decode_many(
    client: httpclient.InferenceServerClient, features_a: dict[str, np.ndarray], model: Sam2Model
) -> None:
    coords, labels = prompts(8)
    first = client.infer("sam2_decoder", decode_inputs(features_a, coords, labels, binary=True))
    masks, iou = first.as_numpy("masks"), first.as_numpy("iou_predictions")
    assert masks.shape == (8, 3, 256, 256)
    assert iou.shape == (8, 3)
    assert np.abs(masks).max() <= 32.0
    no_mask, zero = np.zeros((1, 1, 256, 256), np.float32), np.zeros(1, np.float32)
    expected = reference_decode(model, features_a, coords, labels, no_mask, zero)
    assert_close(masks, expected[0])
    assert_close(iou, expected[1])

    best = iou.argmax(axis=1)
    previous = masks[np.arange(8), best][:, None]  # [8,256,256] -> [8,1,256,256]
    has_mask = np.ones(8, np.float32)
    refine = decode_inputs(features_a, coords, labels, binary=True)
    refine += [infer_input("mask_input", previous), infer_input("has_mask_input", has_mask)]
    second = client.infer("sam2_decoder", refine)
    expected = reference_decode(model, features_a, coords, labels, previous, has_mask)
    assert_close(second.as_numpy("masks"), expected[0])
    assert_close(second.as_numpy("iou_predictions"), expected[1])
    assert relative_error(torch.tensor(second.as_numpy("masks")), torch.tensor(masks)) > 1e-3


def test_decoder_json_and_gzip_requests_match_binary(
    client: httpclient.InferenceServerClient, features_a: dict[str, np.ndarray]
) -> None:
    coords, labels = prompts(3)
    binary = client.infer("sam2_decoder", decode_inputs(features_a, coords, labels, binary=True))
    as_json = client.infer(
        "sam2_decoder",
        decode_inputs(features_a, coords, labels, binary=False),
        outputs=[
            httpclient.InferRequestedOutput("iou_predictions", binary_data=False),
            httpclient.InferRequestedOutput("masks", binary_data=False),
        ],
    )
    assert all("data" in output for output in as_json.get_response()["outputs"])
    compressed = client.infer(
        "sam2_decoder",
        decode_inputs(features_a, coords, labels, binary=True),
        request_compression_algorithm="gzip",
    )
    for name in ("masks", "iou_predictions"):
        np.testing.assert_array_equal(as_json.as_numpy(name), binary.as_numpy(name))
        np.testing.assert_array_equal(compressed.as_numpy(name), binary.as_numpy(name))
