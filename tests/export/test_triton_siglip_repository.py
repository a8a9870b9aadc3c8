"""The SigLIP models of the Triton repository, without a Triton server.

Every config is parsed with Triton's own ``model_config.proto``; the ensembles map imgembed's v2
tensors through the preprocessing step to the encoder; the ``python`` and ``onnxruntime``
variants differ only in the encoders' backend and model file; a full repository holds SAM 2 and
SigLIP and records both; names that collide and settings Triton would refuse are refused; the
command line's ``--siglip`` options reach the export. test_triton_siglip_server.py runs the same
files in a real Triton server.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from google.protobuf import text_format
from siglip_checkpoints import TINY_FIXRES

from imgembed.cli import main
from imgembed.errors import ConflictError, InvalidInputError
from imgembed.export import triton_repository
from imgembed.export.onnx_export import ExportResult
from imgembed.export.siglip_onnx import SiglipExportResult
from imgembed.export.triton_config import (
    DEFAULT_SIGLIP_SETTINGS,
    TritonModelSettings,
    TritonRepositorySettings,
)
from imgembed.export.triton_repository import export_triton_from_onnx
from imgembed.export.triton_siglip import (
    SiglipTritonResult,
    export_siglip_triton_from_onnx,
    siglip_names,
)

D = TINY_FIXRES.embedding_dim


@pytest.fixture(scope="module")
def variants(
    siglip_export: SiglipExportResult, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, SiglipTritonResult]:
    folder = tmp_path_factory.mktemp("triton_siglip_repository")
    return {
        backend: export_siglip_triton_from_onnx(
            siglip_export.out_dir,
            folder / backend,
            settings=TritonRepositorySettings(backend=backend),  # type: ignore[arg-type]
        )
        for backend in ("onnxruntime", "python")
    }


def _parse(path: Path, model_config: ModuleType) -> Any:
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config.ModelConfig())


def _io(config: Any) -> list[tuple[str, str, list[int]]]:
    """Each input and output as (name, data type without ``TYPE_``, dims)."""
    kind = type(config).DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name["data_type"]
    return [
        (tensor.name, kind.enum_type.values_by_number[tensor.data_type].name[5:], list(tensor.dims))
        for tensor in (*config.input, *config.output)
    ]


def test_configs_parse_and_carry_imgembeds_tensors(
    variants: dict[str, SiglipTritonResult], triton_model_config: ModuleType
) -> None:
    result = variants["onnxruntime"]
    names = result.names
    assert set(result.config_paths) == {
        "siglip", "siglip_text", TINY_FIXRES.name, f"{TINY_FIXRES.name}_text",
        "siglip_preprocess", "siglip_tokenize", "siglip_image_encoder", "siglip_text_encoder",
    }  # fmt: skip
    configs = {
        name: _parse(path, triton_model_config) for name, path in result.config_paths.items()
    }
    for name in (names.image, names.aliases[0]):
        assert configs[name].platform == "ensemble"
        assert configs[name].max_batch_size == 0
        assert _io(configs[name]) == [
            ("image_bytes", "STRING", [-1]),
            ("embeddings", "FP32", [-1, D]),
        ]
        steps = configs[name].ensemble_scheduling.step
        assert [(s.model_name, dict(s.input_map), dict(s.output_map)) for s in steps] == [
            ("siglip_preprocess", {"image_bytes": "image_bytes"}, {"pixel_values": "pixel_values"}),
            (
                "siglip_image_encoder",
                {"pixel_values": "pixel_values"},
                {"embeddings": "embeddings"},
            ),
        ]
    for name in (names.text, names.aliases[1]):
        assert _io(configs[name]) == [("text", "STRING", [-1]), ("embeddings", "FP32", [-1, D])]
        steps = configs[name].ensemble_scheduling.step
        assert [s.model_name for s in steps] == ["siglip_tokenize", "siglip_text_encoder"]
    assert _io(configs["siglip_preprocess"]) == [
        ("image_bytes", "STRING", [-1]),
        ("pixel_values", "FP32", [-1, 3, 224, 224]),
    ]
    assert _io(configs["siglip_tokenize"]) == [
        ("text", "STRING", [-1]),
        ("input_ids", "INT64", [-1, 64]),
    ]
    for name in ("siglip_preprocess", "siglip_tokenize"):
        assert configs[name].backend == "python"
        assert configs[name].max_batch_size == 0
        assert configs[name].parameters["imgembed_step"].string_value == name
    image, text = configs["siglip_image_encoder"], configs["siglip_text_encoder"]
    assert _io(image) == [("pixel_values", "FP32", [3, 224, 224]), ("embeddings", "FP32", [D])]
    assert _io(text) == [("input_ids", "INT64", [64]), ("embeddings", "FP32", [D])]
    for encoder in (image, text):
        assert encoder.backend == "onnxruntime"
        assert encoder.default_model_filename == "model.onnx"
        assert encoder.max_batch_size == DEFAULT_SIGLIP_SETTINGS.max_batch_size
        assert list(encoder.dynamic_batching.preferred_batch_size) == [8, 16, 32]
        assert encoder.parameters["imgembed_model"].string_value == TINY_FIXRES.name


def test_python_variant_differs_only_in_the_encoders_backend_and_files(
    variants: dict[str, SiglipTritonResult], triton_model_config: ModuleType
) -> None:
    python, onnxruntime = variants["python"], variants["onnxruntime"]
    encoders = {python.names.image_encoder, python.names.text_encoder}
    for name, path in python.config_paths.items():
        ours = _parse(path, triton_model_config)
        theirs = _parse(onnxruntime.config_paths[name], triton_model_config)
        if name in encoders:
            assert (ours.backend, ours.default_model_filename) == ("python", "")
            ours.backend, ours.default_model_filename = (
                theirs.backend,
                theirs.default_model_filename,
            )
            version = python.out_dir / name / "1"
            assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "model.py"]
            assert sorted(p.name for p in (onnxruntime.out_dir / name / "1").iterdir()) == [
                "model.onnx"
            ]
        assert ours == theirs, name
    tokenize = python.out_dir / "siglip_tokenize" / "1"
    assert sorted(p.name for p in tokenize.iterdir()) == [
        "model.py", "siglip-preprocess.json", "tokenizer.json",
    ]  # fmt: skip
    for ensemble in ("siglip", "siglip_text"):  # Triton needs the (empty) version folder
        assert list((python.out_dir / ensemble / "1").iterdir()) == []


def test_a_full_repository_holds_sam2_and_siglip(
    onnx_export: ExportResult, siglip_export: SiglipExportResult, tmp_path: Path
) -> None:
    settings = TritonRepositorySettings(backend="python")
    result = export_triton_from_onnx(
        onnx_export.out_dir, tmp_path / "repo", settings=settings, siglip_dir=siglip_export.out_dir
    )
    names = siglip_names(settings, TINY_FIXRES.name)
    assert set(result.config_paths) == {"sam2_encoder", "sam2_decoder", *names.all()}
    assert all(path.is_file() for path in result.config_paths.values())
    assert set(result.model_paths) == {
        "sam2_encoder", "sam2_decoder", names.image_encoder, names.text_encoder,
    }  # fmt: skip
    assert set(result.script_paths) == {
        "sam2_encoder", "sam2_decoder", names.image_encoder, names.text_encoder,
        names.preprocess, names.tokenize,
    }  # fmt: skip
    metadata = json.loads((tmp_path / "repo" / "imgembed-export.json").read_text(encoding="utf-8"))
    assert metadata == result.metadata
    assert metadata["siglip"]["model_id"] == TINY_FIXRES.name
    assert metadata["siglip"]["models"]["image"] == "siglip"
    assert metadata["siglip"]["preprocessing"] == siglip_export.metadata["preprocessing"]
    assert metadata["triton"]["siglip"]["max_batch_size"] == 32
    sam2_only = export_triton_from_onnx(onnx_export.out_dir, tmp_path / "sam2", settings=settings)
    assert "siglip" not in sam2_only.metadata
    assert not (tmp_path / "sam2" / "siglip").exists()


def test_tensorrt_block_covers_the_encoders_shapes(
    siglip_export: SiglipExportResult, tmp_path: Path, triton_model_config: ModuleType
) -> None:
    settings = TritonRepositorySettings(
        siglip=TritonModelSettings(
            max_batch_size=16, preferred_batch_sizes=(4,), tensorrt_fp16=True
        )
    )
    result = export_siglip_triton_from_onnx(siglip_export.out_dir, tmp_path, settings=settings)
    image = _parse(result.config_paths["siglip_image_encoder"], triton_model_config)
    (accelerator,) = image.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["trt_profile_min_shapes"] == "pixel_values:1x3x224x224"
    assert accelerator.parameters["trt_profile_opt_shapes"] == "pixel_values:4x3x224x224"
    assert accelerator.parameters["trt_profile_max_shapes"] == "pixel_values:16x3x224x224"
    text = _parse(result.config_paths["siglip_text_encoder"], triton_model_config)
    (accelerator,) = text.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.parameters["trt_profile_max_shapes"] == "input_ids:16x64"
    step = _parse(result.config_paths["siglip_preprocess"], triton_model_config)
    assert not step.HasField("optimization")


@pytest.mark.parametrize(
    ("settings", "field", "phrase"),
    [
        (
            TritonRepositorySettings(encoder_name="siglip_text"),
            "siglip_name",
            "several models named",
        ),
        (
            TritonRepositorySettings(siglip=TritonModelSettings(max_batch_size=0)),
            "siglip.max_batch_size",
            "must be 1 or more",
        ),
        (TritonRepositorySettings(siglip_name="a/b"), "siglip_name", "cannot be a folder name"),
        (
            TritonRepositorySettings(
                backend="python", siglip=TritonModelSettings(max_batch_size=4, tensorrt_fp16=True)
            ),
            "siglip.tensorrt_fp16",
            "TensorRT with the python backend",
        ),
    ],
    ids=["name-collision", "unbatched-encoders", "bad-name", "tensorrt-python"],
)
def test_settings_triton_would_refuse_are_refused_before_writing(
    siglip_export: SiglipExportResult,
    tmp_path: Path,
    settings: TritonRepositorySettings,
    field: str,
    phrase: str,
) -> None:
    with pytest.raises(InvalidInputError, match=phrase) as caught:
        export_siglip_triton_from_onnx(siglip_export.out_dir, tmp_path / "repo", settings=settings)
    assert caught.value.field == field
    assert not (tmp_path / "repo").exists()


def test_existing_files_are_kept_unless_overwrite(
    siglip_export: SiglipExportResult, tmp_path: Path
) -> None:
    export_siglip_triton_from_onnx(siglip_export.out_dir, tmp_path)
    config = tmp_path / "siglip" / "config.pbtxt"
    config.write_text("kept", encoding="utf-8")
    with pytest.raises(ConflictError, match=r"siglip/config\.pbtxt"):
        export_siglip_triton_from_onnx(siglip_export.out_dir, tmp_path)
    assert config.read_text(encoding="utf-8") == "kept"
    export_siglip_triton_from_onnx(siglip_export.out_dir, tmp_path, overwrite=True)
    assert config.read_text(encoding="utf-8").startswith('name: "siglip"')


def test_command_line_passes_the_siglip_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[dict[str, Any]] = []

    def fake_export(model: str, weights: str | None, out: str, **options: Any) -> Any:
        calls.append({"model": model, "weights": weights, "out": out, **options})
        return SimpleNamespace(out_dir=Path(out), config_paths={})

    monkeypatch.setattr(triton_repository, "export_triton", fake_export)
    out = str(tmp_path / "repo")
    argv = ["export", "triton", "--weights", "dummy", "--out", out, "--backend", "python"]
    argv += ["--siglip", "siglip2-base-patch16-224", "--siglip-weights", "dummy"]
    assert main([*argv, "--siglip-max-batch-size", "16", "--max-queue-delay-us", "500"]) == 0
    (call,) = calls
    assert call["siglip_model"] == "siglip2-base-patch16-224"
    assert call["siglip_weights"] == "dummy"
    settings: TritonRepositorySettings = call["settings"]
    assert settings.backend == "python"
    assert settings.siglip.max_batch_size == 16
    assert settings.siglip.preferred_batch_sizes == (8, 16)
    assert settings.siglip.max_queue_delay_microseconds == 500
    assert main(["export", "triton", "--weights", "dummy", "--out", out]) == 0
    assert calls[1]["siglip_model"] is None
    capsys.readouterr()
    assert main(["export", "triton", "--out", out, "--siglip-weights", "dummy"]) != 0
    assert "--siglip-weights needs --siglip MODEL" in capsys.readouterr().err
    assert len(calls) == 2
