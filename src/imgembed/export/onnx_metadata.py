"""The ``imgembed-export.json`` file: what an ONNX export folder holds and how to read it.

It records the model and weights, the opset and precision, the input size and normalisation, the
coordinate convention of the prompts and masks, and each graph's file, size, inputs and outputs as
written (read back from the file, not copied from a table).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import imgembed
from imgembed.errors import InvalidInputError
from imgembed.export.onnx_graph_check import check_graph
from imgembed.export.onnx_precision import Precision
from imgembed.export.sam2_io import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    SINGLE_MASK_DECODER_OUTPUTS,
    GraphTensor,
)
from imgembed.models.sam2 import FEATURE_STRIDE, IMAGENET_MEAN, IMAGENET_STD, SAM2_INPUT_SIZE
from imgembed.models.sam2_decoder import LOW_RES_MASK_SIZE
from imgembed.models.sam2_loading import LoadedSam2

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
SINGLE_MASK_DECODER_FILE = "decoder_single_mask.onnx"
METADATA_FILE = "imgembed-export.json"
EXPORT_FORMAT = "imgembed-sam2-onnx"
FORMAT_VERSION = 1
GRAPHS: dict[str, tuple[str, tuple[GraphTensor, ...], tuple[GraphTensor, ...]]] = {
    "encoder": (ENCODER_FILE, ENCODER_INPUTS, ENCODER_OUTPUTS),
    "decoder": (DECODER_FILE, DECODER_INPUTS, DECODER_OUTPUTS),
    "decoder_single_mask": (SINGLE_MASK_DECODER_FILE, DECODER_INPUTS, SINGLE_MASK_DECODER_OUTPUTS),
}
"""Role to file name, inputs and outputs of every graph an export may write."""

COORDINATES: dict[str, Any] = {
    "frame": (
        f"the {SAM2_INPUT_SIZE}x{SAM2_INPUT_SIZE} model input; (0, 0) is the top-left corner of "
        f"the top-left pixel, ({SAM2_INPUT_SIZE}, {SAM2_INPUT_SIZE}) the bottom-right corner"
    ),
    "resize_mode": "stretch",
    "to_input_frame": "x' = x * 1024 / W; y' = y * 1024 / H (x, y in pixels of the W x H image)",
    "from_input_frame": "x = x' * W / 1024; y = y' * H / 1024",
    "point_coords": (
        "(x', y') in the input frame, float32 [B,N,2]; the decoder adds the half-pixel offset "
        "and appends one padding point itself"
    ),
    "point_labels": {
        "-1": "padding (not a point)",
        "0": "background",
        "1": "foreground",
        "2": "box top-left corner",
        "3": "box bottom-right corner",
    },
    "boxes": "two points: (x0', y0') labelled 2 and (x1', y1') labelled 3",
    "padding": "pad prompts with fewer points with any coordinates labelled -1",
    "masks": (
        f"{LOW_RES_MASK_SIZE}x{LOW_RES_MASK_SIZE} logits over the input frame (one cell is 4x4 "
        "input pixels), clamped to [-32, 32]; resize bilinearly (align_corners=False) to H x W "
        "and threshold at 0"
    ),
    "letterbox": (
        "for features of a letterboxed image use the mapping in the embed response's "
        "meta.coordinate_transform (x' = x * scale.w + pad[1], y' = y * scale.h + pad[0])"
    ),
}


@dataclass(frozen=True)
class ExportResult:
    """What an ONNX export wrote.

    Attributes:
        out_dir: The folder holding the files.
        precision: ``fp32``, ``fp16`` or ``int8``.
        files: Graph role (``encoder``, ``decoder``, ``decoder_single_mask``) to its file.
        metadata_path: The ``imgembed-export.json`` file.
        metadata: Its contents.
    """

    out_dir: Path
    precision: Precision
    files: dict[str, Path]
    metadata_path: Path
    metadata: dict[str, Any]

    @property
    def encoder_path(self) -> Path:
        """``encoder.onnx``."""
        return self.files["encoder"]

    @property
    def decoder_path(self) -> Path:
        """``decoder.onnx`` (three masks per prompt)."""
        return self.files["decoder"]

    @property
    def single_mask_decoder_path(self) -> Path | None:
        """``decoder_single_mask.onnx``, or ``None`` when it was not exported."""
        return self.files.get("decoder_single_mask")


def package_versions() -> dict[str, str]:
    """Versions of the packages that shaped the graphs."""
    versions = {"imgembed": imgembed.__version__, "python": platform.python_version()}
    for package in ("torch", "transformers", "onnx", "onnxscript", "onnxruntime"):
        try:
            versions[package] = package_metadata.version(package)
        except package_metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def graph_entry(role: str, path: Path, *, input_defaults: bool = False) -> dict[str, Any]:
    """The metadata entry of one written graph: file, size and its real signature.

    Args:
        role: Which graph (a key of :data:`GRAPHS`).
        path: The written file, checked against the role's inputs and outputs.
        input_defaults: The graph was written with zero defaults for its ``zero_default`` inputs
            (Triton's unbatched decoder); exported graphs have none.
    """
    _, inputs, outputs = GRAPHS[role]
    signature = check_graph(path, inputs, outputs, input_defaults=input_defaults)
    return {"file": path.name, "bytes": path.stat().st_size, **signature}


def build_metadata(
    loaded: LoadedSam2,
    *,
    opset: int,
    precision: Precision,
    graphs: Mapping[str, Path],
    converted_from: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The contents of ``imgembed-export.json``.

    Args:
        loaded: The exported model.
        opset: ONNX opset of the graphs.
        precision: Precision of the graphs.
        graphs: Graph role to its written file (read back for sizes and signatures).
        converted_from: For a precision variant, what it was converted from.
    """
    variant = loaded.variant
    return {
        "format": EXPORT_FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": variant.name,
        "hub_id": variant.hub_id,
        "meta_config": variant.meta_config,
        "weights": {
            "source": loaded.source,
            "location": loaded.weights_location,
            "untrained": loaded.untrained,
        },
        "opset": opset,
        "precision": precision,
        "converted_from": dict(converted_from) if converted_from else None,
        "input_size": [SAM2_INPUT_SIZE, SAM2_INPUT_SIZE],
        "preprocessing": {
            "color": "RGB",
            "scale": "pixel / 255 to [0, 1]",
            "resize": "stretch to 1024x1024, bilinear with antialias (align_corners=False)",
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "layout": "NCHW float32",
        },
        "feature_strides": {
            "image_embed": FEATURE_STRIDE,
            "high_res_feats_0": 4,
            "high_res_feats_1": 8,
        },
        "coordinates": COORDINATES,
        "graphs": {role: graph_entry(role, path) for role, path in graphs.items()},
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": package_versions(),
    }


def write_metadata(path: Path, contents: Mapping[str, Any]) -> None:
    """Writes ``contents`` as indented JSON."""
    path.write_text(json.dumps(contents, indent=2) + "\n", encoding="utf-8")


def read_export(out_dir: str | os.PathLike[str]) -> ExportResult:
    """Reads an export folder that :func:`export_onnx` or :func:`convert_precision` wrote.

    Raises:
        InvalidInputError: The folder holds no readable ``imgembed-export.json``, or a graph it
            lists is missing.
    """
    folder = Path(out_dir).expanduser().absolute()
    metadata_path = folder / METADATA_FILE
    try:
        contents = json.loads(metadata_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InvalidInputError(
            f"{folder} is not an imgembed ONNX export: cannot read {METADATA_FILE} ({error}). "
            "Export one with `imgembed export onnx --model MODEL --out DIR`.",
            field="onnx_dir",
        ) from error
    if not isinstance(contents, dict) or contents.get("format") != EXPORT_FORMAT:
        raise InvalidInputError(
            f"{metadata_path} is not an imgembed ONNX export description (format "
            f"{EXPORT_FORMAT!r} expected).",
            field="onnx_dir",
        )
    files = {role: folder / entry["file"] for role, entry in contents["graphs"].items()}
    missing = sorted(str(path) for path in files.values() if not path.is_file())
    if missing:
        raise InvalidInputError(
            f"The export in {folder} lists graphs that are missing: {', '.join(missing)}. "
            "Export again.",
            field="onnx_dir",
        )
    return ExportResult(
        out_dir=folder,
        precision=contents["precision"],
        files=files,
        metadata_path=metadata_path,
        metadata=contents,
    )
