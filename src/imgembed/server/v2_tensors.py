"""Open Inference Protocol (v2) tensors: datatypes, checking inputs, framing responses.

The wire format is KServe's v2 inference protocol as Triton speaks it, with Triton's binary tensor
data extension (see :mod:`imgembed.server.v2_request` for the request side):

- ``BYTES`` elements travel in binary as a 4-byte little-endian length and the bytes; in JSON as
  strings. Numbers travel in binary as little-endian values in row-major order; in JSON as a list,
  flat or nested, in row-major order.
- Outputs are binary when the request asks (per output ``parameters.binary_data``, else the
  request's ``parameters.binary_data_output``); a binary response is the JSON header followed by
  the outputs' bytes, its length in the ``Inference-Header-Content-Length`` HTTP header.

NumPy only, no torch; nothing here knows any model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgembed.errors import InvalidInputError

NUMERIC_DATATYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in (
        ("BOOL", "|b1"), ("UINT8", "|u1"), ("UINT16", "<u2"), ("UINT32", "<u4"),
        ("UINT64", "<u8"), ("INT8", "|i1"), ("INT16", "<i2"), ("INT32", "<i4"),
        ("INT64", "<i8"), ("FP16", "<f2"), ("FP32", "<f4"), ("FP64", "<f8"),
    )
}  # fmt: skip
"""v2 datatype name to the little-endian NumPy dtype its binary data uses."""
DATATYPES = (*NUMERIC_DATATYPES, "BYTES", "BF16")
"""Every datatype name the protocol defines."""
_BYTES_LENGTH = np.dtype("<u4")


@dataclass(frozen=True)
class TensorSpec:
    """A tensor a model takes or gives.

    Attributes:
        name: Tensor name on the wire.
        datatype: v2 datatype, such as ``FP32`` or ``BYTES``.
        shape: Dimensions; -1 where any size is accepted.
        optional: Whether a request may leave this input out.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False

    def metadata(self) -> dict[str, Any]:
        """The tensor as v2 model metadata lists it."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class RequestInput:
    """One input as the request framed it, not yet checked against a model.

    Attributes:
        name: Input name.
        datatype: Declared v2 datatype.
        shape: Declared shape.
        data: JSON values (``data``), or ``None`` when the input came as binary.
        raw: Its binary bytes, or ``None`` when it came as JSON.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any = None
    raw: bytes | None = None

    @property
    def binary(self) -> bool:
        return self.raw is not None


@dataclass(frozen=True)
class InferRequest:
    """A parsed inference request.

    Attributes:
        id: The client's request id, echoed in the response.
        inputs: Inputs in request order.
        outputs: Output name to whether it should be binary (``None``: as ``binary_output``
            says); ``outputs`` itself is ``None`` when the request asks for every output.
        binary_output: The request-level ``binary_data_output`` default.
        timeout_s: The client's ``timeout`` parameter in seconds, or ``None``.
    """

    id: str | None
    inputs: tuple[RequestInput, ...]
    outputs: dict[str, bool | None] | None
    binary_output: bool
    timeout_s: float | None


@dataclass(frozen=True)
class OutputTensor:
    """One output to send: name, datatype, values and whether to send it binary."""

    name: str
    datatype: str
    array: np.ndarray
    binary: bool


def _invalid(message: str, field: str | None = None) -> InvalidInputError:
    return InvalidInputError(message, field=field)


def describe_shape(shape: Sequence[int]) -> str:
    """``[B,3,1024,1024]``-style text for a shape, with -1 shown as -1."""
    return "[" + ",".join(str(side) for side in shape) + "]"


def _check_shape(item: RequestInput, spec: TensorSpec) -> None:
    fits = len(item.shape) == len(spec.shape) and all(
        expected in (-1, actual) for actual, expected in zip(item.shape, spec.shape, strict=True)
    )
    if not fits:
        raise _invalid(
            f"input {item.name!r} has shape {describe_shape(item.shape)}; expected "
            f"{describe_shape(spec.shape)} (-1: any size)",
            item.name,
        )


def _bytes_elements(item: RequestInput, count: int) -> list[bytes | str]:
    if item.raw is None:
        flat = _flatten(item.data, item.name)
        if not all(isinstance(element, str) for element in flat):
            raise _invalid(
                f"input {item.name!r} is BYTES: its JSON data must be strings (for binary "
                "content such as image files, send base64 text or use binary tensor data)",
                item.name,
            )
        elements: list[bytes | str] = list(flat)
    else:
        elements = []
        view, offset = memoryview(item.raw), 0
        while offset < len(view):
            if offset + 4 > len(view):
                raise _invalid(
                    f"input {item.name!r} BYTES data ends inside an element's 4-byte length "
                    f"prefix (element {len(elements)}); each element is a little-endian uint32 "
                    "length followed by that many bytes",
                    item.name,
                )
            length = int(np.frombuffer(view[offset : offset + 4], dtype=_BYTES_LENGTH)[0])
            if offset + 4 + length > len(view):
                raise _invalid(
                    f"input {item.name!r} BYTES element {len(elements)} declares {length} bytes "
                    f"but only {len(view) - offset - 4} remain in its binary_data_size",
                    item.name,
                )
            elements.append(bytes(view[offset + 4 : offset + 4 + length]))
            offset += 4 + length
    if len(elements) != count:
        raise _invalid(
            f"input {item.name!r} has {len(elements)} elements; shape "
            f"{describe_shape(item.shape)} needs {count}",
            item.name,
        )
    return elements


