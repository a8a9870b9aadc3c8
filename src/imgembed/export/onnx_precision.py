"""Smaller variants of an exported float32 graph: float16 weights and math, or int8 weights.

Both keep every graph input and output float32 with the same names and shapes, so a client, a
Triton config or imgembed's ONNX Runtime backend uses any variant without change.

- ``fp16``: every float32 initializer and node converted to float16 by ONNX Runtime's converter
  (``onnxruntime.transformers.float16``), with casts at the graph's inputs and outputs. Half the
  size; fast on GPUs (CUDA, TensorRT), slower than float32 on most CPUs, which lack float16
  kernels and cast back and forth.
- ``int8``: dynamic quantisation (``onnxruntime.quantization.quantize_dynamic``) of the weights
  of every ``MatMul``/``Gemm`` (the Hiera blocks, the two-way transformer, the MLP heads) to int8
  per output channel; activations are quantised on the fly. About a quarter of the size; meant for
  CPUs. Convolutions stay float32: their ``ConvInteger`` form runs on fewer execution providers.

The numerical cost of each is measured against float32 PyTorch in ``benchmarks/onnx.py``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Literal

try:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel
except ImportError as e:
    raise ImportError("ONNX export needs the 'onnx' extra: pip install 'imgembed[onnx]'") from e

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")
INT8_OP_TYPES = ("MatMul", "Gemm")
"""Operators whose weights the int8 variant quantises."""


def to_fp16(source: Path, target: Path) -> None:
    """Writes a float16 copy of the float32 graph ``source`` to ``target`` (float32 I/O kept)."""
    model = onnx.load(str(source))
    converted = OnnxModel(convert_float_to_float16(model, keep_io_types=True))
    # The converter appends its input casts after the nodes that read them; ONNX wants them first.
    converted.topological_sort()
    # Intermediate types recorded before the conversion are stale; shape inference redoes them.
    del converted.model.graph.value_info[:]
    onnx.save(converted.model, str(target))


def to_int8(source: Path, target: Path) -> None:
    """Writes a dynamically quantised copy of the float32 graph ``source`` to ``target``."""
    quantize_dynamic(
        source,
        target,
        op_types_to_quantize=list(INT8_OP_TYPES),
        per_channel=True,
        weight_type=QuantType.QInt8,
    )


def convert_graph(source: Path, target: Path, precision: Precision) -> None:
    """Writes ``source`` (a float32 graph) to ``target`` in ``precision``.

    Args:
        source: An exported float32 ``.onnx`` file.
        target: Where the converted graph goes; for ``fp32`` a copy of ``source``.
        precision: ``fp32``, ``fp16`` or ``int8``.
    """
    logger.info("Converting %s to %s: %s", source.name, precision, target)
    if precision == "fp16":
        to_fp16(source, target)
    elif precision == "int8":
        to_int8(source, target)
    else:
        shutil.copyfile(source, target)
