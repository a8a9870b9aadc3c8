"""The Open Inference Protocol (v2) with fake models: metadata, the encoder and decoder round trip
through tritonclient, JSON and gzip bodies, every bad request, 429 and 504 in the v2 shape.

The fast twin of tests/e2e/test_v2_bad_input.py and the plumbing of test_v2_protocol.py (which
checks the numbers against transformers with a real checkpoint): here the encoder's features are
the fake's features of the same image, and the decoder's masks the fake's masks of the same prompts.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
import tritonclient.utils as triton_utils
from fakes import (
    SAM2_MODEL,
    FakeServer,
    fake_config,
    fake_decode,
    fake_server,
    fake_spec,
    wait_until,
)
from imagefactory import encode, gradient_rgb
from PIL import Image

from imgembed.models.sam2 import Sam2Features
from imgembed.settings import BatchingSettings

QUEUE_SIZE = 2
FEATURES = ("high_res_feats_0", "high_res_feats_1", "image_embed")
PNG_A = encode(Image.fromarray(gradient_rgb()), "PNG")
PNG_B = encode(Image.fromarray(np.ascontiguousarray(gradient_rgb()[::-1])), "PNG")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeServer]:
    config = fake_config(fake_spec(SAM2_MODEL, batching=BatchingSettings(0, 5, QUEUE_SIZE)))
    with fake_server(config) as running:
        yield running


@pytest.fixture(scope="module")
def server(fake: FakeServer) -> str:
    return fake.url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(url=server.removeprefix("http://"))
    yield triton
    triton.close()


def infer_input(name: str, array: np.ndarray, *, binary: bool = True) -> httpclient.InferInput:
    datatype = "BYTES" if array.dtype == object else triton_utils.np_to_triton_dtype(array.dtype)
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def native_features(server: str, png: bytes) -> dict[str, np.ndarray]:
    """``[1,C,H,W]`` float32 features of ``png`` from the native embed route."""
    response = httpx.post(
        f"{server}/v1/sam2/embed",
        json={"image_b64": base64.b64encode(png).decode()},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    with np.load(io.BytesIO(base64.b64decode(response.json()["data"]))) as archive:
        return {
            "image_embed": archive["embedding"][None],
            "high_res_feats_0": archive["high_res_feats_0"][None],
            "high_res_feats_1": archive["high_res_feats_1"][None],
        }


@pytest.fixture(scope="module")
def features_a(client: httpclient.InferenceServerClient) -> dict[str, np.ndarray]:
    files = infer_input("image_bytes", np.array([PNG_A, PNG_B], dtype=object))
    result = client.infer("sam2_encoder", [files])
    return {name: result.as_numpy(name)[:1] for name in FEATURES}


def test_server_and_model_metadata(server: str, client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    server_metadata = client.get_server_metadata()
    assert server_metadata["name"] == "imgembed"
    assert "binary_tensor_data" in server_metadata["extensions"]
    assert client.is_model_ready("sam2_encoder")
    assert client.is_model_ready("sam2_decoder", model_version="1")
    assert client.is_model_ready(f"{SAM2_MODEL}_decoder")
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
    config = client.get_model_config("sam2_decoder")
    assert {entry["name"]: entry["optional"] for entry in config["input"]}["mask_input"] is True
    index = client.get_model_repository_index()
    assert {"name": "sam2_encoder", "version": "1", "state": "READY"} in index
    listed = httpx.get(f"{server}/v2/models", timeout=10).json()["models"]
    assert {model["name"] for model in listed} >= {"sam2_encoder", "sam2_decoder"}


def test_encoder_batches_give_each_image_its_native_features(
    server: str, client: httpclient.InferenceServerClient, features_a: dict[str, np.ndarray]
) -> None:
    native_a, native_b = native_features(server, PNG_A), native_features(server, PNG_B)
    files = infer_input("image_bytes", np.array([PNG_B, PNG_A], dtype=object))
    result = client.infer("sam2_encoder", [files])
    for name in FEATURES:
        np.testing.assert_array_equal(features_a[name], native_a[name])
        np.testing.assert_array_equal(result.as_numpy(name)[1:], native_a[name])
        np.testing.assert_array_equal(result.as_numpy(name)[:1], native_b[name])
    text = np.array([base64.b64encode(PNG_A)], dtype=object)
    as_json = client.infer(
        "sam2_encoder",
        [infer_input("image_bytes", text, binary=False)],
        outputs=[httpclient.InferRequestedOutput("image_embed", binary_data=False)],
        request_id="json-1",
    )
    assert as_json.get_response()["id"] == "json-1"
    assert as_json.as_numpy("high_res_feats_0") is None
    np.testing.assert_allclose(as_json.as_numpy("image_embed"), native_a["image_embed"], atol=1e-6)


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


def test_decoder_round_trip_encode_once_decode_many(
    client: httpclient.InferenceServerClient, features_a: dict[str, np.ndarray]
) -> None:
    coords, labels = prompts(8)
    first = client.infer("sam2_decoder", decode_inputs(features_a, coords, labels, binary=True))
    masks, iou = first.as_numpy("masks"), first.as_numpy("iou_predictions")
    assert masks.shape == (8, 3, 256, 256)
    assert iou.shape == (8, 3)
    features = Sam2Features(**{name: torch.tensor(features_a[name]) for name in FEATURES})
    expected = fake_decode(
        features,
        torch.from_numpy(coords),
        torch.from_numpy(labels).long(),
        torch.zeros(1, 1, 256, 256),
        torch.zeros(1),
    )
    np.testing.assert_allclose(masks, expected.masks.numpy(), atol=1e-6)
    np.testing.assert_allclose(iou, expected.iou_predictions.numpy(), atol=1e-6)
    best = iou.argmax(axis=1)
    previous = masks[np.arange(8), best][:, None]  # [8,256,256] -> [8,1,256,256]
    refine = decode_inputs(features_a, coords, labels, binary=True)
    refine += [
        infer_input("mask_input", previous),
        infer_input("has_mask_input", np.ones(8, np.float32)),
    ]
    second = client.infer("sam2_decoder", refine)
    assert np.abs(second.as_numpy("masks") - masks).max() > 1


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


# Bad requests -------------------------------------------------------------------------------


def post_infer(
    server: str, model: str, document: dict, binary: bytes = b"", version: str = ""
) -> httpx.Response:
    """A raw v2 inference request: the JSON header, then ``binary`` when given."""
    header = json.dumps(document).encode()
    headers = {"Inference-Header-Content-Length": str(len(header))} if binary else {}
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return httpx.post(server + path, content=header + binary, headers=headers, timeout=60)


def assert_v2_error(response: httpx.Response, status: int, *phrases: str) -> None:
    """The v2 error shape, the status, the phrases in the message, and no traceback."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"], body
    assert isinstance(body["error"], str), body
    for phrase in phrases:
        assert phrase in body["error"], body["error"]
    assert "Traceback" not in response.text


