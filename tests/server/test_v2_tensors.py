"""The v2 tensor codec against tritonclient's own request writer and response reader, no server.

Requests are produced by ``InferenceServerClient.generate_request_body`` and responses read back
with ``InferResult.from_response_body``: the exact bytes the real client sends and parses.
"""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import numpy as np
import pytest

from imgembed.errors import InvalidInputError, PayloadTooLargeError, UnsupportedMediaTypeError
from imgembed.server.v2_request import decompress_body, parse_infer_request
from imgembed.server.v2_tensors import (
    InferRequest,
    OutputTensor,
    RequestInput,
    TensorSpec,
    encode_infer_response,
    requested_outputs,
    tensor_from_input,
)

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient is a test extra")

COORDS = TensorSpec("point_coords", "FP32", (-1, -1, 2))
FILES = TensorSpec("image_bytes", "BYTES", (-1,))
COORD_VALUES = np.array([[[10.5, 20.25], [30.0, 40.0]], [[1.0, 2.0], [3.0, 4.0]]], np.float32)


def tritonclient_request(
    arrays: dict[str, np.ndarray], *, binary: bool, outputs: list | None = None
) -> tuple[bytes, str | None]:
    """The body and ``Inference-Header-Content-Length`` tritonclient sends for ``arrays``."""
    inputs = []
    for name, array in arrays.items():
        datatype = "BYTES" if array.dtype == object else "FP32"
        infer_input = httpclient.InferInput(name, list(array.shape), datatype)
        infer_input.set_data_from_numpy(array, binary_data=binary)
        inputs.append(infer_input)
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id="req-7", timeout=2_500_000
    )
    return body, None if header_length is None else str(header_length)


def invalid(message_part: str, body: bytes, header_length: str | None = None) -> None:
    with pytest.raises(InvalidInputError, match=message_part):
        parse_infer_request(body, header_length)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_requests_parse_to_the_sent_arrays(binary: bool) -> None:
    files = np.array([b"\x89PNG\r\n\x00\xff" if binary else b"aGVsbG8=", b"x"], dtype=object)
    body, header_length = tritonclient_request(
        {"point_coords": COORD_VALUES, "image_bytes": files}, binary=binary
    )
    request = parse_infer_request(body, header_length)
    assert request.id == "req-7"
    assert request.timeout_s == pytest.approx(2.5)
    assert request.outputs is None
    assert request.binary_output is True  # tritonclient asks for binary when no outputs are named
    coords = tensor_from_input(request.inputs[0], COORDS)
    assert coords.dtype == np.float32
    np.testing.assert_array_equal(coords, COORD_VALUES)
    elements = tensor_from_input(request.inputs[1], FILES)
    expected = list(files) if binary else [element.decode() for element in files]
    assert list(elements) == expected
    assert request.inputs[1].binary is binary


def test_requested_outputs_follow_per_output_then_request_setting() -> None:
    outputs = [
        httpclient.InferRequestedOutput("masks", binary_data=False),
        httpclient.InferRequestedOutput("iou_predictions"),
    ]
    body, header_length = tritonclient_request(
        {"point_coords": COORD_VALUES}, binary=True, outputs=outputs
    )
    request = parse_infer_request(body, header_length)
    specs = [TensorSpec("iou_predictions", "FP32", (-1, 3)), TensorSpec("masks", "FP32", (-1,))]
    assert requested_outputs(request, specs, "sam2_decoder") == {
        "masks": False,
        "iou_predictions": True,
    }
    unknown = InferRequest(None, (), {"logits": None}, False, None)
    with pytest.raises(InvalidInputError, match="'logits' is not an output of model"):
        requested_outputs(unknown, specs, "sam2_decoder")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_responses_read_back_with_tritonclient(binary: bool) -> None:
    masks = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 7
    iou = np.array([[0.25, 0.5, 0.75], [1.0, 0.0, 0.125]], np.float32)
    outputs = [
        OutputTensor("masks", "FP32", masks, binary),
        OutputTensor("iou_predictions", "FP32", iou, False),
    ]
    body, header_length = encode_infer_response("sam2_decoder", "1", "req-7", outputs)
    assert (header_length is None) is not binary
    result = httpclient.InferResult.from_response_body(body, header_length=header_length)
    np.testing.assert_array_equal(result.as_numpy("masks"), masks)
    np.testing.assert_array_equal(result.as_numpy("iou_predictions"), iou)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (
        "sam2_decoder",
        "1",
        "req-7",
    )


def header(inputs: list[dict], **fields: object) -> bytes:
    return json.dumps({"inputs": inputs, **fields}).encode()


COORD_INPUT = {"name": "point_coords", "shape": [1, 1, 2], "datatype": "FP32", "data": [1, 2]}
BINARY_COORD_INPUT = {
    "name": "point_coords",
    "shape": [1, 1, 2],
    "datatype": "FP32",
    "parameters": {"binary_data_size": 8},
}


