"""The ONNX Runtime backend's choices and refusals (its numbers are in test_onnx_parity.py)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from imgembed.errors import ImgembedError, InvalidInputError, ModelLoadError
from imgembed.export.onnx_backend import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    OnnxRuntimeSettings,
    OnnxSam2Backend,
    choose_providers,
)
from imgembed.export.onnx_export import METADATA_FILE, ExportResult
from imgembed.models.sam2 import Sam2Features

CPU_ONLY = CUDA_PROVIDER not in ort.get_available_providers()


@pytest.fixture(scope="module")
def backend(onnx_export: ExportResult) -> OnnxSam2Backend:
    return OnnxSam2Backend.from_dir(
        onnx_export.out_dir, OnnxRuntimeSettings(provider="auto", intra_op_threads=1)
    )


def test_describes_itself(backend: OnnxSam2Backend, onnx_export: ExportResult) -> None:
    assert backend.model_id == "sam2.1-hiera-tiny"
    assert backend.untrained is False
    description = backend.describe()
    assert description["backend"] == "onnxruntime"
    assert description["precision"] == "fp32"
    assert description["folder"] == str(onnx_export.out_dir)
    assert description["single_mask_decoder"] is True
    assert description["intra_op_threads"] == 1
    expected = CPU_PROVIDER if CPU_ONLY else CUDA_PROVIDER
    assert description["providers"][0] == expected
    assert description["provider"] == expected
    assert description["requested_provider"] == "auto"
    assert description["io_binding"] is (not CPU_ONLY)
    assert backend.device.type == ("cpu" if CPU_ONLY else "cuda")


def test_bound_features_equal_the_host_path(
    onnx_export: ExportResult, image_batch: torch.Tensor
) -> None:
    """The real encoder graph through I/O binding (outputs written into torch tensors, on the CPU
    here, on cuda:N on a GPU) gives the features session.run gives."""
    backend = OnnxSam2Backend(onnx_export, OnnxRuntimeSettings(provider="cpu", intra_op_threads=1))
    by_run = backend.encode(image_batch[:2])
    backend.output_device = torch.device("cpu")
    by_binding = backend.encode(image_batch[:2])
    for name in ("image_embed", "high_res_feats_0", "high_res_feats_1"):
        bound, expected = getattr(by_binding, name), getattr(by_run, name)
        assert bound.shape == expected.shape, name
        assert bound.dtype == torch.float32, name
        torch.testing.assert_close(bound, expected, rtol=0, atol=1e-6, msg=name)


def test_cpu_is_chosen_when_asked() -> None:
    assert choose_providers(OnnxRuntimeSettings(provider="cpu")) == [CPU_PROVIDER]


@pytest.mark.skipif(not CPU_ONLY, reason="this onnxruntime has CUDA")
def test_cuda_without_cuda_is_refused_with_the_fix() -> None:
    with pytest.raises(ModelLoadError, match="Install onnxruntime-gpu"):
        choose_providers(OnnxRuntimeSettings(provider="cuda"))
    assert choose_providers(OnnxRuntimeSettings(provider="auto")) == [CPU_PROVIDER]


def test_encode_refuses_wrong_shapes(backend: OnnxSam2Backend) -> None:
    with pytest.raises(
        ValueError, match=r"pixel_values must be \[B,3,1024,1024\], got \[1, 3, 512, 512\]"
    ):
        backend.encode(torch.zeros(1, 3, 512, 512))


def test_decode_refuses_what_decode_masks_refuses(
    backend: OnnxSam2Backend, torch_features: Sam2Features
) -> None:
    points = torch.zeros(2, 3, 2)
    no_mask = (torch.zeros(1, 1, 256, 256), torch.zeros(1))
    with pytest.raises(ValueError, match=r"point_labels must be \[2,3\]"):
        backend.decode(torch_features, points, torch.ones(2, 2), *no_mask)
    with pytest.raises(ValueError, match="mask_input has batch 3"):
        backend.decode(
            torch_features, points, torch.ones(2, 3), torch.zeros(3, 1, 256, 256), torch.zeros(1)
        )


def test_single_mask_needs_its_graph(
    onnx_export: ExportResult, torch_features: Sam2Features
) -> None:
    files = {
        role: path for role, path in onnx_export.files.items() if role != "decoder_single_mask"
    }
    backend = OnnxSam2Backend(
        dataclasses.replace(onnx_export, files=files), OnnxRuntimeSettings(provider="cpu")
    )
    arguments = (torch_features, torch.zeros(1, 1, 2), torch.ones(1, 1))
    no_mask = (torch.zeros(1, 1, 256, 256), torch.zeros(1))
    assert backend.decode(*arguments, *no_mask).masks.shape == (1, 3, 256, 256)
    with pytest.raises(ImgembedError, match=r"has no decoder_single_mask\.onnx"):
        backend.decode(*arguments, *no_mask, multimask_output=False)


def test_unreadable_exports_are_refused(onnx_export: ExportResult, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="is not an imgembed ONNX export"):
        OnnxSam2Backend.from_dir(tmp_path)
    shutil.copy(onnx_export.metadata_path, tmp_path / METADATA_FILE)
    with pytest.raises(InvalidInputError, match="lists graphs that are missing"):
        OnnxSam2Backend.from_dir(tmp_path)
    for path in onnx_export.files.values():
        (tmp_path / path.name).write_bytes(b"not an onnx graph")
    with pytest.raises(ModelLoadError, match=r"ONNX Runtime cannot load .*encoder\.onnx"):
        OnnxSam2Backend.from_dir(tmp_path)