def json_tensor(name: str, shape: list[int], datatype: str, data: list) -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def binary_tensor(name: str, array: np.ndarray) -> tuple[dict, bytes]:
    header = {
        "name": name,
        "shape": list(array.shape),
        "datatype": triton_utils.np_to_triton_dtype(array.dtype),
        "parameters": {"binary_data_size": array.nbytes},
    }
    return header, array.tobytes()


PNG_A_TEXT = base64.b64encode(PNG_A).decode()
NOT_AN_IMAGE = base64.b64encode(b"hello, not an image").decode()
ZEROS = np.zeros((1, 3, 1024, 1024), np.float32)


@pytest.fixture(scope="module")
def zero_features() -> dict[str, np.ndarray]:
    """All-zero features of one image, ``[1,C,H,W]`` float32 per name."""
    shapes = {"high_res_feats_0": (32, 256, 256), "high_res_feats_1": (64, 128, 128)}
    shapes["image_embed"] = (256, 64, 64)
    return {name: np.zeros((1, *shape), np.float32) for name, shape in shapes.items()}


@pytest.mark.parametrize(
    ("model", "inputs", "status", "phrase"),
    [
        ("sam2_encoder", [json_tensor("img", [1], "BYTES", ["x"])], 400, "input 'img' is not an input of model 'sam2_encoder'; it takes ['image', 'image_bytes']"),
        ("sam2_encoder", [json_tensor("image", [1, 3, 1024, 1024], "FP64", [0])], 400, "input 'image' has datatype FP64; expected FP32"),
        ("sam2_encoder", [json_tensor("image", [1, 3, 512, 512], "FP32", [0])], 400, "input 'image' has shape [1,3,512,512]; expected [-1,3,1024,1024]"),
        ("sam2_encoder", [json_tensor("image", [1, 3, 1024, 1024], "FP32", [0.5] * 10)], 400, "input 'image' has 10 values in 'data'; shape [1,3,1024,1024] needs 3145728"),
        ("sam2_encoder", [json_tensor("image_bytes", [2], "BYTES", [PNG_A_TEXT])], 400, "input 'image_bytes' has 1 elements; shape [2] needs 2"),
        ("sam2_encoder", [json_tensor("image_bytes", [2], "BYTES", [PNG_A_TEXT, NOT_AN_IMAGE])], 400, "image_bytes[1] is not a recognised image"),
        ("sam2_encoder", [json_tensor("image_bytes", [1], "BYTES", ["%%%"])], 400, "image_bytes[0] is not valid base64"),
        ("sam2_encoder", [json_tensor("image_bytes", [3], "BYTES", [PNG_A_TEXT] * 3)], 400, "input 'image_bytes' has batch 3; model 'sam2_encoder' takes 1 to 2 items"),
        ("sam2_encoder", [json_tensor("image_bytes", [0], "BYTES", [])], 400, "input 'image_bytes' has batch 0"),
        ("sam3_encoder", [json_tensor("image_bytes", [1], "BYTES", [PNG_A_TEXT])], 404, "unknown model 'sam3_encoder'; this server serves"),
    ],
    ids=[
        "unknown-input", "wrong-datatype", "wrong-shape", "data-length", "bytes-count",
        "not-an-image", "bad-base64", "batch-over-limit", "empty-batch", "unknown-model",
    ],
)  # fmt: skip
def test_bad_encoder_requests(
    server: str, model: str, inputs: list, status: int, phrase: str
) -> None:
    assert_v2_error(post_infer(server, model, {"inputs": inputs}), status, phrase)
    assert httpx.get(f"{server}/v2/health/ready", timeout=10).status_code == 200


