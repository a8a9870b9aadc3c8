"""Wire formats for feature tensors: NumPy ``.npz`` (optionally base64) and a binary framing.

``npz``: a zip of ``.npy`` files, as :func:`numpy.savez` writes, so ``numpy.load`` reads it. The
compressed variant uses deflate level 1: float features barely compress, and level 1 keeps nearly
all of what level 6 saves for a fraction of the time (see ``benchmarks/RESULTS.md``).

``binary``: a UTF-8 JSON header followed directly by the raw little-endian, C-order tensor bytes.
The header's length in bytes travels in the ``Inference-Header-Content-Length`` HTTP header, the
same rule as the Open Inference Protocol's binary tensor extension, and the header lists each
tensor's ``name``, ``shape``, ``dtype`` and ``byte_offset``/``byte_length`` (offsets counted from
the end of the JSON header).

``bfloat16`` has no NumPy dtype: it travels as its raw 16-bit patterns (``uint16`` in ``.npz``)
with the dtype named ``bfloat16`` in the metadata; :func:`bfloat16_bits_to_float32` restores it.

This module is a leaf: NumPy only, no torch.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

BINARY_HEADER_LENGTH = "Inference-Header-Content-Length"
"""HTTP header carrying the JSON header's length in bytes, for the ``binary`` encoding."""

BINARY_MEDIA_TYPE = "application/vnd.imgembed.tensors"

_WIRE_DTYPES = {"float32": "<f4", "float16": "<f2", "bfloat16": "<u2", "uint8": "|u1"}


def encode_npz(arrays: Mapping[str, np.ndarray], *, compress: bool) -> bytes:
    """Writes arrays into an ``.npz`` archive that :func:`numpy.load` reads.

    Args:
        arrays: Archive member name (without ``.npy``) to array.
        compress: Deflate (level 1) each member; otherwise store.

    Returns:
        The archive bytes.
    """
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(
        buffer, "w", compression=method, compresslevel=1 if compress else None
    ) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_npz(data: bytes) -> dict[str, np.ndarray]:
    """Reads an ``.npz`` archive into a dict of arrays (no pickles allowed)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def encode_binary(
    arrays: Mapping[str, np.ndarray],
    header: Mapping[str, Any],
    *,
    dtype_names: Mapping[str, str] | None = None,
) -> tuple[bytes, int]:
    """Frames a JSON header and raw tensors into one body.

    Args:
        arrays: Tensor name to array; each is written little-endian, C-order.
        header: JSON-serialisable metadata; a ``tensors`` list describing ``arrays`` is added.
        dtype_names: Dtype to declare per tensor where it differs from the array's own, such as
            ``bfloat16`` for bit patterns held in ``uint16``.

    Returns:
        The body and the JSON header's length in bytes.
    """
    tensors = []
    chunks = []
    offset = 0
    for name, array in arrays.items():
        wire = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
        chunk = wire.tobytes()
        tensors.append(
            {
                "name": name,
                "shape": list(array.shape),
                "dtype": (dtype_names or {}).get(name, array.dtype.name),
                "byte_offset": offset,
                "byte_length": len(chunk),
            }
        )
        chunks.append(chunk)
        offset += len(chunk)
    header_bytes = json.dumps({**header, "tensors": tensors}, separators=(",", ":")).encode()
    return b"".join([header_bytes, *chunks]), len(header_bytes)


def decode_binary(body: bytes, header_length: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Splits a ``binary`` body into its JSON header and arrays.

    Tensors whose header names ``dtype`` ``bfloat16`` come back as float32 values. Arrays are
    writable (the body is copied once).

    Args:
        body: The whole response body.
        header_length: Value of the ``Inference-Header-Content-Length`` header.

    Returns:
        The JSON header and tensor name to array.
    """
    header = json.loads(body[:header_length])
    payload = memoryview(bytearray(body))[header_length:]  # one copy: arrays come back writable
    arrays: dict[str, np.ndarray] = {}
    for tensor in header["tensors"]:
        start = tensor["byte_offset"]
        raw = payload[start : start + tensor["byte_length"]]
        array = np.frombuffer(raw, dtype=wire_dtype(tensor["dtype"])).reshape(tensor["shape"])
        arrays[tensor["name"]] = restore_dtype(array, tensor["dtype"])
    return header, arrays


def wire_dtype(dtype_name: str) -> np.dtype:
    """The NumPy dtype a named feature dtype travels as (``bfloat16`` travels as ``uint16``)."""
    try:
        return np.dtype(_WIRE_DTYPES[dtype_name])
    except KeyError as error:
        raise ValueError(
            f"unknown tensor dtype {dtype_name!r}; expected one of {sorted(_WIRE_DTYPES)}"
        ) from error


def restore_dtype(array: np.ndarray, dtype_name: str) -> np.ndarray:
    """Turns a wire array back into a computable one: ``bfloat16`` bits become float32."""
    if dtype_name == "bfloat16":
        return bfloat16_bits_to_float32(array)
    return array


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widens raw bfloat16 bit patterns (``uint16``) to float32 values, exactly (same shape)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)
