"""Wire formats for feature tensors: NumPy ``.npz`` (optionally base64) and a binary framing.

``npz``: a zip of ``.npy`` files, as :func:`numpy.savez` writes, so ``numpy.load`` reads it. The
compressed variant deflates with the ``Z_RLE`` strategy: float features barely repeat, so it keeps
what level-1 or level-6 deflate saves in a fraction of the time (see ``benchmarks/RESULTS.md``).

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
import struct
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

BINARY_HEADER_LENGTH = "Inference-Header-Content-Length"
"""HTTP header carrying the JSON header's length in bytes, for the ``binary`` encoding."""

BINARY_MEDIA_TYPE = "application/vnd.imgembed.tensors"

_LOCAL_SIGNATURE, _CENTRAL_SIGNATURE, _END_SIGNATURE = 0x04034B50, 0x02014B50, 0x06054B50
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_CENTRAL_HEADER = struct.Struct("<IHHHHHHIIIHHHHHII")
_END_RECORD = struct.Struct("<IHHHHIIH")
_DOS_DATE = 0x21
"""1980-01-01: archives are byte-for-byte reproducible."""
_ZIP32_LIMIT = 0xFFFFFFFF

_WIRE_DTYPES = {"float32": "<f4", "float16": "<f2", "bfloat16": "<u2", "uint8": "|u1"}


def encode_npz(arrays: Mapping[str, np.ndarray], *, compress: bool) -> bytes:
    """Writes arrays into an ``.npz`` archive that :func:`numpy.load` reads.

    Args:
        arrays: Archive member name (without ``.npy``) to array; each under 4 GiB.
        compress: Deflate each member (run-length matches and Huffman coding); otherwise store.

    Returns:
        The archive bytes: a plain zip (no zip64), one ``.npy`` member per array.
    """
    members = []
    for name, array in arrays.items():
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
        members.append((f"{name}.npy", buffer.getvalue()))
    return _zip(members, compress=compress)


def _zip(members: list[tuple[str, bytes]], *, compress: bool) -> bytes:
    """A zip archive of ``members``, deflated with the ``Z_RLE`` strategy, or stored.

    Float features have little repetition for LZ77's string search to find: run-length matches
    plus Huffman coding save as much as level-1 deflate on SAM 2 features in a quarter of the time
    (float16), and still shrink runs of zeros. ``zipfile`` cannot choose a strategy, hence this.
    """
    output = io.BytesIO()
    central_directory = []
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    for name, data in members:
        if compress:
            compressor = zlib.compressobj(1, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
            payload = compressor.compress(data) + compressor.flush()
        else:
            payload = data
        if max(len(data), len(payload), output.tell()) >= _ZIP32_LIMIT:
            raise ValueError(f"{name} is too large for a zip without zip64 ({len(data)} bytes)")
        encoded_name = name.encode()
        sizes = (zlib.crc32(data), len(payload), len(data), len(encoded_name))
        offset = output.tell()
        output.write(_LOCAL_HEADER.pack(_LOCAL_SIGNATURE, 20, 0, method, 0, _DOS_DATE, *sizes, 0))
        output.write(encoded_name)
        output.write(payload)
        central_directory.append(
            _CENTRAL_HEADER.pack(
                _CENTRAL_SIGNATURE, 20, 20, 0, method, 0, _DOS_DATE, *sizes, 0, 0, 0, 0, 0, offset
            )
            + encoded_name
        )
    directory = b"".join(central_directory)
    directory_offset = output.tell()
    output.write(directory)
    count = len(members)
    output.write(
        _END_RECORD.pack(_END_SIGNATURE, 0, 0, count, count, len(directory), directory_offset, 0)
    )
    return output.getvalue()


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