def test_bad_framing_and_versions(server: str) -> None:
    png = json_tensor("image_bytes", [1], "BYTES", [PNG_A_TEXT])
    response = httpx.post(f"{server}/v2/models/sam2_encoder/infer", content=b"{nope", timeout=30)
    assert_v2_error(response, 400, "inference request JSON is malformed")
    assert_v2_error(
        post_infer(server, "sam2_encoder", {"inputs": [png]}, version="7"), 404, "no version '7'"
    )
    unknown_output = {"inputs": [png], "outputs": [{"name": "embedding"}]}
    assert_v2_error(
        post_infer(server, "sam2_encoder", unknown_output),
        400,
        "output 'embedding' is not an output of model 'sam2_encoder'",
    )
    described, raw = binary_tensor("image", ZEROS)
    short = post_infer(server, "sam2_encoder", {"inputs": [described]}, raw[:-4])
    assert_v2_error(
        short, 400, f"carries {len(raw) - 4} bytes of binary tensor data", f"declare {len(raw)}"
    )
    both = post_infer(server, "sam2_encoder", {"inputs": [described, png]}, raw)
    assert_v2_error(both, 400, "takes exactly one of 'image'")
    metadata = httpx.get(f"{server}/v2/models/sam2_encoder/versions/3", timeout=10)
    assert_v2_error(metadata, 404, "its only version is '1'")
    assert_v2_error(
        httpx.get(f"{server}/v2/models/nope/ready", timeout=10), 404, "unknown model 'nope'"
    )


def decoder_document(
    features: dict[str, np.ndarray], prompt: list[dict], skip: tuple[str, ...] = ()
) -> tuple[dict, bytes]:
    """A decoder request: the features as binary (less those in ``skip``), then ``prompt``."""
    described = [binary_tensor(name, features[name]) for name in FEATURES if name not in skip]
    document = {"inputs": [header for header, _ in described] + prompt}
    return document, b"".join(raw for _, raw in described)


COORDS = json_tensor("point_coords", [1, 2, 2], "FP32", [400.0, 500.0, 0.0, 0.0])
LABELS = json_tensor("point_labels", [1, 2], "FP32", [1, -1])


@pytest.mark.parametrize(
    ("prompt", "skip", "phrase"),
    [
        ([COORDS, json_tensor("point_labels", [1, 2], "FP32", [5, -1])], (), "input 'point_labels' has 5.0 at index [0, 0]; labels are 1 foreground"),
        ([COORDS, json_tensor("point_labels", [1, 3], "FP32", [1, -1, 1])], (), "input 'point_labels' has shape [1, 3]; expected [1,2]"),
        ([json_tensor("point_coords", [1, 2, 2], "FP32", [400.0, float("nan"), 0, 0]), LABELS], (), "input 'point_coords' holds NaN or infinite values (first at index [0, 0, 1])"),
        ([json_tensor("point_coords", [1, 2, 2], "INT32", [400, 500, 0, 0]), LABELS], (), "input 'point_coords' has datatype INT32; expected FP32"),
        ([json_tensor("point_coords", [1, 0, 2], "FP32", []), json_tensor("point_labels", [1, 0], "FP32", [])], (), "input 'point_coords' has 0 points per prompt"),
        ([COORDS, LABELS, json_tensor("has_mask_input", [1], "FP32", [1])], (), "no 'mask_input' was sent"),
        ([COORDS, LABELS, json_tensor("has_mask_input", [1], "FP32", [0.5])], (), "'has_mask_input' must hold 0 or 1"),
        ([COORDS, LABELS], ("image_embed",), "model 'sam2_decoder' needs input 'image_embed'"),
        ([COORDS], (), "needs input 'point_labels'"),
    ],
    ids=[
        "bad-label", "labels-shape", "nan-coords", "int-coords", "no-points", "mask-missing",
        "fractional-has-mask", "missing-feature", "missing-labels",
    ],
)  # fmt: skip
def test_bad_decoder_requests(
    server: str, zero_features: dict[str, np.ndarray], prompt: list, skip: tuple, phrase: str
) -> None:
    document, raw = decoder_document(zero_features, prompt, skip)
    assert_v2_error(post_infer(server, "sam2_decoder", document, raw), 400, phrase)
    assert httpx.get(f"{server}/v2/health/ready", timeout=10).status_code == 200


