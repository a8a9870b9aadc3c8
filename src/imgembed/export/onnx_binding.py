"""I/O binding: ONNX Runtime reads a graph's inputs from torch tensors where they are, and writes
its outputs into torch tensors allocated on a chosen device.

With the CUDA provider, ``session.run`` copies every output to host memory (NumPy); SAM 2's
encoder features are 21 MiB per image in float32, which the PyTorch decoder would then copy back to
the GPU. Bound outputs stay where the decoder works: torch allocates them, ONNX Runtime writes into
their memory (no DLPack or ``OrtValue`` conversion, and torch owns the memory afterwards).

Streams: ONNX Runtime runs on its own CUDA stream. Before the run, torch's current stream on each
CUDA device involved is synchronised, so inputs written by torch are complete and no pending
torch kernel still uses the output tensors' memory; ``run_with_iobinding`` returns after
ONNX Runtime's own stream finished (its default run options synchronise the providers), so the
outputs are complete for any torch stream.

Binding is used only when the session runs on a GPU; on the CPU provider it works the same way
(``device_type`` ``cpu``), which is how the tests exercise this code without a GPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

_ONNX_TO_TORCH: dict[str, torch.dtype] = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(double)": torch.float64,
    "tensor(int64)": torch.int64,
    "tensor(int32)": torch.int32,
    "tensor(bool)": torch.bool,
}
_TORCH_TO_NUMPY: dict[torch.dtype, type[np.generic]] = {
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.float64: np.float64,
    torch.int64: np.int64,
    torch.int32: np.int32,
    torch.bool: np.bool_,
}


def torch_dtype(onnx_type: str) -> torch.dtype:
    """The torch dtype of an ONNX tensor type string such as ``tensor(float)``.

    Raises:
        ValueError: A type this module does not bind.
    """
    try:
        return _ONNX_TO_TORCH[onnx_type]
    except KeyError:
        raise ValueError(
            f"I/O binding handles {sorted(_ONNX_TO_TORCH)}, got {onnx_type!r}; run this graph "
            "without binding (the CPU path)"
        ) from None


def ort_device(device: torch.device) -> tuple[str, int]:
    """ONNX Runtime's ``(device_type, device_id)`` for a torch device (``cuda`` without an index
    is the current CUDA device).

    Raises:
        ValueError: Neither a CPU nor a CUDA device.
    """
    if device.type == "cpu":
        return "cpu", 0
    if device.type == "cuda":
        return "cuda", torch.cuda.current_device() if device.index is None else device.index
    raise ValueError(f"I/O binding needs a cpu or cuda device, got {device}")


def wait_for_torch(devices: Sequence[torch.device]) -> None:
    """Waits until torch's current stream on each CUDA device in ``devices`` is done (nothing to
    wait for on the CPU)."""
    for device in dict.fromkeys(devices):
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()


def output_shape(declared: Sequence[Any], batch: int, name: str) -> list[int]:
    """An output's shape for a batch: the graph's declared shape with its first (symbolic) axis
    set to ``batch``.

    Args:
        declared: The shape as ``session.get_outputs()`` declares it, e.g. ``['batch', 256, 64,
            64]``.
        batch: The batch size of this run.
        name: The output's name, for the message.

    Raises:
        ValueError: Another axis is not a fixed size (its buffer cannot be allocated in advance).
    """
    shape = [batch]
    for axis, size in enumerate(declared[1:], start=1):
        if not isinstance(size, int) or size < 0:
            raise ValueError(
                f"output {name} has a dynamic axis {axis} ({size!r}); I/O binding needs every axis "
                "but the batch fixed in the graph, as imgembed's encoder export declares them"
            )
        shape.append(size)
    return shape


def run_bound(
    session: Any, inputs: Mapping[str, torch.Tensor], device: torch.device
) -> dict[str, torch.Tensor]:
    """Runs ``session`` with its inputs read in place and its outputs written on ``device``.

    Args:
        session: An ``onnxruntime.InferenceSession``.
        inputs: One tensor per graph input, ``[B,...]``, on the CPU or a CUDA device; converted to
            the graph's dtype and made contiguous where needed (on their own device).
        device: Where the outputs are allocated (``cpu`` or ``cuda:N``).

    Returns:
        Every graph output by name, ``[B,...]`` in the graph's declared dtype, on ``device``.

    Raises:
        ValueError: An input or output type, device or shape that cannot be bound.
    """
    batch = next(iter(inputs.values())).shape[0]
    binding = session.io_binding()
    bound: list[torch.Tensor] = []  # kept alive until the run is over
    for meta in session.get_inputs():
        dtype = torch_dtype(meta.type)
        tensor = inputs[meta.name].detach().to(dtype=dtype).contiguous()
        kind, index = ort_device(tensor.device)
        shape = list(tensor.shape)
        binding.bind_input(meta.name, kind, index, _TORCH_TO_NUMPY[dtype], shape, tensor.data_ptr())
        bound.append(tensor)
    kind, index = ort_device(device)
    outputs = {}
    for meta in session.get_outputs():
        dtype = torch_dtype(meta.type)
        shape = output_shape(meta.shape, batch, meta.name)
        tensor = torch.empty(shape, dtype=dtype, device=device)
        binding.bind_output(
            meta.name, kind, index, _TORCH_TO_NUMPY[dtype], shape, tensor.data_ptr()
        )
        outputs[meta.name] = tensor
    wait_for_torch([device, *(tensor.device for tensor in bound)])
    session.run_with_iobinding(binding)
    return outputs
