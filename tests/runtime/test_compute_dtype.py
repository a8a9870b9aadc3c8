"""The compute-dtype setting (issue 18, item 5): how ``IMGEMBED_COMPUTE_DTYPE`` / ``--compute-dtype``
/ a config file's ``compute_dtype`` parse, and what :func:`choose_placement` makes of each choice on
a CPU and on a CUDA machine (CUDA's queries mocked: no GPU runs here)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from imgembed.cli.common import add_model_flags, config_from_args
from imgembed.errors import InvalidInputError, ModelLoadError
from imgembed.runtime import device as device_module
from imgembed.runtime.device import choose_placement
from imgembed.settings import server_config_from_env


def test_the_default_is_auto_for_every_model() -> None:
    config = server_config_from_env(
        {}, {"model": ["sam2.1-hiera-tiny", "siglip2-base-patch16-224"]}
    )
    assert [spec.compute_dtype for spec in config.models] == ["auto", "auto"]


@pytest.mark.parametrize("value", ["float32", "bfloat16", "float16", "auto"])
def test_the_variable_sets_every_model(value: str) -> None:
    config = server_config_from_env({"IMGEMBED_COMPUTE_DTYPE": value})
    assert config.models[0].compute_dtype == value


def test_a_bad_value_names_the_variable_and_the_choices() -> None:
    with pytest.raises(InvalidInputError) as caught:
        server_config_from_env({"IMGEMBED_COMPUTE_DTYPE": "fp16"})
    assert caught.value.field == "IMGEMBED_COMPUTE_DTYPE"
    assert "auto, float32, bfloat16, float16" in caught.value.message
    assert "'fp16'" in caught.value.message


def test_the_flag_wins_over_the_variable() -> None:
    parser = argparse.ArgumentParser()
    add_model_flags(parser)
    args = parser.parse_args(["--compute-dtype", "float32"])
    monkeypatched_env = {"IMGEMBED_COMPUTE_DTYPE": "bfloat16"}
    config = server_config_from_env(
        monkeypatched_env, {"compute_dtype": args.compute_dtype, "device": args.device}
    )
    assert config.models[0].compute_dtype == "float32"


def test_the_flag_reaches_the_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMGEMBED_COMPUTE_DTYPE", raising=False)
    parser = argparse.ArgumentParser()
    add_model_flags(parser)
    config = config_from_args(parser.parse_args(["--compute-dtype", "bfloat16"]))
    assert config.models[0].compute_dtype == "bfloat16"


def test_the_flag_refuses_other_values(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_model_flags(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--compute-dtype", "half"])
    assert "--compute-dtype" in capsys.readouterr().err


def test_a_config_file_sets_it_per_model(tmp_path: Path) -> None:
    path = tmp_path / "imgembed.toml"
    path.write_text(
        'compute_dtype = "bfloat16"\n'
        '[[models]]\nname = "sam2.1-hiera-tiny"\ncompute_dtype = "float32"\n'
        '[[models]]\nname = "siglip2-base-patch16-224"\n'
    )
    config = server_config_from_env({}, config_file=path)
    assert [spec.compute_dtype for spec in config.models] == ["float32", "bfloat16"]


# --- placement on the CPU ----------------------------------------------------------------------


@pytest.mark.parametrize("choice", ["auto", "float32"])
def test_the_cpu_computes_in_float32_without_autocast(choice: str) -> None:
    placement = choose_placement("cpu", choice)  # type: ignore[arg-type]
    assert placement.compute_dtype == "float32"
    weight = torch.randn(4, 4)
    with placement.autocast():
        assert (weight @ weight).dtype == torch.float32


def test_bfloat16_on_the_cpu_is_cpu_autocast_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="imgembed.runtime.device"):
        placement = choose_placement("cpu", "bfloat16")
    assert placement.compute_dtype == "bfloat16"
    assert placement.torch_dtype == torch.bfloat16
    assert "AMX" in caplog.text
    weight = torch.randn(4, 4)
    with placement.autocast():
        assert (weight @ weight).dtype == torch.bfloat16


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_float16_on_the_cpu_is_refused_saying_what_to_set(
    device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError) as caught:
        choose_placement(device, "float16")  # type: ignore[arg-type]
    assert caught.value.field == "compute_dtype"
    message = caught.value.message
    assert "'float16' runs on CUDA only" in message
    assert "--compute-dtype float32" in message
    assert "IMGEMBED_COMPUTE_DTYPE" in message


# --- placement on CUDA (mocked) ----------------------------------------------------------------


@pytest.fixture
def cuda_machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, object]]:
    """CUDA device 0 with native bfloat16; TF32 switches and the process-wide float32 choice
    saved and restored."""
    calls: dict[str, object] = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(
        torch, "set_float32_matmul_precision", lambda value: calls.update(precision=value)
    )
    monkeypatch.setattr(device_module, "_full_float32", False)
    settings = [
        (torch.backends.cuda.matmul, "allow_tf32"),
        (torch.backends.cudnn, "allow_tf32"),
        (torch.backends.cudnn, "benchmark"),
    ]
    saved = [getattr(owner, name) for owner, name in settings]
    try:
        yield calls
    finally:
        for (owner, name), value in zip(settings, saved, strict=True):
            setattr(owner, name, value)


def test_float32_is_selectable_on_cuda_and_turns_tf32_off(cuda_machine: dict) -> None:
    placement = choose_placement("cuda", "float32")
    assert placement.device == torch.device("cuda", 0)
    assert placement.compute_dtype == "float32"
    assert not torch.backends.cuda.matmul.allow_tf32
    assert not torch.backends.cudnn.allow_tf32
    assert cuda_machine["precision"] == "highest"
    assert torch.backends.cudnn.benchmark


def test_a_later_reduced_precision_model_keeps_tf32_off(cuda_machine: dict) -> None:
    """The switches are process-wide: a float32 model's promise holds for the whole process."""
    choose_placement("cuda", "float32")
    assert choose_placement("cuda", "auto").compute_dtype == "bfloat16"
    assert not torch.backends.cuda.matmul.allow_tf32
    assert cuda_machine["precision"] == "highest"


def test_reduced_precision_alone_turns_tf32_on(cuda_machine: dict) -> None:
    assert choose_placement("auto", "bfloat16").compute_dtype == "bfloat16"
    assert torch.backends.cuda.matmul.allow_tf32
    assert cuda_machine["precision"] == "high"


def test_float16_is_honoured_on_cuda(cuda_machine: dict) -> None:
    placement = choose_placement("cuda", "float16")
    assert placement.compute_dtype == "float16"
    assert placement.torch_dtype == torch.float16


def test_emulated_bfloat16_is_honoured_with_a_warning(
    cuda_machine: dict, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
    )
    assert choose_placement("cuda", "auto").compute_dtype == "float16"
    with caplog.at_level(logging.WARNING, logger="imgembed.runtime.device"):
        assert choose_placement("cuda", "bfloat16").compute_dtype == "bfloat16"
    assert "emulated" in caplog.text


def test_bfloat16_on_a_gpu_without_it_is_refused(
    cuda_machine: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    with pytest.raises(ModelLoadError) as caught:
        choose_placement("cuda", "bfloat16")
    assert caught.value.field == "compute_dtype"
    assert "--compute-dtype float16 or float32" in caught.value.message
