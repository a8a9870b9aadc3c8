"""The ``--backend python`` variant of the Triton repository, without a Triton server.

The configs are parsed with Triton's own schema and compared with the onnxruntime variant's: only
the backend and the model file differ. ``model.py`` runs here with a stand-in for Triton's
``triton_python_backend_utils``: requests joined into one batch and split back, optional inputs
left to the graph's defaults, thread parameters. test_triton_server.py runs the same files in a
real Triton server.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper

from imgembed.errors import InvalidInputError
from imgembed.export import triton_python_model
from imgembed.export.onnx_export import ExportResult
from imgembed.export.triton_config import TritonModelSettings, TritonRepositorySettings
from imgembed.export.triton_repository import (
    TritonExportResult,
    export_triton_from_onnx,
    python_model_source,
)


@pytest.fixture(scope="module")
def repositories(
    onnx_export: ExportResult, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, TritonExportResult]:
    folder = tmp_path_factory.mktemp("triton_python")
    python = TritonRepositorySettings(backend="python")
    return {
        "onnxruntime": export_triton_from_onnx(onnx_export.out_dir, folder / "onnxruntime"),
        "python": export_triton_from_onnx(onnx_export.out_dir, folder / "python", settings=python),
    }


def _parse(path: Path, model_config: ModuleType) -> Any:
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config.ModelConfig())


def test_python_variant_differs_only_in_backend_and_model_file(
    repositories: dict[str, TritonExportResult], triton_model_config: ModuleType
) -> None:
    python, onnxruntime = repositories["python"], repositories["onnxruntime"]
    assert set(python.config_paths) == {"sam2_encoder", "sam2_decoder"}
    for name, path in python.config_paths.items():
        ours = _parse(path, triton_model_config)
        theirs = _parse(onnxruntime.config_paths[name], triton_model_config)
        assert ours.backend == "python"
        assert ours.default_model_filename == ""  # the Python backend's default: model.py
        assert theirs.default_model_filename == "model.onnx"
        ours.backend, ours.default_model_filename = theirs.backend, theirs.default_model_filename
        assert ours == theirs, name
        version = python.model_dirs[name] / "1"
        assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "model.py"]
        assert python.script_paths[name].read_text(encoding="utf-8") == python_model_source()
        assert python.model_paths[name].read_bytes() == onnxruntime.model_paths[name].read_bytes()
    assert python.metadata["triton"]["backend"] == "python"
    assert onnxruntime.metadata["triton"]["backend"] == "onnxruntime"
    assert onnxruntime.script_paths == {}


def test_python_backend_refuses_tensorrt(onnx_export: ExportResult, tmp_path: Path) -> None:
    settings = TritonRepositorySettings(
        backend="python", encoder=TritonModelSettings(max_batch_size=4, tensorrt_fp16=True)
    )
    with pytest.raises(InvalidInputError, match="TensorRT with the python backend") as caught:
        export_triton_from_onnx(onnx_export.out_dir, tmp_path / "repo", settings=settings)
    assert caught.value.field == "encoder.tensorrt_fp16"
    with pytest.raises(InvalidInputError, match="backend must be one of onnxruntime, python"):
        export_triton_from_onnx(
            onnx_export.out_dir,
            tmp_path / "repo",
            settings=TritonRepositorySettings(backend="tensorflow"),  # type: ignore[arg-type]
        )


def test_command_line_takes_the_backend_and_refuses_tensorrt_with_it(tmp_path: Path) -> None:
    """``--backend python`` reaches the settings: TensorRT with it is refused before tracing."""
    command = [sys.executable, "-m", "imgembed.cli", "export", "triton", "--weights", "dummy"]
    command += ["--backend", "python", "--tensorrt-fp16", "--out", str(tmp_path / "repo")]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 2, completed.stderr
    errors = [line for line in completed.stderr.splitlines() if line.startswith("imgembed: error:")]
    assert len(errors) == 1, completed.stderr
    assert "TensorRT with the python backend" in errors[0]
    assert not (tmp_path / "repo").exists()


class _Tensor:
    def __init__(self, name: str, value: np.ndarray) -> None:
        self.name, self.value = name, value

    def as_numpy(self) -> np.ndarray:
        return self.value


def _fake_utils() -> SimpleNamespace:
    """What model.py uses of Triton's ``triton_python_backend_utils``."""
    return SimpleNamespace(
        Tensor=_Tensor,
        InferenceResponse=lambda output_tensors: {t.name: t.value for t in output_tensors},
        get_input_tensor_by_name=lambda request, name: (
            _Tensor(name, request[name]) if name in request else None
        ),
    )


