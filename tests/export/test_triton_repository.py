"""The Triton model repository: every ``config.pbtxt`` parsed with Triton's own protobuf schema,
checked with the rules Triton applies when it loads an ONNX model, and its models run on ONNX
Runtime with the shapes the config declares.

No Triton server runs here (no container, no GPU); the load-time rules are re-stated from Triton's
sources: ``ValidateModelConfig`` / ``ValidateIOShape`` in triton-inference-server/core
``src/model_config_utils.cc`` and ``ValidateInputs`` / ``ValidateOutputs`` /
``CompareDimsSupported`` in triton-inference-server/onnxruntime_backend ``src/onnxruntime.cc`` and
``src/onnxruntime_utils.cc``.
"""

from __future__ import annotations

import filecmp
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from imgembed.errors import InvalidInputError, UnknownModelError
from imgembed.export.onnx_export import ExportResult
from imgembed.export.triton_config import TritonModelSettings, TritonRepositorySettings
from imgembed.export.triton_repository import (
    TritonExportResult,
    export_triton,
    export_triton_from_onnx,
)
from imgembed.models.sam2 import Sam2Features

TUNED = TritonRepositorySettings(
    encoder=TritonModelSettings(
        max_batch_size=2,
        preferred_batch_sizes=(1, 2),
        max_queue_delay_microseconds=500,
        instance_count=2,
        instance_kind="gpu",
        tensorrt_fp16=True,
    ),
    decoder=TritonModelSettings(
        max_batch_size=4,
        preferred_batch_sizes=(2, 4),
        max_queue_delay_microseconds=100,
        instance_count=3,
        instance_kind="cpu",
    ),
    encoder_name="sam2.1-hiera-tiny_encoder",
    decoder_name="sam2.1-hiera-tiny_decoder",
)
"""Every knob turned: Triton batching on both models, TensorRT on the encoder, other names."""


@pytest.fixture(scope="module")
def repositories(
    onnx_export: ExportResult, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, TritonExportResult]:
    folder = tmp_path_factory.mktemp("triton")
    return {
        "default": export_triton_from_onnx(onnx_export.out_dir, folder / "default"),
        "tuned": export_triton_from_onnx(onnx_export.out_dir, folder / "tuned", settings=TUNED),
    }


def _parse(path: Path, model_config: ModuleType) -> Any:
    """The file parsed strictly into Triton's ``inference.ModelConfig`` (unknown fields fail)."""
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config.ModelConfig())


def _role(name: str) -> str:
    return "encoder" if name.endswith("encoder") else "decoder"


def test_layout(repositories: dict[str, TritonExportResult], onnx_export: ExportResult) -> None:
    for repository in repositories.values():
        top = sorted(path.name for path in repository.out_dir.iterdir())
        assert top == sorted([*repository.model_dirs, "imgembed-export.json"])
        for name, model_dir in repository.model_dirs.items():
            assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt"]
            assert [p.name for p in (model_dir / "1").iterdir()] == ["model.onnx"]
            source = onnx_export.files[_role(name)]
            same_file = filecmp.cmp(repository.model_paths[name], source, shallow=False)
            # The unbatched decoder alone gets zero defaults for mask_input and has_mask_input
            # written in (test_configs_parse_with_tritons_schema); the rest are the export's graphs.
            assert same_file == (name != "sam2_decoder")


def test_configs_parse_with_tritons_schema(
    repositories: dict[str, TritonExportResult], triton_model_config: ModuleType
) -> None:
    default = repositories["default"]
    encoder = _parse(default.config_paths["sam2_encoder"], triton_model_config)
    assert encoder.name == "sam2_encoder"
    assert encoder.backend == "onnxruntime"
    assert encoder.max_batch_size == 8
    assert [(i.name, i.data_type, list(i.dims)) for i in encoder.input] == [
        ("image", triton_model_config.TYPE_FP32, [3, 1024, 1024])
    ]
    assert [(o.name, list(o.dims)) for o in encoder.output] == [
        ("high_res_feats_0", [32, 256, 256]),
        ("high_res_feats_1", [64, 128, 128]),
        ("image_embed", [256, 64, 64]),
    ]
    assert list(encoder.dynamic_batching.preferred_batch_size) == [4, 8]
    assert encoder.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.count, g.kind) for g in encoder.instance_group] == [
        (1, triton_model_config.ModelInstanceGroup.KIND_AUTO)
    ]
    assert not encoder.HasField("optimization")
    assert encoder.parameters["imgembed_model"].string_value == "sam2.1-hiera-tiny"

    decoder = _parse(default.config_paths["sam2_decoder"], triton_model_config)
    assert decoder.max_batch_size == 0
    assert not decoder.HasField("dynamic_batching")
    assert [(i.name, list(i.dims), i.optional) for i in decoder.input] == [
        ("image_embed", [-1, 256, 64, 64], False),
        ("high_res_feats_0", [-1, 32, 256, 256], False),
        ("high_res_feats_1", [-1, 64, 128, 128], False),
        ("point_coords", [-1, -1, 2], False),
        ("point_labels", [-1, -1], False),
        ("mask_input", [-1, 1, 256, 256], True),
        ("has_mask_input", [-1], True),
    ]
    assert [(o.name, list(o.dims)) for o in decoder.output] == [
        ("masks", [-1, 3, 256, 256]),
        ("iou_predictions", [-1, 3]),
    ]