def _require_list(data: Any, name: str) -> list[Any]:
    if not isinstance(data, list):
        raise _invalid(
            f"input {name!r} data must be a JSON list (row-major, flat or nested), got "
            f"{type(data).__name__}",
            name,
        )
    return data


def _flatten(data: Any, name: str) -> list[Any]:
    """Nested lists' leaves in row-major order."""
    _require_list(data, name)
    flat: list[Any] = []
    pending = [iter(data)]
    while pending:
        for element in pending[-1]:
            if isinstance(element, list):
                pending.append(iter(element))
                break
            flat.append(element)
        else:
            pending.pop()
    return flat


def _numeric_array(item: RequestInput, dtype: np.dtype, count: int) -> np.ndarray:
    if item.raw is not None:
        if len(item.raw) != count * dtype.itemsize:
            raise _invalid(
                f"input {item.name!r} has binary_data_size {len(item.raw)}; shape "
                f"{describe_shape(item.shape)} of {item.datatype} needs "
                f"{count * dtype.itemsize} bytes ({count} x {dtype.itemsize})",
                item.name,
            )
        return np.frombuffer(item.raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True)
    try:
        values = np.asarray(_require_list(item.data, item.name))
    except (ValueError, TypeError) as error:
        raise _invalid(
            f"input {item.name!r} data is not a regular list of numbers ({error})", item.name
        ) from error
    allowed_kinds = "b" if item.datatype == "BOOL" else "iuf"
    if values.size and values.dtype.kind not in allowed_kinds:
        raise _invalid(
            f"input {item.name!r} data holds {values.dtype.name} values; {item.datatype} needs "
            f"{'true/false' if item.datatype == 'BOOL' else 'JSON numbers'}",
            item.name,
        )
    if values.size != count:
        raise _invalid(
            f"input {item.name!r} has {values.size} values in 'data'; shape "
            f"{describe_shape(item.shape)} needs {count}",
            item.name,
        )
    with np.errstate(over="ignore"):  # values beyond the dtype's range become inf, refused later
        return values.astype(dtype.newbyteorder("="))


def tensor_from_input(item: RequestInput, spec: TensorSpec) -> np.ndarray:
    """Checks an input against what the model takes and returns its values.

    Args:
        item: The input as the request framed it.
        spec: The model's tensor of the same name.

    Returns:
        An array of ``item.shape`` in native byte order: the datatype's NumPy dtype for numbers,
        ``object`` holding ``bytes`` (binary) or ``str`` (JSON) for ``BYTES``.

    Raises:
        InvalidInputError: Wrong datatype or shape, data not matching the shape, or (floats) NaN
            or infinite values; the message names the input.
    """
    if item.datatype != spec.datatype:
        raise _invalid(
            f"input {item.name!r} has datatype {item.datatype}; expected {spec.datatype} with "
            f"shape {describe_shape(spec.shape)}. Convert the array before sending"
            + (" (numpy: .astype(np.float32))" if spec.datatype == "FP32" else ""),
            item.name,
        )
    _check_shape(item, spec)
    count = math.prod(item.shape)
    if spec.datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = _bytes_elements(item, count)
        return array.reshape(item.shape)
    if spec.datatype not in NUMERIC_DATATYPES:
        raise _invalid(f"input {item.name!r}: datatype {spec.datatype} is not readable here")
    array = _numeric_array(item, NUMERIC_DATATYPES[spec.datatype], count).reshape(item.shape)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        first = tuple(int(index) for index in np.argwhere(~np.isfinite(array))[0])
        raise _invalid(
            f"input {item.name!r} holds NaN or infinite values (first at index {list(first)}); "
            "send finite numbers",
            item.name,
        )
    return array


def requested_outputs(
    request: InferRequest, specs: Sequence[TensorSpec], model_name: str
) -> dict[str, bool]:
    """Output name to whether it goes binary, in the order the response lists them.

    Raises:
        InvalidInputError: The request asks for an output the model does not have.
    """
    known = [spec.name for spec in specs]
    if request.outputs is None:
        return dict.fromkeys(known, request.binary_output)
    for name in request.outputs:
        if name not in known:
            raise _invalid(
                f"output {name!r} is not an output of model {model_name!r}; it has {known}", name
            )
    return {
        name: request.binary_output if binary is None else binary
        for name, binary in request.outputs.items()
    }


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[OutputTensor],
) -> tuple[bytes, int | None]:
    """Frames an inference response.

    Args:
        model_name: Name echoed as ``model_name``.
        model_version: Version echoed as ``model_version``.
        request_id: The request's ``id``, echoed when given.
        outputs: Numeric outputs, each sent as JSON ``data`` or as binary.

    Returns:
        The body and, when any output is binary, the JSON header's length in bytes (the
        ``Inference-Header-Content-Length`` value); ``None`` for a JSON-only body.
    """
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        header["id"] = request_id
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for output in outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.array.shape),
        }
        if output.binary:
            wire = NUMERIC_DATATYPES[output.datatype]
            chunk = np.ascontiguousarray(output.array, dtype=wire).tobytes()
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = output.array.ravel().tolist()
        entries.append(entry)
    header["outputs"] = entries
    encoded = json.dumps(header, separators=(",", ":")).encode()
    if not chunks:
        return encoded, None
    return b"".join([encoded, *chunks]), len(encoded)
