"""The ONNX Runtime backend's settings (issue 18, item 6): variables, the flag and config-file keys
land in ``ModelSpec.onnx``; the engine turns them into the backend's settings on the model's
device."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from imgembed.cli.common import add_model_flags, config_from_args
from imgembed.engine.sam2_served import _onnx_settings
from imgembed.errors import InvalidInputError
from imgembed.runtime.device import DevicePlacement
from imgembed.settings import ModelSpec, OnnxRuntimeOptions, server_config_from_env


def test_variables_fill_every_model_s_onnx_options() -> None:
    config = server_config_from_env(
        {
            "IMGEMBED_MODEL": "sam2.1-hiera-tiny",
            "IMGEMBED_ONNX_PROVIDER": "cuda",
            "IMGEMBED_ONNX_GPU_MEM_LIMIT": str(4 * 1024**3),
            "IMGEMBED_ONNX_ARENA_EXTEND_STRATEGY": "kNextPowerOfTwo",
            "IMGEMBED_ONNX_CUDNN_CONV_ALGO_SEARCH": "HEURISTIC",
        }
    )
    assert config.models[0].onnx == OnnxRuntimeOptions(
        provider="cuda",
        gpu_mem_limit=4 * 1024**3,
        arena_extend_strategy="kNextPowerOfTwo",
        cudnn_conv_algo_search="HEURISTIC",
    )
    assert server_config_from_env({}).models[0].onnx == OnnxRuntimeOptions()


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("IMGEMBED_ONNX_PROVIDER", "gpu", "expected one of auto, cpu, cuda, tensorrt, got 'gpu'"),
        ("IMGEMBED_ONNX_GPU_MEM_LIMIT", "-1", "expected a whole number at least 0, got -1"),
        ("IMGEMBED_ONNX_ARENA_EXTEND_STRATEGY", "grow", "expected one of kSameAsRequested"),
        ("IMGEMBED_ONNX_CUDNN_CONV_ALGO_SEARCH", "fast", "expected one of EXHAUSTIVE"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(InvalidInputError, match=expected) as caught:
        server_config_from_env({variable: value})
    assert caught.value.message.startswith(f"{variable}={value!r} is invalid")


def test_config_file_keys_per_model_and_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "imgembed.toml"
    path.write_text(
        'onnx_gpu_mem_limit = 1024\n\n[[models]]\nname = "sam2.1-hiera-tiny"\n'
        'onnx_provider = "tensorrt"\n\n[[models]]\nname = "sam2.1-hiera-small"\n'
    )
    tiny, small = server_config_from_env({}, config_file=path).models
    assert (tiny.onnx.provider, tiny.onnx.gpu_mem_limit) == ("tensorrt", 1024)
    assert (small.onnx.provider, small.onnx.gpu_mem_limit) == ("auto", 1024)
    parser = argparse.ArgumentParser()
    add_model_flags(parser)
    monkeypatch.setenv("IMGEMBED_ONNX_PROVIDER", "cuda")
    flagged = config_from_args(parser.parse_args(["--onnx-provider", "cpu"]))
    assert flagged.models[0].onnx.provider == "cpu"  # the flag beats the variable


def test_the_engine_runs_onnx_on_the_model_s_device() -> None:
    options = OnnxRuntimeOptions(gpu_mem_limit=2048, cudnn_conv_algo_search="DEFAULT")
    spec = ModelSpec(name="sam2.1-hiera-tiny", backend="onnxruntime", onnx=options)
    on_gpu = _onnx_settings(spec, DevicePlacement(torch.device("cuda", 1), "bfloat16"))
    assert (on_gpu.provider, on_gpu.device_id, on_gpu.gpu_mem_limit) == ("auto", 1, 2048)
    assert on_gpu.cudnn_conv_algo_search == "DEFAULT"
    on_cpu = _onnx_settings(spec, DevicePlacement(torch.device("cpu"), "float32"))
    assert (on_cpu.provider, on_cpu.device_id) == ("cpu", 0)  # auto follows the model
    asked = ModelSpec(name="sam2.1-hiera-tiny", onnx=OnnxRuntimeOptions(provider="cuda"))
    kept = _onnx_settings(asked, DevicePlacement(torch.device("cpu"), "float32"))
    assert kept.provider == "cuda"  # an explicit choice is never rewritten