def _graph(path: Path) -> None:
    """``y = x + bias`` and ``rows = sum(x, axis=1)``; ``bias`` [1,3] may be left out (zeros)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    bias = helper.make_tensor_value_info("bias", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    rows = helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch"])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    default = helper.make_tensor("bias", TensorProto.FLOAT, [1, 3], [0.0, 0.0, 0.0])
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "bias"], ["y"]),
            helper.make_node("ReduceSum", ["x", "axes"], ["rows"], keepdims=0),
        ],
        "toy",
        [x, bias],
        [y, rows],
        initializer=[axes, default],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _model(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    max_batch_size: int,
    kind: str = "CPU",
    **parameters: str,
) -> triton_python_model.TritonPythonModel:
    monkeypatch.setattr(triton_python_model, "pb_utils", _fake_utils())
    (tmp_path / "1").mkdir(exist_ok=True)
    _graph(tmp_path / "1" / "model.onnx")
    config = {
        "max_batch_size": max_batch_size,
        "input": [{"name": "x"}, {"name": "bias"}],
        "output": [{"name": "y"}, {"name": "rows"}],
        "parameters": {key: {"string_value": value} for key, value in parameters.items()},
    }
    model = triton_python_model.TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps(config),
            "model_repository": str(tmp_path),
            "model_version": "1",
            "model_instance_kind": kind,
        }
    )
    return model


def test_a_gpu_instance_whose_cuda_does_not_start_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18, item 6: ONNX Runtime drops a CUDA provider it cannot start and runs on the CPU;
    a KIND_GPU instance that asked for CUDA fails to load instead. Here the CPU onnxruntime is made
    to list CUDA, so it is asked for, and the real session comes up on the CPU."""
    ort = triton_python_model.ort
    listed = ["CUDAExecutionProvider", *ort.get_available_providers()]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    with pytest.raises(RuntimeError, match=r"KIND_GPU instance .* did not start"):
        _model(tmp_path, monkeypatch, max_batch_size=8, kind="GPU")


def test_model_joins_a_batch_of_requests_and_splits_the_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tmp_path, monkeypatch, max_batch_size=8, intra_op_thread_count="1")
    runs = []
    session_run = model.session.run
    monkeypatch.setattr(
        model.session, "run", lambda names, feeds: runs.append(feeds) or session_run(names, feeds)
    )
    requests = [{"x": np.full((size, 3), size, np.float32)} for size in (1, 3, 2)]
    responses = model.execute(requests)
    assert len(runs) == 1  # one graph run for the whole batch
    assert runs[0]["x"].shape == (6, 3)
    for size, response in zip((1, 3, 2), responses, strict=True):
        np.testing.assert_array_equal(response["y"], np.full((size, 3), size, np.float32))
        np.testing.assert_array_equal(response["rows"], np.full(size, 3 * size, np.float32))
        assert response["y"].flags.c_contiguous


def test_unbatched_model_runs_each_request_and_leaves_optional_inputs_to_the_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tmp_path, monkeypatch, max_batch_size=0)
    with_bias = {"x": np.ones((2, 3), np.float32), "bias": np.full((1, 3), 5, np.float32)}
    without = {"x": np.ones((4, 3), np.float32)}
    first, second = model.execute([with_bias, without])
    np.testing.assert_array_equal(first["y"], np.full((2, 3), 6, np.float32))
    np.testing.assert_array_equal(second["y"], np.ones((4, 3), np.float32))
    model.finalize()
    assert model.session is None


def test_model_errors_say_what_was_expected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="intra_op_thread_count must be an integer"):
        _model(tmp_path, monkeypatch, max_batch_size=0, intra_op_thread_count="two")
    (tmp_path / "1" / "model.onnx").unlink()
    model = triton_python_model.TritonPythonModel()
    with pytest.raises(FileNotFoundError, match="expected the ONNX graph at"):
        model.initialize(
            {
                "model_config": json.dumps({"max_batch_size": 0}),
                "model_repository": str(tmp_path),
                "model_version": "1",
            }
        )


def test_model_file_imports_only_what_the_stub_environment_has() -> None:
    """The stub's Python has the standard library, numpy, onnxruntime and Triton's utils."""
    imported = set()
    for node in ast.walk(ast.parse(python_model_source())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    allowed = {"numpy", "onnxruntime", "triton_python_backend_utils"}
    assert imported - allowed <= set(sys.stdlib_module_names), imported
