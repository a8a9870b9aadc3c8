"""What an ONNX export writes: the graphs' signatures, the metadata file, the smaller variants,
and the refusals of bad input."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from checkpoints import relative_error

from imgembed.errors import ConflictError, InvalidInputError, UnknownModelError
from imgembed.export.onnx_backend import OnnxRuntimeSettings, OnnxSam2Backend
from imgembed.export.onnx_export import (
    DEFAULT_OPSET,
    METADATA_FILE,
    ExportResult,
    convert_precision,
    export_onnx,
    read_export,
)
from imgembed.models.sam2 import Sam2Features
from imgembed.models.sam2_decoder import decode_masks
from imgembed.models.sam2_loading import LoadedSam2
from imgembed.models.sam2_registry import list_variants

logger = logging.getLogger(__name__)

SEED_002_ENCODER = {
    "inputs": [("image", ["batch", 3, 1024, 1024])],
    "outputs": [
        ("high_res_feats_0", ["batch", 32, 256, 256]),
        ("high_res_feats_1", ["batch", 64, 128, 128]),
        ("image_embed", ["batch", 256, 64, 64]),
    ],
}
"""Seed 002's encoder, with the batch axis dynamic."""
SEED_002_DECODER_INPUTS = [
    ("image_embed", ["feature_batch", 256, 64, 64]),
    ("high_res_feats_0", ["feature_batch", 32, 256, 256]),
    ("high_res_feats_1", ["feature_batch", 64, 128, 128]),
    ("point_coords", ["prompt_batch", "num_points", 2]),
    ("point_labels", ["prompt_batch", "num_points"]),
    ("mask_input", ["mask_batch", 1, 256, 256]),
    ("has_mask_input", ["has_mask_batch"]),
]
SEED_002_DECODER_NAMES = [name for name, _ in SEED_002_DECODER_INPUTS]


def _signature(tensors: list[dict]) -> list[tuple[str, list]]:
    return [(tensor["name"], tensor["shape"]) for tensor in tensors]


def _onnx_signature(path: Path) -> dict[str, list[tuple[str, list]]]:
    """Inputs and outputs read straight from the file with ``onnx``, independently of imgembed."""
    graph = onnx.load(str(path)).graph

    def shape(value: onnx.ValueInfoProto) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    for value in [*graph.input, *graph.output]:
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, value.name
    return {
        "inputs": [(value.name, shape(value)) for value in graph.input],
        "outputs": [(value.name, shape(value)) for value in graph.output],
    }


def test_writes_the_files(onnx_export: ExportResult) -> None:
    names = sorted(path.name for path in onnx_export.out_dir.iterdir())
    assert names == [
        "decoder.onnx",
        "decoder_single_mask.onnx",
        "encoder.onnx",
        METADATA_FILE,
    ], "no staging folder or probe file is left behind"


def test_graphs_have_seed_002_names_and_shapes(onnx_export: ExportResult) -> None:
    assert _onnx_signature(onnx_export.encoder_path) == SEED_002_ENCODER
    assert _onnx_signature(onnx_export.decoder_path) == {
        "inputs": SEED_002_DECODER_INPUTS,
        "outputs": [
            ("masks", ["prompt_batch", 3, 256, 256]),
            ("iou_predictions", ["prompt_batch", 3]),
        ],
    }
    assert onnx_export.single_mask_decoder_path is not None
    assert _onnx_signature(onnx_export.single_mask_decoder_path) == {
        "inputs": SEED_002_DECODER_INPUTS,
        "outputs": [
            ("masks", ["prompt_batch", 1, 256, 256]),
            ("iou_predictions", ["prompt_batch", 1]),
        ],
    }


def test_graphs_pass_the_onnx_checker(onnx_export: ExportResult) -> None:
    for path in onnx_export.files.values():
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path), load_external_data=False)
        opsets = {entry.domain: entry.version for entry in model.opset_import}
        assert opsets.get("", opsets.get("ai.onnx")) == DEFAULT_OPSET