def test_tuned_configs(
    repositories: dict[str, TritonExportResult], triton_model_config: ModuleType
) -> None:
    tuned = repositories["tuned"]
    encoder = _parse(tuned.config_paths["sam2.1-hiera-tiny_encoder"], triton_model_config)
    assert encoder.name == "sam2.1-hiera-tiny_encoder"
    assert encoder.max_batch_size == 2
    assert list(encoder.dynamic_batching.preferred_batch_size) == [1, 2]
    assert encoder.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in encoder.instance_group] == [
        (2, triton_model_config.ModelInstanceGroup.KIND_GPU)
    ]
    (accelerator,) = encoder.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert dict(accelerator.parameters) == {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(1 << 30),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": "/tmp/imgembed-tensorrt/sam2.1-hiera-tiny_encoder",
        "trt_profile_min_shapes": "image:1x3x1024x1024",
        "trt_profile_opt_shapes": "image:2x3x1024x1024",
        "trt_profile_max_shapes": "image:2x3x1024x1024",
    }

    decoder = _parse(tuned.config_paths["sam2.1-hiera-tiny_decoder"], triton_model_config)
    assert decoder.max_batch_size == 4
    assert list(decoder.dynamic_batching.preferred_batch_size) == [2, 4]
    assert [(g.count, g.kind) for g in decoder.instance_group] == [
        (3, triton_model_config.ModelInstanceGroup.KIND_CPU)
    ]
    inputs = {i.name: i for i in decoder.input}
    assert list(inputs["point_coords"].dims) == [-1, 2]
    assert list(inputs["has_mask_input"].dims) == [1]
    assert inputs["has_mask_input"].HasField("reshape")
    assert list(inputs["has_mask_input"].reshape.shape) == []
    assert not any(i.optional for i in decoder.input), "Triton refuses optional batched inputs"
    # ... and counts an input with a default as not provided, so the graph has none.
    session = ort.InferenceSession(
        str(tuned.model_paths["sam2.1-hiera-tiny_decoder"]), providers=["CPUExecutionProvider"]
    )
    assert session.get_overridable_initializers() == []
    assert len(session.get_inputs()) == 7


def _model_shape(shape: list[Any]) -> list[int]:
    """An ONNX Runtime shape as Triton's backend reads it: symbolic axes are -1."""
    return [size if isinstance(size, int) else -1 for size in shape]


def _compare_dims(model_shape: list[int], dims: list[int], max_batch_size: int) -> str | None:
    """``CompareDimsSupported`` (not exact): the reason Triton refuses, or ``None``."""
    if max_batch_size > 0:
        if not model_shape or model_shape[0] != -1:
            return f"batching needs a first model dim of -1, model has {model_shape}"
        dims = [-1, *dims]
    if len(model_shape) != len(dims):
        return f"model has {len(model_shape)} dims {model_shape}, config {dims}"
    if any(m != -1 and m != d for m, d in zip(model_shape, dims, strict=True)):
        return f"model dims {model_shape} differ from config dims {dims}"
    return None


def triton_load_errors(
    config: Any, session: ort.InferenceSession, model_config: ModuleType
) -> list[str]:
    """What Triton would refuse when loading ``config`` for the ONNX model in ``session``."""
    errors = []
    if not config.name:
        errors.append("no name")
    if config.max_batch_size < 0:
        errors.append("negative max_batch_size")
    if config.HasField("dynamic_batching"):
        for size in config.dynamic_batching.preferred_batch_size:
            if size <= 0 or size > config.max_batch_size:
                errors.append(f"preferred batch size {size} not in 1..{config.max_batch_size}")
    for io in [*config.input, *config.output]:
        if io.data_type == model_config.TYPE_INVALID or not io.dims:
            errors.append(f"{io.name}: no data type or no dims")
        if any(dim < 1 and dim != -1 for dim in io.dims):
            errors.append(f"{io.name}: dims {list(io.dims)}")
        if io.HasField("reshape") and not io.reshape.shape and config.max_batch_size == 0:
            errors.append(f"{io.name}: empty reshape in a non-batching model")
    required = {i.name: i for i in session.get_inputs()}
    overridable = {i.name: i for i in session.get_overridable_initializers()}
    if len(required) != sum(not io.optional for io in config.input):
        errors.append(f"config expects {len(config.input)} inputs, model provides {len(required)}")
    model_inputs = {**required, **overridable}
    for io in config.input:
        if io.optional and config.max_batch_size != 0:
            errors.append(f"{io.name}: optional input in a batching model")
        errors += _io_errors(io, model_inputs, config.max_batch_size)
    model_outputs = {o.name: o for o in session.get_outputs()}
    for io in config.output:
        errors += _io_errors(io, model_outputs, config.max_batch_size)
    return errors


