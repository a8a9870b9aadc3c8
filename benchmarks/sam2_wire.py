"""Wire encodings of SAM 2 features: bytes, encode time and decode time for each codec."""

from __future__ import annotations

import base64
import io
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from imgembed.codecs import decode_binary, decode_npz, encode_binary, encode_npz

Arrays = Mapping[str, np.ndarray]
LINK_MBIT_S = 100
"""Link speed for the transfer-time column: a typical office or cloud-egress link."""


def _npz_base64(compress: bool) -> tuple[Callable[[Arrays, str], Any], Callable[[Any], Any]]:
    def encode(arrays: Arrays, dtype: str) -> bytes:
        return base64.b64encode(encode_npz(arrays, compress=compress))

    def decode(payload: bytes) -> dict[str, np.ndarray]:
        return decode_npz(base64.b64decode(payload))

    return encode, decode


def _binary_encode(arrays: Arrays, dtype: str) -> tuple[bytes, int]:
    return encode_binary(arrays, {}, dtype_names=dict.fromkeys(arrays, dtype))


def _binary_decode(payload: tuple[bytes, int]) -> dict[str, np.ndarray]:
    return decode_binary(*payload)[1]


def _seed_encode(arrays: Arrays, dtype: str) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return base64.b64encode(buffer.getvalue())


def _seed_decode(payload: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(base64.b64decode(payload))) as archive:
        return {name: archive[name] for name in archive.files}


CODECS: dict[str, tuple[Callable[[Arrays, str], Any], Callable[[Any], Any]]] = {
    "imgembed npz_base64 (deflate, RLE)": _npz_base64(compress=True),
    "imgembed npz_base64_uncompressed": _npz_base64(compress=False),
    "imgembed binary": (_binary_encode, _binary_decode),
    "seed savez_compressed (deflate 6) + base64": (_seed_encode, _seed_decode),
}
"""Codec name to (encode, decode); encode takes the arrays and the dtype name they represent."""


def _size(payload: bytes | tuple[bytes, int]) -> int:
    return len(payload[0]) if isinstance(payload, tuple) else len(payload)


def _median_seconds(function: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls (after one untimed call), and the last result."""
    result = function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def measure_codecs(arrays: Arrays, dtype: str, repeats: int) -> list[dict[str, Any]]:
    """Bytes and times of every codec for one feature set, checking each round-trips exactly.

    Args:
        arrays: The ``.npz`` member name to ``[C,H,W]`` array (``bfloat16`` as ``uint16`` bits).
        dtype: The dtype the arrays represent.
        repeats: Timed calls per measurement.

    Returns:
        One row per codec: ``codec``, ``dtype``, ``bytes``, ``raw_bytes``, ``encode_ms``,
        ``decode_ms``, ``transfer_ms`` (at :data:`LINK_MBIT_S`).
    """
    raw_bytes = sum(array.nbytes for array in arrays.values())
    rows = []
    for name, (encode, decode) in CODECS.items():
        encode_s, payload = _median_seconds(lambda enc=encode: enc(arrays, dtype), repeats)
        decode_s, decoded = _median_seconds(lambda dec=decode, p=payload: dec(p), repeats)
        for key, array in arrays.items():
            restored = decoded[key]
            if dtype == "bfloat16" and restored.dtype == np.float32:
                restored = (restored.view(np.uint32) >> 16).astype(np.uint16)
            if not np.array_equal(restored, array):
                raise AssertionError(f"{name} did not round-trip {key} ({dtype})")
        size = _size(payload)
        rows.append(
            {
                "codec": name,
                "dtype": dtype,
                "bytes": size,
                "raw_bytes": raw_bytes,
                "encode_ms": encode_s * 1000,
                "decode_ms": decode_s * 1000,
                "transfer_ms": size * 8 / (LINK_MBIT_S * 1e6) * 1000,
            }
        )
    return rows
