"""Where models run and in what precision.

CUDA when present (or asked for), else CPU. On CUDA the forward pass runs under bfloat16 autocast
(float16 where the GPU has no native bfloat16), with TF32 and cuDNN's autotuner on
(:func:`configure_cuda`); on CPU it runs in float32, which is both the fastest and the exact choice
there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from imgembed.errors import ModelLoadError
from imgembed.settings import DeviceChoice

ComputeDtype = Literal["float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class DevicePlacement:
    """A device and the precision the forward pass runs in there.

    Attributes:
        device: The torch device holding the weights.
        compute_dtype: ``float32`` (no autocast) or the autocast dtype.
    """

    device: torch.device
    compute_dtype: ComputeDtype

    @property
    def device_name(self) -> str:
        """``cpu`` or ``cuda`` (the seed's ``device`` field), without the index."""
        return self.device.type

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Context in which the forward pass runs in :attr:`compute_dtype`."""
        if self.compute_dtype == "float32":
            yield
            return
        dtype = torch.bfloat16 if self.compute_dtype == "bfloat16" else torch.float16
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            yield


def choose_placement(choice: DeviceChoice) -> DevicePlacement:
    """Resolves a device choice to a placement.

    Args:
        choice: ``auto`` (CUDA if available, else CPU), ``cpu`` or ``cuda``.

    Returns:
        The device and its compute dtype.

    Raises:
        ModelLoadError: ``cuda`` was asked for on a machine without a usable CUDA device.
    """
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return DevicePlacement(device=torch.device("cpu"), compute_dtype="float32")
    if not torch.cuda.is_available():
        raise ModelLoadError(
            "device 'cuda' was requested but no CUDA device is available to this torch build "
            f"({torch.__version__}); set --device cpu or --device auto (IMGEMBED_DEVICE)",
            field="device",
        )
    configure_cuda()
    # Native bfloat16 only (Ampere and later): on older GPUs it is emulated, slower than float16.
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    compute_dtype: ComputeDtype = "bfloat16" if native_bf16 else "float16"
    device = torch.device("cuda", torch.cuda.current_device())  # cuda:N, never a bare "cuda"
    return DevicePlacement(device=device, compute_dtype=compute_dtype)


def configure_cuda() -> None:
    """Process-wide CUDA math settings for inference, set once a model is placed on CUDA.

    - TF32 for float32 matrix products and convolutions (``float32_matmul_precision`` "high"):
      what stays float32 under autocast (and float32 parts of the models) runs on tensor cores,
      with a 10-bit mantissa, well within the tolerances of bf16 inference.
    - ``cudnn.benchmark``: the encoders' convolutions see one input shape (SAM 2's 1024x1024, a
      SigLIP FixRes size), so cuDNN's fastest algorithm is chosen once per shape and reused.
    """
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.benchmark = True


def device_label(device: torch.device) -> str:
    """``cuda:N`` for a CUDA device (a bare ``cuda`` resolved to the current device), else the
    device's type: the ``device`` label of the metrics."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index}"