def _io_errors(io: Any, model_tensors: dict[str, Any], max_batch_size: int) -> list[str]:
    if io.name not in model_tensors:
        return [f"unexpected {io.name!r}, model has {sorted(model_tensors)}"]
    tensor = model_tensors[io.name]
    errors = []
    if tensor.type != "tensor(float)" or io.data_type != 11:  # TYPE_FP32
        errors.append(f"{io.name}: model {tensor.type}, config data type {io.data_type}")
    dims = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
    problem = _compare_dims(_model_shape(tensor.shape), dims, max_batch_size)
    if problem:
        errors.append(f"{io.name}: {problem}")
    return errors


def test_configs_pass_tritons_load_checks(
    repositories: dict[str, TritonExportResult], triton_model_config: ModuleType
) -> None:
    for repository in repositories.values():
        for name, path in repository.config_paths.items():
            config = _parse(path, triton_model_config)
            assert config.name == name, "Triton requires the name to match the folder"
            session = ort.InferenceSession(
                str(repository.model_paths[name]), providers=["CPUExecutionProvider"]
            )
            errors = triton_load_errors(config, session, triton_model_config)
            assert errors == [], f"{path}: {errors}"


def test_the_load_checks_catch_mismatches(
    repositories: dict[str, TritonExportResult],
    triton_model_config: ModuleType,
) -> None:
    """The re-stated rules can fail: configs bent one field at a time are refused."""
    path = repositories["default"].config_paths["sam2_decoder"]
    decoder = ort.InferenceSession(
        str(repositories["default"].model_paths["sam2_decoder"]), providers=["CPUExecutionProvider"]
    )
    assert triton_load_errors(_parse(path, triton_model_config), decoder, triton_model_config) == []

    renamed = _parse(path, triton_model_config)
    renamed.input[3].name = "points"
    wrong_dims = _parse(path, triton_model_config)
    wrong_dims.input[0].dims[1] = 128
    batching = _parse(path, triton_model_config)
    batching.max_batch_size = 4
    required = _parse(path, triton_model_config)
    required.input[5].optional = False
    for bent in (renamed, wrong_dims, batching, required):
        assert triton_load_errors(bent, decoder, triton_model_config) != []


PROMPTS = 3
POINTS = 4


def _request(config: Any, features: Sam2Features, include_optional: bool) -> dict[str, np.ndarray]:
    """Inputs shaped as the config declares, as Triton hands them to the model (batch axis
    prepended, reshape applied).

    Unbatched (``max_batch_size`` 0): one image's features (batch 1) for ``PROMPTS`` prompts of
    ``POINTS`` points, mask inputs per prompt. Batched: ``PROMPTS`` requests batched together,
    each with its own copy of the features.
    """
    batched = config.max_batch_size > 0
    dynamic_sizes = {  # values for the -1 axes of each input, in order
        "image_embed": [1],
        "high_res_feats_0": [1],
        "high_res_feats_1": [1],
        "point_coords": [PROMPTS, POINTS],
        "point_labels": [PROMPTS, POINTS],
        "mask_input": [PROMPTS],
        "has_mask_input": [PROMPTS],
    }
    if batched:  # the batch axis is not in dims; only num_points stays -1
        dynamic_sizes = {name: sizes[1:] for name, sizes in dynamic_sizes.items()}
    rng = np.random.default_rng(0)
    request = {}
    for io in config.input:
        if io.optional and not include_optional:
            continue
        declared = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
        sizes = iter(dynamic_sizes[io.name])
        shape = [PROMPTS] * batched + [next(sizes) if size == -1 else size for size in declared]
        if io.name in ("image_embed", "high_res_feats_0", "high_res_feats_1"):
            value = getattr(features, io.name).numpy()  # [1,C,H,W]
            request[io.name] = np.ascontiguousarray(np.broadcast_to(value, shape))
        elif io.name == "point_coords":
            request[io.name] = rng.uniform(0, 1024, shape).astype(np.float32)
        elif io.name == "point_labels":
            request[io.name] = rng.choice([-1.0, 0.0, 1.0], shape).astype(np.float32)
        elif io.name == "has_mask_input":
            request[io.name] = np.ones(shape, np.float32)
        else:
            request[io.name] = rng.standard_normal(shape, dtype=np.float32)
    return request


