"""Wire formats: npz (numpy reads it back) and the binary framing, bfloat16 included."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch

from imgembed.codecs import (
    bfloat16_bits_to_float32,
    decode_binary,
    decode_npz,
    encode_binary,
    encode_npz,
)


@pytest.fixture
def arrays() -> dict[str, np.ndarray]:
    generator = np.random.default_rng(0)
    return {
        "embedding": generator.standard_normal((256, 8, 8)).astype(np.float16),
        "high_res_feats_0": generator.standard_normal((32, 16, 16)).astype(np.float16),
    }


@pytest.mark.parametrize("compress", [True, False])
def test_npz_round_trips_through_numpy_load(arrays: dict[str, np.ndarray], compress: bool) -> None:
    restored = decode_npz(encode_npz(arrays, compress=compress))
    assert restored.keys() == arrays.keys()
    for name, array in arrays.items():
        np.testing.assert_array_equal(restored[name], array)
        assert restored[name].dtype == array.dtype


def test_compression_shrinks_compressible_data() -> None:
    zeros = {"embedding": np.zeros((256, 64, 64), dtype=np.float32)}
    assert len(encode_npz(zeros, compress=True)) < len(encode_npz(zeros, compress=False)) / 50


def test_binary_framing_round_trips_with_offsets(arrays: dict[str, np.ndarray]) -> None:
    body, header_length = encode_binary(arrays, {"model": "m"})
    header, restored = decode_binary(body, header_length)
    assert header["model"] == "m"
    assert [tensor["name"] for tensor in header["tensors"]] == list(arrays)
    assert header["tensors"][1]["byte_offset"] == arrays["embedding"].nbytes
    assert len(body) == header_length + sum(array.nbytes for array in arrays.values())
    for name, array in arrays.items():
        np.testing.assert_array_equal(restored[name], array)


def test_bfloat16_travels_as_bits_and_comes_back_exactly() -> None:
    values = torch.tensor([[1.0, -2.5, 3.140625, 1e-3]], dtype=torch.bfloat16)
    bits = values.view(torch.int16).numpy().view(np.uint16)
    body, header_length = encode_binary(
        {"image_embed": bits}, {}, dtype_names={"image_embed": "bfloat16"}
    )
    header, restored = decode_binary(body, header_length)
    assert header["tensors"][0]["dtype"] == "bfloat16"
    np.testing.assert_array_equal(restored["image_embed"], values.float().numpy())
    np.testing.assert_array_equal(bfloat16_bits_to_float32(bits), values.float().numpy())


def test_decoded_binary_arrays_are_writable(arrays: dict[str, np.ndarray]) -> None:
    body, header_length = encode_binary(arrays, {})
    _, restored = decode_binary(body, header_length)
    assert all(array.flags.writeable for array in restored.values())


@pytest.mark.parametrize(
    ("compress", "method"), [(True, zipfile.ZIP_DEFLATED), (False, zipfile.ZIP_STORED)]
)
def test_npz_is_a_valid_zip_with_correct_checksums(
    arrays: dict[str, np.ndarray], compress: bool, method: int
) -> None:
    archive = zipfile.ZipFile(io.BytesIO(encode_npz(arrays, compress=compress)))
    assert archive.testzip() is None
    assert [info.filename for info in archive.infolist()] == [f"{name}.npy" for name in arrays]
    assert {info.compress_type for info in archive.infolist()} == {method}


def test_npz_bytes_are_reproducible(arrays: dict[str, np.ndarray]) -> None:
    assert encode_npz(arrays, compress=True) == encode_npz(arrays, compress=True)
