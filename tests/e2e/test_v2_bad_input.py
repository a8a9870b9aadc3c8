"""Every bad v2 request through a real ``imgembed serve``: the v2 error shape, the right status,
a message naming the input, and a server that keeps serving.

The server runs untrained (``--weights dummy``) weights with a queue of 2 per model, so the batch
limit is 2 and a full queue is easy to reach. Decoder requests carry all-zero features: the
checks come before any computation, and the decoder computes on zeros as well as on anything.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from imagefactory import encode, gradient_rgb
from PIL import Image
from servers import imgembed_server

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient is a test extra")
triton_utils = pytest.importorskip("tritonclient.utils")

pytestmark = pytest.mark.e2e

QUEUE_SIZE = 2
FEATURES = ("high_res_feats_0", "high_res_feats_1", "image_embed")
PNG_A = encode(Image.fromarray(gradient_rgb()), "PNG")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"IMGEMBED_MAX_QUEUE_SIZE": str(QUEUE_SIZE), "IMGEMBED_WARMUP": "0"}
    log = tmp_path_factory.mktemp("v2_bad_input") / "server.log"
    with imgembed_server(["--weights", "dummy"], env, log_path=log) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def features_a() -> dict[str, np.ndarray]:
    """All-zero features of one image, ``[1,C,H,W]`` float32 per name."""
    shapes = {"high_res_feats_0": (32, 256, 256), "high_res_feats_1": (64, 128, 128)}
    shapes["image_embed"] = (256, 64, 64)
    return {name: np.zeros((1, *shape), np.float32) for name, shape in shapes.items()}


def infer_input(name: str, array: np.ndarray, *, binary: bool = True) -> httpclient.InferInput:
    datatype = "BYTES" if array.dtype == object else triton_utils.np_to_triton_dtype(array.dtype)
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def post_infer(
    server: str, model: str, document: dict, binary: bytes = b"", version: str = ""
) -> httpx.Response:
    """A raw v2 inference request: the JSON header, then ``binary`` when given."""
    header = json.dumps(document).encode()
    headers = {"Inference-Header-Content-Length": str(len(header))} if binary else {}
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return httpx.post(server + path, content=header + binary, headers=headers, timeout=120)


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
    assert httpx.get(f"{server}/v2/health/live", timeout=10).status_code == 200  # fmt: skip


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
    server: str, features_a: dict[str, np.ndarray], prompt: list, skip: tuple, phrase: str
) -> None:
    document, raw = decoder_document(features_a, prompt, skip)
    assert_v2_error(post_infer(server, "sam2_decoder", document, raw), 400, phrase)
    assert httpx.get(f"{server}/v2/health/ready", timeout=10).status_code == 200


def test_bad_binary_feature_shape_and_size(server: str, features_a: dict[str, np.ndarray]) -> None:
    small = dict(features_a, image_embed=np.zeros((1, 256, 32, 32), np.float32))
    document, raw = decoder_document(small, [COORDS, LABELS])
    response = post_infer(server, "sam2_decoder", document, raw)
    assert_v2_error(
        response, 400, "input 'image_embed' has shape [1,256,32,32]; expected [-1,256,64,64]"
    )
    document, raw = decoder_document(features_a, [COORDS, LABELS])
    document["inputs"][0]["parameters"]["binary_data_size"] += 4
    response = post_infer(server, "sam2_decoder", document, raw + b"\0" * 4)
    assert_v2_error(response, 400, "input 'high_res_feats_0' has binary_data_size 8388612; shape [1,32,256,256] of FP32 needs 8388608 bytes")  # fmt: skip


def test_tritonclient_reports_errors_with_status_and_message(
    client: httpclient.InferenceServerClient, features_a: dict[str, np.ndarray]
) -> None:
    coords = np.array([[[10, 20]]], np.int32)
    labels = np.array([[1]], np.float32)
    inputs = [infer_input(name, features_a[name]) for name in FEATURES]
    bad_datatype = [*inputs, infer_input("point_coords", coords), infer_input("point_labels", labels)]  # fmt: skip
    with pytest.raises(triton_utils.InferenceServerException) as caught:
        client.infer("sam2_decoder", bad_datatype)
    assert caught.value.status() == "400"
    assert "input 'point_coords' has datatype INT32; expected FP32" in caught.value.message()
    with pytest.raises(triton_utils.InferenceServerException) as caught:
        client.infer("sam2_segmenter", bad_datatype)
    assert caught.value.status() == "404"
    assert "unknown model 'sam2_segmenter'" in caught.value.message()
    good = [*inputs, infer_input("point_coords", coords.astype(np.float32)), infer_input("point_labels", labels)]  # fmt: skip
    assert client.infer("sam2_decoder", good).as_numpy("masks").shape == (1, 3, 256, 256)


def test_full_queue_gives_429_and_a_passed_deadline_504(
    server: str, client: httpclient.InferenceServerClient, features_a: dict[str, np.ndarray]
) -> None:
    """One image computes while two more (with a 1 µs timeout) fill the queue of 2: the next
    request is refused with 429, and the queued two are dropped unrun with 504."""
    url = f"{server}/v2/models/sam2_encoder/infer"

    def post_images(count: int, timeout_us: int | None = None) -> httpx.Response:
        files = infer_input("image_bytes", np.array([PNG_A] * count, dtype=object))
        body, header_length = httpclient.InferenceServerClient.generate_request_body(
            [files], timeout=timeout_us
        )
        headers = {"Inference-Header-Content-Length": str(header_length)}
        return httpx.post(url, content=body, headers=headers, timeout=120)

    with ThreadPoolExecutor(max_workers=2) as pool:
        running = pool.submit(post_images, 1)
        time.sleep(1.0)
        queued = pool.submit(post_images, 2, 1)
        time.sleep(0.5)
        refused = post_images(1)
        assert_v2_error(refused, 429, "requests waiting, its limit")
        assert refused.headers["retry-after"] == "1"
        assert_v2_error(queued.result(), 504, "passed its deadline before running")
        assert running.result().status_code == 200
    inputs = [infer_input(name, features_a[name]) for name in FEATURES]
    inputs += [
        infer_input("point_coords", np.array([[[500.0, 400.0]]], np.float32)),
        infer_input("point_labels", np.array([[1.0]], np.float32)),
    ]
    assert client.infer("sam2_decoder", inputs).as_numpy("masks").shape == (1, 3, 256, 256)


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