def test_bad_binary_feature_shape_and_size(
    server: str, zero_features: dict[str, np.ndarray]
) -> None:
    small = dict(zero_features, image_embed=np.zeros((1, 256, 32, 32), np.float32))
    document, raw = decoder_document(small, [COORDS, LABELS])
    assert_v2_error(
        post_infer(server, "sam2_decoder", document, raw),
        400,
        "input 'image_embed' has shape [1,256,32,32]; expected [-1,256,64,64]",
    )
    document, raw = decoder_document(zero_features, [COORDS, LABELS])
    document["inputs"][0]["parameters"]["binary_data_size"] += 4
    response = post_infer(server, "sam2_decoder", document, raw + b"\0" * 4)
    assert_v2_error(response, 400, "input 'high_res_feats_0' has binary_data_size 8388612; shape [1,32,256,256] of FP32 needs 8388608 bytes")  # fmt: skip


def test_tritonclient_reports_errors_with_status_and_message(
    client: httpclient.InferenceServerClient, zero_features: dict[str, np.ndarray]
) -> None:
    coords = np.array([[[10, 20]]], np.int32)
    labels = np.array([[1]], np.float32)
    inputs = [infer_input(name, zero_features[name]) for name in FEATURES]
    bad_datatype = [*inputs, infer_input("point_coords", coords), infer_input("point_labels", labels)]  # fmt: skip
    with pytest.raises(triton_utils.InferenceServerException) as caught:
        client.infer("sam2_decoder", bad_datatype)
    assert caught.value.status() == "400"
    assert "input 'point_coords' has datatype INT32; expected FP32" in caught.value.message()
    with pytest.raises(triton_utils.InferenceServerException) as caught:
        client.infer("sam2_segmenter", bad_datatype)
    assert caught.value.status() == "404"
    assert "unknown model 'sam2_segmenter'" in caught.value.message()


def test_full_queue_gives_429_and_a_passed_deadline_504(fake: FakeServer) -> None:
    """One image holds the encoder while two more (with a 1 µs timeout) fill the queue of 2: the
    next request is refused with 429, and the queued two are dropped unrun with 504."""
    url = f"{fake.url}/v2/models/sam2_encoder/infer"

    def post_images(count: int, timeout_us: int | None = None) -> httpx.Response:
        files = infer_input("image_bytes", np.array([PNG_A] * count, dtype=object))
        body, header_length = httpclient.InferenceServerClient.generate_request_body(
            [files], timeout=timeout_us
        )
        headers = {"Inference-Header-Content-Length": str(header_length)}
        return httpx.post(url, content=body, headers=headers, timeout=60)

    batcher = fake.model().batcher
    hold = threading.Event()
    fake.model().encoder.hold = hold
    answers: dict[str, httpx.Response] = {}
    try:
        running = threading.Thread(target=lambda: answers.update(running=post_images(1)))
        running.start()
        wait_until(lambda: batcher.in_flight == 1, "one image holds the encoder")
        queued = threading.Thread(target=lambda: answers.update(queued=post_images(2, 1)))
        queued.start()
        wait_until(lambda: batcher.queued == QUEUE_SIZE, "two images are queued")
        refused = post_images(1)
        assert_v2_error(refused, 429, "requests waiting, its limit")
        assert refused.headers["retry-after"] == "1"
    finally:
        hold.set()
        fake.model().encoder.hold = None
    running.join(timeout=60)
    queued.join(timeout=60)
    assert_v2_error(answers["queued"], 504, "passed its deadline before running")
    assert answers["running"].status_code == 200


def test_errors_raised_outside_the_v2_routes_keep_the_v2_shape(server: str) -> None:
    assert_v2_error(httpx.get(f"{server}/v2/nothing/here", timeout=10), 404, "Not Found")
    assert_v2_error(httpx.get(f"{server}/v2/models/sam2_encoder/infer", timeout=10), 405)
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            b"POST /v2/models/sam2_encoder/infer HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n{}"
        )
        reply = b""
        while chunk := connection.recv(65536):  # the server closes after its answer
            reply += chunk
    head, _, body = reply.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413"), head
    payload = json.loads(body)
    assert list(payload) == ["error"]
    assert "limit" in payload["error"]
