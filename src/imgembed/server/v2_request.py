"""Open Inference Protocol (v2) requests: the JSON header, parameters and binary tensor data.

A request body is a JSON object ``{"id", "parameters", "inputs", "outputs"}``. Each input has a
``name``, ``shape``, ``datatype`` and either ``data`` (JSON values) or
``parameters.binary_data_size``: then its raw bytes follow the JSON header, in input order, and the
``Inference-Header-Content-Length`` HTTP header gives the header's length in bytes. Everything is
checked here except what depends on the model (:func:`~imgembed.server.v2_tensors.tensor_from_input`).
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

from imgembed.api.json_body import NotJsonError, decode_json
from imgembed.errors import InvalidInputError, PayloadTooLargeError, UnsupportedMediaTypeError
from imgembed.server.v2_tensors import DATATYPES, InferRequest, RequestInput
from imgembed.settings.values import InputLimits

_REQUEST_KEYS = ("id", "parameters", "inputs", "outputs")
_INPUT_KEYS = ("name", "shape", "datatype", "parameters", "data")
_OUTPUT_KEYS = ("name", "parameters")
_READ_PARAMETERS = ("binary_data_output", "timeout", "priority")


def _object_or_null(properties: dict[str, Any]) -> dict[str, Any]:
    closed = {"type": "object", "properties": properties, "additionalProperties": False}
    return {"anyOf": [closed, {"type": "null"}]}


_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": list(DATATYPES)},
        "parameters": _object_or_null({"binary_data_size": {"type": "integer", "minimum": 0}}),
        "data": {
            "description": "The tensor's values, flat or nested, row-major (strings for BYTES); "
            "exactly one of data and parameters.binary_data_size."
        },
    },
}
INFER_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "V2InferRequest",
    "description": "An Open Inference Protocol inference request, as parse_infer_request checks "
    "it. With the Inference-Header-Content-Length header, this JSON is followed by the binary "
    "data of the inputs that declare binary_data_size, in input order.",
    "required": ["inputs"],
    "additionalProperties": False,
    "properties": {
        "id": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "parameters": _object_or_null(
            {
                "binary_data_output": {"type": "boolean"},
                "timeout": {"type": "integer", "minimum": 0, "description": "Microseconds."},
                "priority": {"description": "Accepted and ignored."},
            }
        ),
        "inputs": {"type": "array", "minItems": 1, "items": _INPUT_SCHEMA},
        "outputs": {
            "anyOf": [
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string"},
                            "parameters": _object_or_null(
                                {"binary_data": {"anyOf": [{"type": "boolean"}, {"type": "null"}]}}
                            ),
                        },
                    },
                },
                {"type": "null"},
            ]
        },
    },
}
"""The JSON part of a request body as the OpenAPI document describes it: what
:func:`parse_infer_request` accepts (input names, the model's tensors and their shapes are checked
against the model afterwards)."""


def _invalid(message: str, field: str | None = None) -> InvalidInputError:
    return InvalidInputError(message, field=field)


def decompress_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """Undoes a ``gzip`` or ``deflate`` ``Content-Encoding`` (what tritonclient can send).

    Raises:
        UnsupportedMediaTypeError: Another encoding.
        PayloadTooLargeError: The body inflates past ``limit`` bytes.
        InvalidInputError: The body is not valid compressed data.
    """
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {encoding!r} is not accepted; send gzip, deflate or no encoding",
            field="content-encoding",
        )
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise _invalid(
            f"request body is not valid {encoding} data ({error}); compress the whole body or "
            "drop the Content-Encoding header",
            "content-encoding",
        ) from error
    if len(inflated) > limit or inflater.unconsumed_tail:
        raise PayloadTooLargeError(
            f"request body inflates to more than {limit:,} bytes, the limit "
            "(IMGEMBED_MAX_BODY_BYTES); send fewer or smaller tensors per request",
            field="body",
        )
    return inflated


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.strip().isdigit() or int(header_length) > len(body):
        raise _invalid(
            f"Inference-Header-Content-Length is {header_length!r} for a body of {len(body)} "
            "bytes; expected the length in bytes of the JSON header at the start of the body",
            "Inference-Header-Content-Length",
        )
    length = int(header_length)
    return body[:length], memoryview(body)[length:]


def _load_header(header: bytes, limits: InputLimits) -> dict[str, Any]:
    try:
        document = decode_json(header, limits)
    except NotJsonError as error:
        raise _invalid(
            f"inference request JSON is malformed ({error}); send a JSON object with 'inputs', "
            "followed by binary tensor data if Inference-Header-Content-Length is set",
            "body",
        ) from error
    if not isinstance(document, dict):
        raise _invalid(
            f"inference request must be a JSON object, got {type(document).__name__}", "body"
        )
    unknown = sorted(set(document) - set(_REQUEST_KEYS))
    if unknown:
        raise _invalid(
            f"unknown field(s) {unknown} in the inference request; expected {list(_REQUEST_KEYS)}",
            unknown[0],
        )
    return document


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid(f"{what} must be a JSON object, got {type(value).__name__}", what)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_request_parameters(parameters: dict[str, Any]) -> tuple[bool, float | None]:
    for name in parameters:
        if name.startswith("sequence_"):
            raise _invalid(
                f"request parameter {name!r}: these models are not sequence models; send each "
                "request on its own, without sequence_id",
                name,
            )
        if name not in _READ_PARAMETERS:
            raise _invalid(
                f"unknown request parameter {name!r}; this server reads {list(_READ_PARAMETERS)}",
                name,
            )
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise _invalid(
            f"parameter binary_data_output must be true or false, got {binary_output!r}",
            "binary_data_output",
        )
    timeout = parameters.get("timeout")
    if timeout is not None and (not _is_int(timeout) or timeout < 0):
        raise _invalid(
            f"parameter timeout must be a whole number of microseconds >= 0, got {timeout!r}",
            "timeout",
        )
    return binary_output, (timeout / 1e6 if timeout else None)


def _parse_input(item: Any, index: int) -> tuple[RequestInput, int | None]:
    """One input object; returns it (without binary bytes) and its ``binary_data_size``."""
    if not isinstance(item, dict):
        raise _invalid(f"inputs[{index}] must be a JSON object, got {type(item).__name__}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise _invalid(f"inputs[{index}] has no 'name'; every input needs its tensor name")
    unknown = sorted(set(item) - set(_INPUT_KEYS))
    if unknown:
        raise _invalid(
            f"input {name!r} has unknown field(s) {unknown}; expected {list(_INPUT_KEYS)}", name
        )
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(_is_int(side) and side >= 0 for side in shape):
        raise _invalid(
            f"input {name!r} has shape {shape!r}; expected a list of whole numbers >= 0", name
        )
    datatype = item.get("datatype")
    if datatype not in DATATYPES:
        raise _invalid(
            f"input {name!r} has datatype {datatype!r}; expected a v2 datatype such as FP32 or "
            "BYTES",
            name,
        )
    parameters = _object(item.get("parameters"), f"input {name!r} parameters")
    unknown = sorted(set(parameters) - {"binary_data_size"})
    if unknown:
        raise _invalid(
            f"input {name!r} has unsupported parameter(s) {unknown}; shared memory is not "
            "supported here: send the data in the request, as JSON 'data' or binary",
            name,
        )
    size = parameters.get("binary_data_size")
    if size is not None and (not _is_int(size) or size < 0):
        raise _invalid(
            f"input {name!r} has binary_data_size {size!r}; expected a byte count >= 0", name
        )
    has_data = "data" in item
    if has_data == (size is not None):
        raise _invalid(
            f"input {name!r} has {'both' if has_data else 'neither'} 'data' and "
            "parameters.binary_data_size; give exactly one",
            name,
        )
    request_input = RequestInput(name, datatype, tuple(shape), data=item.get("data"))
    return request_input, size


def _parse_outputs(value: Any) -> dict[str, bool | None] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise _invalid(f"'outputs' must be a list, got {type(value).__name__}", "outputs")
    outputs: dict[str, bool | None] = {}
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _invalid(f"outputs[{index}] must be an object with a 'name'", "outputs")
        name = item["name"]
        unknown = sorted(set(item) - set(_OUTPUT_KEYS))
        parameters = _object(item.get("parameters"), f"output {name!r} parameters")
        unknown += sorted(set(parameters) - {"binary_data"})
        if unknown:
            raise _invalid(
                f"output {name!r} asks for {unknown}; only parameters.binary_data is supported "
                "(no classification, no shared memory)",
                name,
            )
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise _invalid(f"output {name!r}: binary_data must be true or false", name)
        if name in outputs:
            raise _invalid(f"output {name!r} is requested twice", name)
        outputs[name] = binary
    return outputs


def parse_infer_request(
    body: bytes, header_length: str | None, limits: InputLimits | None = None
) -> InferRequest:
    """Parses a v2 inference request body, JSON or JSON plus binary tensor data.

    Args:
        body: The whole (decompressed) request body.
        header_length: The ``Inference-Header-Content-Length`` header, or ``None`` when the body
            is JSON only.
        limits: The JSON checks' limits (nesting depth, number length); the defaults when
            ``None``.

    Returns:
        The request, each input carrying either its JSON ``data`` or its raw bytes.

    Raises:
        InvalidInputError: The body is not a well-formed v2 request; the message names the field.
    """
    header, binary = _split_body(body, header_length)
    document = _load_header(header, limits or InputLimits())
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _invalid(f"'id' must be a string, got {type(request_id).__name__}", "id")
    binary_output, timeout_s = _parse_request_parameters(
        _object(document.get("parameters"), "parameters")
    )
    items = document.get("inputs")
    if not isinstance(items, list) or not items:
        raise _invalid("'inputs' must be a non-empty list of input tensors", "inputs")
    parsed = [_parse_input(item, index) for index, item in enumerate(items)]
    names = [request_input.name for request_input, _ in parsed]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise _invalid(f"input(s) {duplicates} given more than once", duplicates[0])
    sizes = {request_input.name: size for request_input, size in parsed if size is not None}
    if sizes and header_length is None:
        raise _invalid(
            f"input(s) {sorted(sizes)} declare binary_data_size but the request has no "
            "Inference-Header-Content-Length header saying where the binary data starts",
            "Inference-Header-Content-Length",
        )
    if sum(sizes.values()) != len(binary):
        raise _invalid(
            f"the body carries {len(binary)} bytes of binary tensor data after the JSON header, "
            f"but the inputs declare {sum(sizes.values())} ({sizes}); binary_data_size must "
            "match each input's bytes exactly",
            next(iter(sizes), "Inference-Header-Content-Length"),
        )
    inputs = []
    offset = 0
    for request_input, size in parsed:
        if size is not None:
            raw = bytes(binary[offset : offset + size])
            request_input = dataclasses.replace(request_input, data=None, raw=raw)
            offset += size
        inputs.append(request_input)
    return InferRequest(
        id=request_id,
        inputs=tuple(inputs),
        outputs=_parse_outputs(document.get("outputs")),
        binary_output=binary_output,
        timeout_s=timeout_s,
    )