@pytest.mark.parametrize("which", ["default", "tuned"])
def test_decoder_runs_with_the_declared_shapes(
    which: str,
    repositories: dict[str, TritonExportResult],
    triton_model_config: ModuleType,
    torch_features: Sam2Features,
) -> None:
    repository = repositories[which]
    name = next(name for name in repository.config_paths if name.endswith("decoder"))
    config = _parse(repository.config_paths[name], triton_model_config)
    session = ort.InferenceSession(
        str(repository.model_paths[name]), providers=["CPUExecutionProvider"]
    )
    batch = [PROMPTS] if config.max_batch_size else []
    for include_optional in (True, False) if config.max_batch_size == 0 else (True,):
        request = _request(config, torch_features, include_optional)
        outputs = session.run([o.name for o in config.output], request)
        for io, value in zip(config.output, outputs, strict=True):
            expected = batch + [PROMPTS if size == -1 else size for size in io.dims]
            assert list(value.shape) == expected
            assert np.isfinite(value).all()


def test_encoder_runs_with_the_declared_shapes(
    repositories: dict[str, TritonExportResult], triton_model_config: ModuleType
) -> None:
    """One image (batch 1 is inside every declared range; larger batches are in the parity
    tests, with the same graph file)."""
    repository = repositories["tuned"]
    name = "sam2.1-hiera-tiny_encoder"
    config = _parse(repository.config_paths[name], triton_model_config)
    session = ort.InferenceSession(
        str(repository.model_paths[name]), providers=["CPUExecutionProvider"]
    )
    (image,) = config.input
    pixels = np.random.default_rng(0).standard_normal([1, *image.dims], dtype=np.float32)
    outputs = session.run([o.name for o in config.output], {image.name: pixels})
    for io, value in zip(config.output, outputs, strict=True):
        assert list(value.shape) == [1, *io.dims]


def test_metadata_records_the_settings(repositories: dict[str, TritonExportResult]) -> None:
    tuned = repositories["tuned"]
    metadata = json.loads((tuned.out_dir / "imgembed-export.json").read_text(encoding="utf-8"))
    assert metadata == tuned.metadata
    assert metadata["model_id"] == "sam2.1-hiera-tiny"
    assert metadata["triton"]["encoder"]["max_batch_size"] == 2
    assert metadata["triton"]["encoder"]["tensorrt_fp16"] is True
    assert metadata["graphs"]["encoder"]["file"] == "sam2.1-hiera-tiny_encoder/1/model.onnx"
    assert set(metadata["graphs"]) == {"encoder", "decoder"}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            TritonRepositorySettings(
                encoder=TritonModelSettings(max_batch_size=4, preferred_batch_sizes=(8,))
            ),
            r"preferred batch sizes \[8\] are outside 1..4",
        ),
        (
            TritonRepositorySettings(
                decoder=TritonModelSettings(max_batch_size=0, max_queue_delay_microseconds=100)
            ),
            "dynamic batching needs max_batch_size > 0",
        ),
        (
            TritonRepositorySettings(
                encoder=TritonModelSettings(
                    max_batch_size=4, instance_kind="cpu", tensorrt_fp16=True
                )
            ),
            "TensorRT on CPU instances",
        ),
        (
            TritonRepositorySettings(
                encoder=TritonModelSettings(max_batch_size=4, instance_count=0)
            ),
            "instance_count must be 1 or more",
        ),
        (TritonRepositorySettings(encoder_name="a", decoder_name="a"), "both named 'a'"),
        (TritonRepositorySettings(encoder_name="models/sam2"), "cannot be a folder name"),
        (
            TritonRepositorySettings(encoder=TritonModelSettings(max_batch_size=-1)),
            "max_batch_size must be 0",
        ),
    ],
)
def test_settings_triton_would_refuse_are_refused(
    settings: TritonRepositorySettings, message: str, onnx_export: ExportResult, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        export_triton_from_onnx(onnx_export.out_dir, tmp_path / "repo", settings=settings)
    assert not (tmp_path / "repo").exists()


def test_export_triton_refuses_unknown_models_and_unwritable_paths(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="Unknown SAM 2 model 'sam2-hiera-giant'"):
        export_triton("sam2-hiera-giant", "dummy", tmp_path / "repo")
    (tmp_path / "file").write_text("", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"Cannot export to .*it is a file"):
        export_triton("sam2.1-hiera-tiny", "dummy", tmp_path / "file")
    with pytest.raises(InvalidInputError, match="is not an imgembed ONNX export"):
        export_triton_from_onnx(tmp_path, tmp_path / "repo")
