"""I/O binding (issue 18, item 6): ONNX Runtime writes a graph's outputs into torch tensors on a
chosen device. A GPU run binds them on CUDA; the same code binds them on the CPU here, with a tiny
stand-in of the SAM 2 encoder (same input and output names, small fixed shapes), so what is tested
is the binding code path itself."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from unittest import mock

import onnxruntime as ort
import pytest
import torch
from onnx_stand_in import LEVELS, SIDE, stand_in_encoder, stand_in_export

from imgembed.export import onnx_backend, onnx_binding
from imgembed.export.onnx_backend import OnnxRuntimeSettings, OnnxSam2Backend
from imgembed.export.onnx_binding import ort_device, output_shape, run_bound, wait_for_torch
from imgembed.export.onnx_providers import CPU_PROVIDER, CUDA_PROVIDER, ActiveProviders


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stand_in_encoder(tmp_path_factory.mktemp("binding") / "encoder.onnx")


@pytest.fixture(scope="module")
def session(encoder_path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(encoder_path), providers=[CPU_PROVIDER])


def test_bound_outputs_equal_session_run(session: ort.InferenceSession) -> None:
    pixels = torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    bound = run_bound(session, {"image": pixels}, torch.device("cpu"))
    expected = session.run(None, {"image": pixels.numpy()})
    assert list(bound) == list(LEVELS)
    for (name, tensor), reference in zip(bound.items(), expected, strict=True):
        assert tensor.dtype == torch.float32, name
        assert tensor.device.type == "cpu", name
        assert torch.equal(tensor, torch.from_numpy(reference)), name


def test_inputs_are_converted_and_made_contiguous(session: ort.InferenceSession) -> None:
    generator = torch.Generator().manual_seed(1)
    wide = torch.randn(1, SIDE, SIDE, 3, dtype=torch.float64, generator=generator)
    pixels = wide.permute(0, 3, 1, 2)  # [1,H,W,3] -> [1,3,H,W], not contiguous, float64
    bound = run_bound(session, {"image": pixels}, torch.device("cpu"))
    expected = session.run(None, {"image": pixels.float().contiguous().numpy()})
    assert torch.equal(bound["image_embed"], torch.from_numpy(expected[0]))


def test_outputs_are_torch_owned_memory(session: ort.InferenceSession) -> None:
    """The outputs outlive the binding and the session's run: torch allocated them."""
    bound = run_bound(session, {"image": torch.ones(1, 3, SIDE, SIDE)}, torch.device("cpu"))
    first = bound["image_embed"].clone()
    run_bound(session, {"image": torch.zeros(1, 3, SIDE, SIDE)}, torch.device("cpu"))
    assert torch.equal(bound["image_embed"], first)
    assert bound["image_embed"].untyped_storage().nbytes() == 3 * 64 * 64 * 4


def test_output_shape_needs_fixed_axes_but_the_batch() -> None:
    assert output_shape(["batch", 256, 64, 64], 3, "image_embed") == [3, 256, 64, 64]
    with pytest.raises(ValueError, match="image_embed has a dynamic axis 2"):
        output_shape(["batch", 256, "h", 64], 3, "image_embed")


def test_devices_as_onnx_runtime_names_them() -> None:
    assert ort_device(torch.device("cpu")) == ("cpu", 0)
    assert ort_device(torch.device("cuda", 2)) == ("cuda", 2)
    with mock.patch.object(torch.cuda, "current_device", return_value=1):
        assert ort_device(torch.device("cuda")) == ("cuda", 1)
    with pytest.raises(ValueError, match="cpu or cuda device, got meta"):
        ort_device(torch.device("meta"))


def test_torch_streams_are_waited_for_on_cuda_only() -> None:
    stream = mock.Mock()
    with mock.patch.object(torch.cuda, "current_stream", return_value=stream) as current:
        wait_for_torch([torch.device("cpu"), torch.device("cuda", 1), torch.device("cuda", 1)])
    current.assert_called_once_with(torch.device("cuda", 1))
    stream.synchronize.assert_called_once_with()


