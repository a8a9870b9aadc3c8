"""Where models run and in what precision.

CUDA when present (or asked for), else CPU. On CUDA the forward pass runs under bfloat16 autocast
(float16 where the GPU lacks bfloat16); on CPU it runs in float32, which is both the fastest and the
exact choice there.
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
    compute_dtype: ComputeDtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return DevicePlacement(device=torch.device("cuda"), compute_dtype=compute_dtype)
