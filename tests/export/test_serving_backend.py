"""Serving with ONNX Runtime as the SAM 2 encoder backend: same features, same masks as PyTorch."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import relative_error
from PIL import Image

from imgembed.engine import Engine, Sam2Service
from imgembed.errors import ModelLoadError
from imgembed.export.onnx_metadata import ExportResult
from imgembed.pipelines.sam2_segment import SegmentObject
from imgembed.settings import ModelSpec, ServerConfig
from imgembed.types import ImageBytes

TOLERANCE = 1e-4


def png() -> bytes:
    pixels = np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


async def embed_and_segment(spec: ModelSpec) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    async with Engine(ServerConfig(models=(spec,))) as engine:
        embedded = await engine.service(Sam2Service).embed(ImageBytes(png()))
        point = SegmentObject(np.array([[60.0, 40.0]]), np.array([1], np.int32))
        segmented = await engine.service(Sam2Service).segment(
            None, [point], image_id=embedded.image_id
        )
        return embedded.embedding.arrays, segmented.objects[0].masks, engine.models[0].describe()


def test_onnxruntime_backend_gives_the_pytorch_features_and_masks(
    tiny_checkpoint: Path, onnx_export: ExportResult
) -> None:
    common = {"weights": str(tiny_checkpoint), "device": "cpu", "warmup": False}
    torch_spec = ModelSpec("sam2.1-hiera-tiny", **common)
    onnx_spec = ModelSpec(
        "sam2.1-hiera-tiny", **common, backend="onnxruntime", onnx_dir=str(onnx_export.out_dir)
    )
    expected, expected_masks, _ = asyncio.run(embed_and_segment(torch_spec))
    arrays, masks, described = asyncio.run(embed_and_segment(onnx_spec))
    assert described["backend"] == "onnxruntime"
    assert described["onnx"] is not None
    # A model on the CPU runs ONNX Runtime there too: auto became cpu, nothing fell back.
    assert described["onnx"]["requested_provider"] == "cpu"
    assert described["onnx"]["provider"] == "CPUExecutionProvider"
    assert described["onnx"]["fallback"] is None
    assert described["onnx"]["io_binding"] is False
    for name, array in expected.items():
        error = relative_error(torch.from_numpy(arrays[name]), torch.from_numpy(array))
        assert error < TOLERANCE, (name, error)
    assert (masks == expected_masks).mean() > 0.999


def test_onnxruntime_backend_refuses_a_missing_or_foreign_export(
    tiny_checkpoint: Path, onnx_export: ExportResult, tmp_path: Path
) -> None:
    def start(**options: object) -> None:
        spec = ModelSpec("sam2.1-hiera-small", weights="dummy", device="cpu", warmup=False)
        spec = ModelSpec(**{**spec.__dict__, "backend": "onnxruntime", **options})
        asyncio.run(Engine(ServerConfig(models=(spec,))).start())

    with pytest.raises(ModelLoadError, match="needs an export"):
        start()
    with pytest.raises(ModelLoadError, match=r"holds an export of sam2\.1-hiera-tiny"):
        start(onnx_dir=str(onnx_export.out_dir))
    with pytest.raises(ModelLoadError, match=re.escape(str(tmp_path))):
        start(onnx_dir=str(tmp_path))
