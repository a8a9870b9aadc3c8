"""ONNX Runtime providers: what is asked for, with which options, and the check of what a built
session runs on (issue 18, item 6). Sessions are stand-ins whose ``get_providers()`` answers what a
real ``onnxruntime-gpu`` answers when CUDA does or does not start; no GPU is needed."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
from typing import Any

import pytest

from imgembed.errors import ModelLoadError
from imgembed.export import onnx_providers
from imgembed.export.onnx_providers import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    TENSORRT_PROVIDER,
    OnnxRuntimeSettings,
    check_providers,
    choose_providers,
    cuda_provider_options,
    installed_runtime_packages,
    open_session,
)
from imgembed.settings import OnnxRuntimeOptions

GPU_BUILD = [TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER]
"""What onnxruntime-gpu lists as available (whether or not the libraries it needs load)."""
CPU_BUILD = ["AzureExecutionProvider", CPU_PROVIDER]
"""What the CPU onnxruntime package lists."""


class FakeSession:
    """Records how it was built; runs on ``runs_on`` (what ONNX Runtime kept of the request)."""

    def __init__(self, runs_on: list[str]) -> None:
        self.runs_on = runs_on

    def get_providers(self) -> list[str]:
        return list(self.runs_on)


class Factory:
    """Stands in for ``ort.InferenceSession``: each build gets the next of ``outcomes`` (a list of
    providers the session ends up on, or an exception to raise)."""

    def __init__(self, *outcomes: list[str] | BaseException) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, graph: str, **kwargs: Any) -> FakeSession:
        self.calls.append({"graph": graph, **kwargs})
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return FakeSession(outcome)


@pytest.fixture
def gpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """This onnxruntime claims CUDA and TensorRT, as onnxruntime-gpu does."""
    monkeypatch.setattr(onnx_providers.ort, "get_available_providers", lambda: list(GPU_BUILD))


@pytest.fixture
def cpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_providers.ort, "get_available_providers", lambda: list(CPU_BUILD))


def _open(settings: OnnxRuntimeSettings, factory: Factory, *, gpu_present: bool = True) -> Any:
    return open_session(
        "encoder.onnx", None, settings, gpu_present=gpu_present, session_factory=factory
    )


def test_cuda_options_carry_the_arena_limit_and_the_search() -> None:
    settings = OnnxRuntimeSettings(
        device_id=3,
        gpu_mem_limit=6 * 1024**3,
        arena_extend_strategy="kNextPowerOfTwo",
        cudnn_conv_algo_search="HEURISTIC",
    )
    assert cuda_provider_options(settings) == {
        "device_id": 3,
        "gpu_mem_limit": 6 * 1024**3,
        "arena_extend_strategy": "kNextPowerOfTwo",
        "cudnn_conv_algo_search": "HEURISTIC",
    }
    unlimited = cuda_provider_options(dataclasses.replace(settings, gpu_mem_limit=0))
    assert "gpu_mem_limit" not in unlimited  # ONNX Runtime's default: no limit


def test_served_options_become_backend_settings() -> None:
    options = OnnxRuntimeOptions(
        provider="tensorrt",
        gpu_mem_limit=123,
        arena_extend_strategy="kNextPowerOfTwo",
        cudnn_conv_algo_search="DEFAULT",
    )
    settings = OnnxRuntimeSettings.from_options(options, device_id=2)
    assert (settings.provider, settings.device_id, settings.gpu_mem_limit) == ("tensorrt", 2, 123)
    assert settings.arena_extend_strategy == "kNextPowerOfTwo"
    assert settings.cudnn_conv_algo_search == "DEFAULT"
    # The two classes state the same defaults.
    assert OnnxRuntimeSettings.from_options(OnnxRuntimeOptions()) == OnnxRuntimeSettings()


@pytest.mark.usefixtures("gpu_build")
def test_providers_asked_for_each_choice() -> None:
    settings = OnnxRuntimeSettings(device_id=1, gpu_mem_limit=1024)
    cuda = (CUDA_PROVIDER, cuda_provider_options(settings))
    assert choose_providers(settings) == [cuda, CPU_PROVIDER]  # auto
    assert choose_providers(dataclasses.replace(settings, provider="cuda")) == [cuda, CPU_PROVIDER]
    assert choose_providers(dataclasses.replace(settings, provider="cpu")) == [CPU_PROVIDER]
    assert choose_providers(dataclasses.replace(settings, provider="tensorrt")) == [
        (TENSORRT_PROVIDER, {"device_id": 1}),
        cuda,
        CPU_PROVIDER,
    ]


@pytest.mark.usefixtures("cpu_build")
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_a_gpu_provider_missing_from_the_package_is_refused(provider: str) -> None:
    with pytest.raises(ModelLoadError, match=r"onnx-gpu.*cpu or auto provider"):
        choose_providers(OnnxRuntimeSettings(provider=provider))  # type: ignore[arg-type]
    assert choose_providers(OnnxRuntimeSettings(provider="auto")) == [CPU_PROVIDER]


@pytest.mark.usefixtures("gpu_build")
def test_cuda_that_did_not_start_is_refused() -> None:
    factory = Factory([CPU_PROVIDER])  # onnxruntime-gpu without its CUDA libraries
    with pytest.raises(ModelLoadError) as caught:
        _open(OnnxRuntimeSettings(provider="cuda"), factory)
    message = caught.value.message
    assert "asked for CUDAExecutionProvider" in message
    assert "runs on ['CPUExecutionProvider']" in message
    assert "cuDNN" in message
    assert "IMGEMBED_ONNX_PROVIDER" in message
    assert factory.calls[0]["enable_fallback"] == 0  # ONNX Runtime's own fallback is off
    assert factory.calls[0]["providers"][0][0] == CUDA_PROVIDER


@pytest.mark.usefixtures("gpu_build")
def test_tensorrt_that_did_not_start_is_refused_even_on_cuda() -> None:
    with pytest.raises(ModelLoadError, match="asked for TensorrtExecutionProvider"):
        _open(OnnxRuntimeSettings(provider="tensorrt"), Factory([CUDA_PROVIDER, CPU_PROVIDER]))


@pytest.mark.usefixtures("gpu_build")
def test_cuda_that_started_is_reported() -> None:
    session, active = _open(OnnxRuntimeSettings(provider="cuda"), Factory(GPU_BUILD[1:]))
    assert session.get_providers() == [CUDA_PROVIDER, CPU_PROVIDER]
    assert (active.requested, active.active, active.fallback) == ("cuda", CUDA_PROVIDER, None)
    assert active.on_gpu


@pytest.mark.usefixtures("gpu_build")
def test_auto_falls_back_loudly_when_cuda_does_not_start(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=onnx_providers.__name__):
        _, active = _open(OnnxRuntimeSettings(provider="auto"), Factory([CPU_PROVIDER]))
    assert (active.requested, active.active) == ("auto", CPU_PROVIDER)
    assert not active.on_gpu
    assert active.fallback is not None
    assert "CUDAExecutionProvider did not start" in active.fallback
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "on the CPU" in warnings[0].getMessage()
    assert "encoder.onnx" in warnings[0].getMessage()


@pytest.mark.usefixtures("gpu_build")
def test_auto_retries_on_the_cpu_when_cuda_raises(caplog: pytest.LogCaptureFixture) -> None:
    factory = Factory(RuntimeError("CUDA failure 100: no CUDA-capable device"), [CPU_PROVIDER])
    with caplog.at_level(logging.WARNING, logger=onnx_providers.__name__):
        _, active = _open(OnnxRuntimeSettings(provider="auto"), factory)
    assert [call["providers"] for call in factory.calls][1] == [CPU_PROVIDER]
    assert active.active == CPU_PROVIDER
    assert (
        active.fallback == "CUDAExecutionProvider failed: CUDA failure 100: no CUDA-capable device"
    )
    assert "no CUDA-capable device" in caplog.text
    with pytest.raises(ModelLoadError, match="CUDA failure 100"):
        _open(OnnxRuntimeSettings(provider="cuda"), Factory(RuntimeError("CUDA failure 100")))


@pytest.mark.usefixtures("cpu_build")
def test_auto_on_the_cpu_package_warns_only_beside_a_gpu(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=onnx_providers.__name__):
        _, quiet = _open(OnnxRuntimeSettings(), Factory([CPU_PROVIDER]), gpu_present=False)
    assert quiet.fallback is None
    assert [r for r in caplog.records if r.name == onnx_providers.__name__] == []
    with caplog.at_level(logging.WARNING, logger=onnx_providers.__name__):
        _, loud = _open(OnnxRuntimeSettings(), Factory([CPU_PROVIDER]), gpu_present=True)
    assert loud.fallback is not None
    assert "imgembed[onnx-gpu]" in loud.fallback
    assert "imgembed[onnx-gpu]" in caplog.text


def test_cpu_is_never_a_fallback() -> None:
    active = check_providers(
        [CPU_PROVIDER],
        OnnxRuntimeSettings(provider="cpu"),
        [CPU_PROVIDER],
        graph="g",
        gpu_present=True,
    )
    assert (active.requested, active.active, active.fallback) == ("cpu", CPU_PROVIDER, None)


def test_both_runtime_packages_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {"onnxruntime", "onnxruntime-gpu"}

    def distribution(name: str) -> object:
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return object()

    monkeypatch.setattr(onnx_providers.importlib.metadata, "distribution", distribution)
    monkeypatch.setattr(onnx_providers.ort, "get_available_providers", lambda: list(CPU_BUILD))
    assert installed_runtime_packages() == ["onnxruntime", "onnxruntime-gpu"]
    with pytest.raises(ModelLoadError, match="Both onnxruntime and onnxruntime-gpu are installed"):
        choose_providers(OnnxRuntimeSettings(provider="cuda"))
    installed.discard("onnxruntime-gpu")
    assert installed_runtime_packages() == ["onnxruntime"]
