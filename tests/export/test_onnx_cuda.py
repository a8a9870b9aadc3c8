"""ONNX Runtime on a real GPU (issue 18, item 6): what only a GPU can confirm. Skipped unless torch
sees a CUDA device and the installed onnxruntime offers the CUDA provider (``onnxruntime-gpu``,
the ``onnx-gpu`` extra, installed in place of ``onnxruntime``). Uses the stand-in encoder graph
(tests/support/onnx_stand_in.py), so it runs in seconds.

Run on a GPU machine: ``pip uninstall -y onnxruntime && pip install 'onnxruntime-gpu>=1.20'``, then
``pytest -q tests/export/test_onnx_cuda.py``."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from onnx_stand_in import LEVELS, SIDE, stand_in_encoder, stand_in_export

from imgembed.errors import ModelLoadError
from imgembed.export.onnx_backend import OnnxRuntimeSettings, OnnxSam2Backend
from imgembed.export.onnx_binding import run_bound
from imgembed.export.onnx_providers import CPU_PROVIDER, CUDA_PROVIDER

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or CUDA_PROVIDER not in ort.get_available_providers(),
    reason="needs a CUDA GPU and onnxruntime-gpu",
)
CUDA = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stand_in_encoder(tmp_path_factory.mktemp("cuda") / "encoder.onnx")


def test_cuda_is_active_and_features_stay_on_the_gpu(encoder_path: Path) -> None:
    settings = OnnxRuntimeSettings(provider="cuda", gpu_mem_limit=2 * 1024**3)
    backend = OnnxSam2Backend(stand_in_export(encoder_path), settings, output_device=CUDA)
    assert backend.providers[0] == CUDA_PROVIDER
    assert backend.describe()["io_binding"] is True
    pixels = torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    features = backend.encode(pixels)
    reference = ort.InferenceSession(str(encoder_path), providers=[CPU_PROVIDER])
    expected = reference.run(None, {"image": pixels.numpy()})
    for name, values in zip(LEVELS, expected, strict=True):
        tensor = getattr(features, name)
        assert tensor.device == CUDA, name
        torch.testing.assert_close(tensor.cpu(), torch.from_numpy(values), msg=name)


def test_inputs_written_by_torch_on_another_stream_are_complete(encoder_path: Path) -> None:
    """Pixels produced by a queued torch kernel on a side stream: run_bound waits for torch's
    current stream, so the stream that wrote them must be current when it is called."""
    session = ort.InferenceSession(
        str(encoder_path), providers=[(CUDA_PROVIDER, {"device_id": 0}), CPU_PROVIDER]
    )
    side = torch.cuda.Stream(CUDA)
    with torch.cuda.stream(side):
        base = torch.rand(4, 3, SIDE, SIDE, device=CUDA)
        for _ in range(20):  # a queue of kernels still running when the run starts
            base = base * 1.0001 + 0.0001
        bound = run_bound(session, {"image": base}, CUDA)
    expected = session.run(None, {"image": base.cpu().numpy()})
    torch.testing.assert_close(bound["image_embed"].cpu(), torch.from_numpy(expected[0]))


def test_a_requested_cuda_that_cannot_start_is_refused(encoder_path: Path) -> None:
    """A device index that does not exist: ONNX Runtime cannot start CUDA there."""
    missing = torch.cuda.device_count() + 3
    with pytest.raises(ModelLoadError, match="CUDA"):
        OnnxSam2Backend(
            stand_in_export(encoder_path), OnnxRuntimeSettings(provider="cuda", device_id=missing)
        )
