"""Where models run and in what precision.

CUDA when present (or asked for), else CPU. The compute dtype (``IMGEMBED_COMPUTE_DTYPE``) is the
precision of the forward passes:

- ``auto``: float32 on a CPU, which is both the fastest and the exact choice there; on CUDA,
  bfloat16 autocast where the GPU has native bfloat16, else float16 autocast.
- ``float32``: no autocast, on any device; on CUDA it also turns TF32 off (process-wide), so the
  results carry full float32 precision.
- ``bfloat16``: autocast on CUDA, or CPU autocast (fast on CPUs with AMX or AVX512-BF16, slower
  than float32 elsewhere; a warning says so).
- ``float16``: autocast on CUDA only. On a CPU it is refused: few CPUs compute float16 natively,
  and float16's narrow range (largest value 65504) is what bfloat16 avoids; bfloat16 is the
  reduced precision CPU autocast is made for.

On CUDA, TF32 and cuDNN's autotuner are on (:func:`configure_cuda`) unless a model asked for
float32.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from imgembed.errors import ModelLoadError
from imgembed.settings import ComputeDtypeChoice, DeviceChoice

logger = logging.getLogger(__name__)

ComputeDtype = Literal["float32", "bfloat16", "float16"]

TORCH_DTYPES: dict[ComputeDtype, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
"""Each compute dtype as a torch dtype."""

_full_float32 = False
"""Whether a model placed on CUDA asked for float32: TF32 then stays off for the whole process
(the switches are process-wide, and a float32 model's precision is a promise to its clients)."""


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

    @property
    def torch_dtype(self) -> torch.dtype:
        """The compute dtype as a torch dtype: what SAM 2's cached features are held in."""
        return TORCH_DTYPES[self.compute_dtype]

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Context in which the forward pass runs in :attr:`compute_dtype`."""
        if self.compute_dtype == "float32":
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.torch_dtype):
            yield


def choose_placement(
    choice: DeviceChoice, compute_dtype: ComputeDtypeChoice = "auto"
) -> DevicePlacement:
    """Resolves a device choice and a compute-dtype choice to a placement.

    Args:
        choice: ``auto`` (CUDA if available, else CPU), ``cpu`` or ``cuda``.
        compute_dtype: ``auto`` (float32 on CPU; bfloat16 on CUDA with native bfloat16, else
            float16), ``float32``, ``bfloat16`` or ``float16`` (CUDA only).

    Returns:
        The device and its compute dtype.

    Raises:
        ModelLoadError: ``cuda`` was asked for on a machine without a usable CUDA device;
            ``float16`` on a CPU; ``bfloat16`` on a GPU that cannot run it even emulated.
    """
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return DevicePlacement(device=torch.device("cpu"), compute_dtype=_cpu_dtype(compute_dtype))
    if not torch.cuda.is_available():
        raise ModelLoadError(
            "device 'cuda' was requested but no CUDA device is available to this torch build "
            f"({torch.__version__}); set --device cpu or --device auto (IMGEMBED_DEVICE)",
            field="device",
        )
    resolved = _cuda_dtype(compute_dtype)
    configure_cuda(full_float32=resolved == "float32")
    device = torch.device("cuda", torch.cuda.current_device())  # cuda:N, never a bare "cuda"
    return DevicePlacement(device=device, compute_dtype=resolved)


def _cpu_dtype(choice: ComputeDtypeChoice) -> ComputeDtype:
    if choice in ("auto", "float32"):
        return "float32"
    if choice == "float16":
        raise ModelLoadError(
            "compute dtype 'float16' runs on CUDA only, and this model is placed on the CPU; set "
            "--compute-dtype float32 (exact, the fastest on most CPUs) or bfloat16 (CPU autocast) "
            "(IMGEMBED_COMPUTE_DTYPE), or --device cuda on a GPU machine",
            field="compute_dtype",
        )
    logger.warning(
        "compute dtype bfloat16 on the CPU: CPU autocast, faster than float32 only on CPUs with "
        "AMX or AVX512-BF16; results carry bfloat16 precision"
    )
    return "bfloat16"


def _cuda_dtype(choice: ComputeDtypeChoice) -> ComputeDtype:
    # Native bfloat16 only (Ampere and later): on older GPUs it is emulated, slower than float16.
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    if choice == "auto":
        return "bfloat16" if native_bf16 else "float16"
    if choice == "bfloat16" and not native_bf16:
        if not torch.cuda.is_bf16_supported(including_emulation=True):
            raise ModelLoadError(
                "compute dtype 'bfloat16' was requested but this GPU cannot run bfloat16; set "
                "--compute-dtype float16 or float32 (IMGEMBED_COMPUTE_DTYPE)",
                field="compute_dtype",
            )
        logger.warning(
            "compute dtype bfloat16 on a GPU without native bfloat16: emulated, slower than "
            "float16 (--compute-dtype float16 or auto picks float16 here)"
        )
    return choice


def configure_cuda(*, full_float32: bool = False) -> None:
    """Process-wide CUDA math settings for inference, set once a model is placed on CUDA.

    - TF32 for float32 matrix products and convolutions (``float32_matmul_precision`` "high"):
      what stays float32 under autocast (and float32 parts of the models) runs on tensor cores,
      with a 10-bit mantissa, well within the tolerances of bf16 inference. Off (``"highest"``)
      once any model asks for float32 compute (``full_float32``), and then for good: the switches
      are process-wide, and float32 compute promises float32 precision.
    - ``cudnn.benchmark``: the encoders' convolutions see one input shape (SAM 2's 1024x1024, a
      SigLIP FixRes size), so cuDNN's fastest algorithm is chosen once per shape and reused.

    Args:
        full_float32: The model being placed computes in float32.
    """
    global _full_float32
    _full_float32 = _full_float32 or full_float32
    tf32 = not _full_float32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.benchmark = True


def device_label(device: torch.device) -> str:
    """``cuda:N`` for a CUDA device (a bare ``cuda`` resolved to the current device), else the
    device's type: the ``device`` label of the metrics."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index}"