@pytest.mark.parametrize(
    ("body", "message_part"),
    [
        (b"{not json", "JSON is malformed"),
        (b"[1, 2]", "must be a JSON object"),
        (header([COORD_INPUT], extra=1), r"unknown field\(s\) \['extra'\]"),
        (header([]), "non-empty list"),
        (header([COORD_INPUT, COORD_INPUT]), "given more than once"),
        (header([{**COORD_INPUT, "shape": [1, -1, 2]}]), "list of whole numbers >= 0"),
        (header([{**COORD_INPUT, "datatype": "FLOAT"}]), "datatype 'FLOAT'"),
        (header([{k: v for k, v in COORD_INPUT.items() if k != "data"}]), "neither 'data'"),
        (header([{**COORD_INPUT, "parameters": {"shared_memory_region": "r"}}]), "shared memory"),
        (header([COORD_INPUT], parameters={"sequence_id": 3}), "not sequence models"),
        (header([COORD_INPUT], parameters={"binary_data_ouput": True}), "unknown request parameter"),
        (header([COORD_INPUT], parameters={"timeout": -5}), "microseconds"),
        (header([COORD_INPUT], outputs=[{"name": "m", "parameters": {"classification": 3}}]), "classification"),
        (header([{**COORD_INPUT, "parameters": {"binary_data_size": 8}}]), "both 'data' and"),
        (header([BINARY_COORD_INPUT]), "no Inference-Header-Content-Length"),
    ],
    ids=[
        "malformed", "not-object", "unknown-field", "no-inputs", "duplicate", "negative-dim",
        "bad-datatype", "no-data", "shared-memory", "sequence", "typo-parameter", "bad-timeout",
        "classification", "data-and-binary", "binary-without-header",
    ],
)  # fmt: skip
def test_malformed_requests_are_refused(body: bytes, message_part: str) -> None:
    invalid(message_part, body)


def test_binary_sizes_must_cover_the_binary_data_exactly() -> None:
    json_header = header([BINARY_COORD_INPUT])
    payload = np.array([1, 2], np.float32).tobytes()
    parsed = parse_infer_request(json_header + payload, str(len(json_header)))
    np.testing.assert_array_equal(tensor_from_input(parsed.inputs[0], COORDS), [[[1, 2]]])
    invalid("carries 12 bytes", json_header + payload + b"\0" * 4, str(len(json_header)))
    invalid("carries 4 bytes", json_header + payload[:4], str(len(json_header)))
    invalid("Inference-Header-Content-Length is 'abc'", json_header + payload, "abc")
    invalid("Inference-Header-Content-Length is '999'", json_header + payload, "999")


@pytest.mark.parametrize(
    ("item", "message_part"),
    [
        (RequestInput("point_coords", "FP64", (1, 1, 2), data=[1, 2]), "datatype FP64; expected FP32"),
        (RequestInput("point_coords", "FP32", (1, 2), data=[1, 2]), r"shape \[1,2\]; expected \[-1,-1,2\]"),
        (RequestInput("point_coords", "FP32", (1, 1, 3), data=[1, 2, 3]), "expected"),
        (RequestInput("point_coords", "FP32", (1, 2, 2), data=[1, 2, 3]), "3 values in 'data'; shape"),
        (RequestInput("point_coords", "FP32", (1, 1, 2), data=["1", "2"]), "str"),
        (RequestInput("point_coords", "FP32", (1, 1, 2), data=[[1], [2, 3]]), "not a regular list"),
        (RequestInput("point_coords", "FP32", (1, 1, 2), data=7), "must be a JSON list"),
        (RequestInput("point_coords", "FP32", (1, 1, 2), data=[1, float("nan")]), r"NaN or infinite values \(first at index \[0, 0, 1\]\)"),
        (RequestInput("point_coords", "FP32", (1, 1, 2), data=[1, 1e39]), "NaN or infinite"),
        (RequestInput("point_coords", "FP32", (1, 1, 2), raw=b"\0" * 12), "binary_data_size 12; shape"),
    ],
    ids=[
        "datatype", "rank", "fixed-dim", "count", "strings", "ragged", "scalar", "nan",
        "overflow", "binary-size",
    ],
)  # fmt: skip
def test_inputs_that_do_not_fit_name_the_input(item: RequestInput, message_part: str) -> None:
    with pytest.raises(InvalidInputError, match=message_part) as caught:
        tensor_from_input(item, COORDS)
    assert "'point_coords'" in caught.value.message
    assert caught.value.field == "point_coords"


def test_nested_json_data_is_read_row_major() -> None:
    item = RequestInput("point_coords", "FP32", (2, 2, 2), data=COORD_VALUES.tolist())
    np.testing.assert_array_equal(tensor_from_input(item, COORDS), COORD_VALUES)


@pytest.mark.parametrize(
    ("raw", "message_part"),
    [
        (struct.pack("<I", 5) + b"abc", "declares 5 bytes"),
        (struct.pack("<I", 1) + b"a" + b"\0\0", "inside an element's 4-byte length"),
        (struct.pack("<I", 1) + b"a", "has 1 elements; shape"),
    ],
)
def test_malformed_binary_bytes_are_refused(raw: bytes, message_part: str) -> None:
    with pytest.raises(InvalidInputError, match=message_part):
        tensor_from_input(RequestInput("image_bytes", "BYTES", (2,), raw=raw), FILES)


def test_bytes_json_data_must_be_strings() -> None:
    with pytest.raises(InvalidInputError, match="must be strings"):
        tensor_from_input(RequestInput("image_bytes", "BYTES", (1,), data=[3]), FILES)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_bodies_inflate_within_the_limit(encoding: str) -> None:
    body = b'{"inputs": []}' * 100
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    assert decompress_body(packed, encoding, limit=len(body)) == body
    with pytest.raises(PayloadTooLargeError, match="inflates to more than"):
        decompress_body(packed, encoding, limit=len(body) - 1)
    with pytest.raises(InvalidInputError, match=f"not valid {encoding} data"):
        decompress_body(b"plain", encoding, limit=100)


def test_unknown_content_encoding_is_refused() -> None:
    assert decompress_body(b"x", None, limit=10) == b"x"
    with pytest.raises(UnsupportedMediaTypeError, match="'br' is not accepted"):
        decompress_body(b"x", "br", limit=10)
