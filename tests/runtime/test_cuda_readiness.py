"""What a first CUDA run needs from the runtime, checked on the CPU with CUDA's queries mocked
(issue 18, item 10): library allocation failures count as out of memory, placements name
``cuda:N``, TF32 and cuDNN's autotuner are on, and emulated bfloat16 is not taken for support."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from imgembed.runtime import device as device_module
from imgembed.runtime.device import choose_placement, device_label
from imgembed.runtime.memory import is_out_of_memory


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: out of memory"),
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
        RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
        RuntimeError("cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE"),
        RuntimeError("cuFFT error: CUFFT_ALLOC_FAILED"),
    ],
    ids=repr,
)
def test_allocation_failures_of_every_library_are_out_of_memory(error: BaseException) -> None:
    assert is_out_of_memory(error)


def test_onnx_runtimes_allocation_failure_is_out_of_memory() -> None:
    # ONNX Runtime's pybind errors are not RuntimeErrors; their module tells them apart.
    failure = type("RuntimeException", (Exception,), {"__module__": "onnxruntime.capi.state"})
    assert is_out_of_memory(failure("Failed to allocate memory for requested buffer of size 8"))
    assert not is_out_of_memory(failure("Invalid input name: image"))


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED"),
        ValueError("out of memory"),  # a bad input's message, not an allocation
        RuntimeError("shape mismatch"),
    ],
    ids=repr,
)
def test_other_failures_are_not_out_of_memory(error: BaseException) -> None:
    assert not is_out_of_memory(error)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, object]]:
    """A machine with CUDA device 1 current and bfloat16 only emulated; CUDA settings restored."""
    calls: dict[str, object] = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
    )
    monkeypatch.setattr(
        torch, "set_float32_matmul_precision", lambda value: calls.update(precision=value)
    )
    monkeypatch.setattr(device_module, "_full_float32", False)  # no float32 model placed yet
    # torch.backends' settings are properties of their modules: saved and restored by hand.
    settings = [
        (torch.backends.cuda.matmul, "allow_tf32"),
        (torch.backends.cudnn, "allow_tf32"),
        (torch.backends.cudnn, "benchmark"),
    ]
    saved = [getattr(owner, name) for owner, name in settings]
    for owner, name in settings:
        setattr(owner, name, False)
    try:
        yield calls
    finally:
        for (owner, name), value in zip(settings, saved, strict=True):
            setattr(owner, name, value)


def test_a_cuda_placement_names_its_device_and_sets_up_cuda_math(fake_cuda: dict) -> None:
    placement = choose_placement("cuda")
    assert placement.device == torch.device("cuda", 1)
    assert placement.device_name == "cuda"  # the seed's field keeps the bare type
    assert placement.compute_dtype == "float16", "emulated bfloat16 is slower than float16"
    assert torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32
    assert torch.backends.cudnn.benchmark
    assert fake_cuda["precision"] == "high"


def test_native_bfloat16_is_used(fake_cuda: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert choose_placement("auto").compute_dtype == "bfloat16"


def test_a_cpu_placement_leaves_cuda_settings_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        device_module, "configure_cuda", lambda **_: pytest.fail("CUDA set up on CPU")
    )
    assert choose_placement("cpu").device == torch.device("cpu")


def test_metric_labels_name_the_cuda_device(fake_cuda: dict) -> None:
    assert device_label(torch.device("cuda")) == "cuda:1"
    assert device_label(torch.device("cuda", 0)) == "cuda:0"
    assert device_label(torch.device("cpu")) == "cpu"
