"""Checking a written ONNX graph: valid ONNX, and exactly the inputs and outputs it should have."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imgembed.errors import ImgembedError
from imgembed.export.sam2_io import Dimension, GraphTensor

try:
    import onnx
except ImportError as e:
    raise ImportError("ONNX export needs the 'onnx' extra: pip install 'imgembed[onnx]'") from e

_ELEMENT_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}


def _shape(value: onnx.ValueInfoProto) -> list[Dimension]:
    """A value's shape: sizes, and axis names (``"?"`` for an unnamed dynamic axis)."""
    return [
        dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?")
        for dim in value.type.tensor_type.shape.dim
    ]


def _describe(value: onnx.ValueInfoProto, optional: bool | None = None) -> dict[str, Any]:
    """A tensor as the metadata lists it; ``optional`` only for inputs."""
    element_type = value.type.tensor_type.elem_type
    described: dict[str, Any] = {
        "name": value.name,
        "dtype": _ELEMENT_TYPES.get(element_type, onnx.TensorProto.DataType.Name(element_type)),
        "shape": _shape(value),
    }
    if optional is not None:
        described["optional"] = optional
    return described


def graph_signature(path: Path) -> dict[str, Any]:
    """The opset, inputs and outputs of an ONNX file, as written.

    Returns:
        ``{"opset": int, "inputs": [...], "outputs": [...]}``; each tensor as ``{"name", "dtype",
        "shape"}`` with axis names for dynamic axes; inputs also say whether they are
        ``optional`` (an initializer of the same name gives their default).
    """
    model = onnx.load(str(path), load_external_data=False)
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    initializers = {initializer.name for initializer in model.graph.initializer}
    return {
        "opset": opset,
        "inputs": [_describe(v, optional=v.name in initializers) for v in model.graph.input],
        "outputs": [_describe(v) for v in model.graph.output],
    }


def _mismatch(expected: GraphTensor, found: dict[str, Any], input_defaults: bool) -> str | None:
    """Why a written tensor differs from the table, or ``None`` when it fits; ``input_defaults``
    says whether the ``zero_default`` inputs should carry their defaults."""
    if found["name"] != expected.name:
        return f"expected {expected.name!r} here, found {found['name']!r}"
    optional = input_defaults and expected.zero_default
    if found.get("optional", optional) != optional:
        return (
            f"{expected.name} should {'' if optional else 'not '}be optional (an initializer of "
            "the same name)"
        )
    if found["dtype"] != "float32":
        return f"{expected.name} is {found['dtype']}, expected float32"
    shape = found["shape"]
    if len(shape) != len(expected.shape):
        return f"{expected.name} has shape {shape}, expected {list(expected.shape)}"
    for axis, (want, got) in enumerate(zip(expected.shape, shape, strict=True)):
        if isinstance(want, int) and got != want:
            return f"{expected.name} axis {axis} is {got}, expected {want}"
        if isinstance(want, str) and isinstance(got, int):
            return f"{expected.name} axis {axis} is fixed at {got}, expected dynamic ({want})"
    return None


def check_graph(
    path: Path,
    inputs: tuple[GraphTensor, ...],
    outputs: tuple[GraphTensor, ...],
    *,
    input_defaults: bool = False,
) -> dict[str, Any]:
    """Runs ``onnx.checker`` (with shape inference) on a file and checks its signature.

    Args:
        path: The ``.onnx`` file.
        inputs: The inputs it must have, in order.
        outputs: The outputs it must have, in order.
        input_defaults: The ``zero_default`` inputs must carry zero defaults (a graph written by
            :func:`~imgembed.export.onnx_export.write_with_input_defaults`); otherwise no input
            may have a default.

    Returns:
        Its :func:`graph_signature`.

    Raises:
        ImgembedError: The file is not valid ONNX, or its inputs or outputs differ.
    """
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ImgembedError(f"{path.name} is not a valid ONNX graph: {error}") from error
    signature = graph_signature(path)
    for kind, expected, found in (
        ("inputs", inputs, signature["inputs"]),
        ("outputs", outputs, signature["outputs"]),
    ):
        if len(found) != len(expected):
            raise ImgembedError(
                f"{path.name} has {kind} {[item['name'] for item in found]}, expected "
                f"{[tensor.name for tensor in expected]}"
            )
        for tensor, item in zip(expected, found, strict=True):
            problem = _mismatch(tensor, item, input_defaults)
            if problem:
                raise ImgembedError(f"{path.name} does not have the expected {kind}: {problem}")
    return signature