def test_metadata(onnx_export: ExportResult, tiny_checkpoint: Path) -> None:
    metadata = json.loads(onnx_export.metadata_path.read_text(encoding="utf-8"))
    assert metadata == onnx_export.metadata
    assert metadata["format"] == "imgembed-sam2-onnx"
    assert metadata["model_id"] == "sam2.1-hiera-tiny"
    assert metadata["hub_id"] == "facebook/sam2.1-hiera-tiny"
    assert metadata["weights"] == {
        "source": "meta_checkpoint",
        "location": str(tiny_checkpoint),
        "untrained": False,
    }
    assert metadata["opset"] == DEFAULT_OPSET
    assert metadata["precision"] == "fp32"
    assert metadata["input_size"] == [1024, 1024]
    assert metadata["preprocessing"]["normalization"] == {
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    assert "stretch" in metadata["preprocessing"]["resize"]
    coordinates = metadata["coordinates"]
    assert coordinates["to_input_frame"] == (
        "x' = x * 1024 / W; y' = y * 1024 / H (x, y in pixels of the W x H image)"
    )
    assert coordinates["point_labels"] == {
        "-1": "padding (not a point)",
        "0": "background",
        "1": "foreground",
        "2": "box top-left corner",
        "3": "box bottom-right corner",
    }
    assert "align_corners=False" in coordinates["masks"]
    for role, path in onnx_export.files.items():
        entry = metadata["graphs"][role]
        assert entry["file"] == path.name
        assert entry["bytes"] == path.stat().st_size
        assert [(t["name"], t["shape"]) for t in entry["inputs"]] == _onnx_signature(path)["inputs"]
    # Exported decoders have no optional inputs: onnxruntime-web refuses a feed for an input that
    # an initializer of its name shadows (issue 13). Only Triton's unbatched decoder gets defaults.
    for role in ("decoder", "decoder_single_mask"):
        optional = {t["name"]: t["optional"] for t in metadata["graphs"][role]["inputs"]}
        assert optional == dict.fromkeys(SEED_002_DECODER_NAMES, False), role
    assert _signature(metadata["graphs"]["encoder"]["outputs"]) == SEED_002_ENCODER["outputs"]
    assert metadata["versions"]["torch"] == package_version("torch")
    assert metadata["versions"]["onnx"] == package_version("onnx")
    assert read_export(onnx_export.out_dir).metadata == metadata


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_smaller_variants_load_and_run(
    request: pytest.FixtureRequest,
    precision: str,
    onnx_export: ExportResult,
    tiny: LoadedSam2,
    image_batch: torch.Tensor,
    torch_features: Sam2Features,
    record_property: pytest.RecordProperty,
) -> None:
    """fp16 and int8 graphs keep float32 I/O, run, shrink the files; their error is reported."""
    variant: ExportResult = request.getfixturevalue(f"{precision}_export")
    assert variant.metadata["precision"] == precision
    assert variant.metadata["converted_from"]["precision"] == "fp32"
    for role, path in variant.files.items():
        assert _onnx_signature(path) == _onnx_signature(onnx_export.files[role])
    size_ratio = variant.encoder_path.stat().st_size / onnx_export.encoder_path.stat().st_size
    assert size_ratio < (0.6 if precision == "fp16" else 0.4)

    backend = OnnxSam2Backend(variant, OnnxRuntimeSettings(provider="cpu"))
    features = backend.encode(image_batch[:1])
    errors = {
        name: relative_error(getattr(features, name), getattr(torch_features, name))
        for name in ("image_embed", "high_res_feats_0", "high_res_feats_1")
    }
    points = torch.tensor([[[512.0, 384.0]], [[120.0, 900.0]]])
    labels = torch.ones(2, 1, dtype=torch.int64)
    no_mask = (torch.zeros(1, 1, 256, 256), torch.zeros(1))
    masks = backend.decode(torch_features, points, labels, *no_mask).masks
    reference = decode_masks(tiny.model, torch_features, points, labels, *no_mask).masks
    agreement = ((masks > 0) == (reference > 0)).double().mean().item()
    record_property(f"{precision}_feature_relative_l2", errors)
    record_property(f"{precision}_mask_agreement", agreement)
    record_property(f"{precision}_encoder_size_ratio", size_ratio)
    logger.warning(
        "%s: encoder %.1f %% of fp32 size; feature relative L2 %s; decoder mask agreement %.4f",
        precision,
        100 * size_ratio,
        {name: f"{error:.2e}" for name, error in errors.items()},
        agreement,
    )
    # Loose sanity bounds only (the numbers are reported, and measured in benchmarks/onnx.py):
    # a broken conversion gives errors near 1 and agreement near chance.
    assert all(np.isfinite(list(errors.values())))
    assert max(errors.values()) < 0.5
    assert agreement > 0.8


def test_convert_refuses_a_converted_source(fp16_export: ExportResult, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="holds a fp16 export; convert from a float32"):
        convert_precision(fp16_export.out_dir, tmp_path / "int8", "int8")


def test_unknown_model_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    with pytest.raises(UnknownModelError, match="Unknown SAM 2 model 'sam3-hiera-huge'") as error:
        export_onnx("sam3-hiera-huge", "dummy", out_dir)
    assert "sam2.1-hiera-tiny" in error.value.message
    assert not out_dir.exists()


@pytest.mark.parametrize(
    "make_path",
    [
        pytest.param(lambda tmp: _a_file(tmp), id="a_file"),
        pytest.param(lambda tmp: _a_file(tmp) / "inside", id="under_a_file"),
        pytest.param(lambda tmp: Path("/proc/imgembed-export-test"), id="cannot_create"),
        pytest.param(lambda tmp: Path("/proc/self/status/inside"), id="under_a_proc_file"),
    ],
)
def test_unwritable_paths_are_refused(make_path: Callable[[Path], Path], tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="Cannot export to") as error:
        export_onnx("sam2.1-hiera-tiny", "dummy", make_path(tmp_path))
    assert error.value.field == "out_dir"


def _a_file(folder: Path) -> Path:
    path = folder / "taken.txt"
    path.write_text("not a folder", encoding="utf-8")
    return path


def test_existing_export_is_not_overwritten_silently(tmp_path: Path) -> None:
    (tmp_path / "encoder.onnx").write_bytes(b"an earlier export")
    with pytest.raises(ConflictError, match=r"already holds encoder\.onnx.*overwrite"):
        export_onnx("sam2.1-hiera-tiny", "dummy", tmp_path)
    assert (tmp_path / "encoder.onnx").read_bytes() == b"an earlier export"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"precision": "int4"}, "Unknown precision 'int4'; expected one of fp32, fp16, int8"),
        ({"opset": 11}, "Opset 11 is too old"),
    ],
)
def test_bad_options_are_refused(options: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=message):
        export_onnx("sam2.1-hiera-tiny", "dummy", tmp_path, **options)


@pytest.mark.parametrize(
    "name",
    [
        spelling
        for variant in list_variants()
        for spelling in (variant.name, variant.hub_id, variant.meta_checkpoint, variant.meta_config)
    ],
)
def test_every_variant_name_is_accepted(name: str, tmp_path: Path) -> None:
    """All eight models (in every spelling) get past the model check; only the tiny one is
    exported end to end here (an export of large takes minutes on 2 cores). The bad precision
    stops the export right after the name was accepted."""
    with pytest.raises(InvalidInputError, match="Unknown precision"):
        export_onnx(name, "dummy", tmp_path, precision="fp64")  # type: ignore[arg-type]


def test_read_export_refuses_other_folders(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="is not an imgembed ONNX export"):
        read_export(tmp_path)
    (tmp_path / METADATA_FILE).write_text('{"format": "something-else"}', encoding="utf-8")
    with pytest.raises(InvalidInputError, match="not an imgembed ONNX export description"):
        read_export(tmp_path)