def test_the_run_waits_for_torch_after_binding(session: ort.InferenceSession) -> None:
    """The devices of the outputs and the inputs are waited for, after the outputs are allocated
    (a reused block may still be in use by a queued torch kernel) and before the run."""
    order: list[str] = []
    real_run = session.run_with_iobinding

    def run(binding: Any) -> None:
        order.append("run")
        real_run(binding)

    def wait(devices: list[torch.device]) -> None:
        order.append(f"wait {sorted({str(d) for d in devices})}")

    with (
        mock.patch.object(onnx_binding, "wait_for_torch", side_effect=wait),
        mock.patch.object(session, "run_with_iobinding", side_effect=run),
    ):
        run_bound(session, {"image": torch.zeros(1, 3, SIDE, SIDE)}, torch.device("cpu"))
    assert order == ["wait ['cpu']", "run"]


def test_the_cpu_provider_keeps_session_run(encoder_path: Path) -> None:
    backend = OnnxSam2Backend(stand_in_export(encoder_path), OnnxRuntimeSettings(provider="cpu"))
    assert backend.output_device is None
    assert backend.describe()["io_binding"] is False
    with mock.patch.object(onnx_backend, "run_bound") as bound:
        features = backend.encode(torch.zeros(1, 3, SIDE, SIDE))
    bound.assert_not_called()
    assert features.image_embed.shape == (1, 3, 64, 64)


def test_encode_through_bound_outputs_equals_session_run(encoder_path: Path) -> None:
    backend = OnnxSam2Backend(stand_in_export(encoder_path), OnnxRuntimeSettings(provider="cpu"))
    pixels = torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(2))
    by_run = backend.encode(pixels)
    backend.output_device = torch.device("cpu")  # what a GPU provider sets to cuda:N
    by_binding = backend.encode(pixels)
    for name in LEVELS:
        assert torch.equal(getattr(by_binding, name), getattr(by_run, name)), name


def test_a_gpu_session_binds_the_features_on_the_decoders_device(
    encoder_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CUDA active, features are bound on the device the backend was given (the PyTorch
    decoder's), and /v1/models says which provider runs and that outputs stay on the device."""
    session = ort.InferenceSession(str(encoder_path), providers=[CPU_PROVIDER])
    active = ActiveProviders("cuda", CUDA_PROVIDER, (CUDA_PROVIDER, CPU_PROVIDER))
    monkeypatch.setattr(onnx_backend, "open_session", lambda *args, **kwargs: (session, active))
    backend = OnnxSam2Backend(
        stand_in_export(encoder_path),
        OnnxRuntimeSettings(provider="cuda", device_id=1),
        output_device=torch.device("cuda", 1),
    )
    assert backend.output_device == torch.device("cuda", 1)
    assert backend.device == torch.device("cuda", 1)
    description = backend.describe()
    assert description["provider"] == CUDA_PROVIDER
    assert description["requested_provider"] == "cuda"
    assert description["io_binding"] is True
    assert description["fallback"] is None
    seen: list[torch.device] = []

    def bound(session: Any, inputs: dict[str, torch.Tensor], device: torch.device) -> Any:
        seen.append(device)
        return run_bound(session, inputs, torch.device("cpu"))

    monkeypatch.setattr(onnx_backend, "run_bound", bound)
    features = backend.encode(torch.zeros(1, 3, SIDE, SIDE))
    assert seen == [torch.device("cuda", 1)]
    assert features.high_res_feats_0.shape == (1, 3, 256, 256)
    default = OnnxSam2Backend(stand_in_export(encoder_path), OnnxRuntimeSettings(device_id=1))
    assert default.output_device == torch.device("cuda", 1)  # the provider's own device


def test_both_runtime_packages_are_an_error_in_the_log(
    encoder_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    both = ["onnxruntime", "onnxruntime-gpu"]
    monkeypatch.setattr(onnx_backend, "installed_runtime_packages", lambda: list(both))
    with caplog.at_level(logging.ERROR, logger=onnx_backend.__name__):
        backend = OnnxSam2Backend(stand_in_export(encoder_path), OnnxRuntimeSettings("cpu"))
    assert backend.describe()["packages"] == both
    errors = [r.getMessage() for r in caplog.records if r.name == onnx_backend.__name__]
    assert len(errors) == 1
    assert "onnxruntime and onnxruntime-gpu are all installed" in errors[0]
    assert "imgembed[onnx-gpu]" in errors[0]
