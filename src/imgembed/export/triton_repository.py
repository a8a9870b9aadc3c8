"""A Triton model repository for SAM 2: ``tritonserver --model-repository DIR`` serves it as is.

Layout::

    DIR/
      sam2_encoder/config.pbtxt
      sam2_encoder/1/model.onnx       the ONNX encoder (imgembed.export.onnx_export)
      sam2_decoder/config.pbtxt
      sam2_decoder/1/model.onnx       the ONNX decoder (three masks per prompt)
      imgembed-export.json            the export's metadata plus the Triton settings

With ``siglip_model`` the repository also holds a SigLIP 2 model's image and text embeddings
under imgembed's v2 names (``siglip``, ``siglip_text`` and the model's own name):
:mod:`imgembed.export.triton_siglip`.

With ``backend="python"`` each version folder also holds ``model.py``
(:mod:`imgembed.export.triton_python_model`), which Triton's Python backend runs and which runs
``model.onnx`` with ONNX Runtime; the configs say ``backend: "python"`` and are otherwise the same.

Triton reads only the model folders; the JSON at the top is for people and tools. The configs
(:mod:`imgembed.export.triton_config`) match the graphs and imgembed's own v2 models, so a client
written against imgembed's ``/v2`` endpoints runs against this repository unchanged.

Needs the ``onnx`` extra (``pip install 'imgembed[onnx]'``).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from imgembed.export.onnx_export import (
    DEFAULT_OPSET,
    export_loaded_onnx,
    write_with_input_defaults,
)
from imgembed.export.onnx_metadata import (
    GRAPHS,
    METADATA_FILE,
    ExportResult,
    graph_entry,
    read_export,
    write_metadata,
)
from imgembed.export.onnx_precision import Precision
from imgembed.export.output_dir import move_into_place, prepare_output_dir, staging_dir
from imgembed.export.pbtxt import render_pbtxt
from imgembed.export.siglip_onnx import (
    SiglipExportResult,
    export_loaded_siglip_onnx,
    read_siglip_export,
)
from imgembed.export.triton_config import (
    TritonRepositorySettings,
    check_repository_settings,
    model_config,
)
from imgembed.export.triton_siglip import (
    SiglipLayout,
    fill_siglip_models,
    make_version_dirs,
    siglip_layout,
)
from imgembed.models.sam2_loading import load_sam2
from imgembed.models.sam2_registry import resolve_variant
from imgembed.models.siglip_loading import load_siglip
from imgembed.models.siglip_registry import resolve_siglip_variant
from imgembed.models.siglip_variants import SiglipVariant

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.onnx"
PYTHON_MODEL_FILE = "model.py"
MODEL_VERSION = "1"


@dataclass(frozen=True)
class TritonExportResult:
    """What a Triton export wrote.

    Attributes:
        out_dir: The repository folder (pass it to ``tritonserver --model-repository``).
        model_dirs: Model name to its folder.
        config_paths: Model name to its ``config.pbtxt``.
        model_paths: Model name to its ``1/model.onnx``.
        metadata: The contents of ``imgembed-export.json``.
        script_paths: Model name to its ``1/model.py`` (the ``python`` backend only).
    """

    out_dir: Path
    model_dirs: dict[str, Path]
    config_paths: dict[str, Path]
    model_paths: dict[str, Path]
    metadata: dict[str, Any]
    script_paths: dict[str, Path] = field(default_factory=dict)


Role = Literal["encoder", "decoder"]


def _layout(settings: TritonRepositorySettings) -> dict[Role, tuple[str, str]]:
    """Graph role to (model name, relative path of its graph)."""
    return {
        "encoder": (settings.encoder_name, f"{settings.encoder_name}/{MODEL_VERSION}/{MODEL_FILE}"),
        "decoder": (settings.decoder_name, f"{settings.decoder_name}/{MODEL_VERSION}/{MODEL_FILE}"),
    }


def _scripts(settings: TritonRepositorySettings) -> dict[str, str]:
    """Model name to the relative path of its ``model.py``; none for the onnxruntime backend."""
    if settings.backend != "python":
        return {}
    return {
        name: f"{name}/{MODEL_VERSION}/{PYTHON_MODEL_FILE}"
        for name, _ in _layout(settings).values()
    }


def python_model_source() -> str:
    """The text of the Python-backend ``model.py`` (:mod:`~imgembed.export.triton_python_model`)."""
    package = importlib.resources.files("imgembed.export")
    return package.joinpath("triton_python_model.py").read_text(encoding="utf-8")


def _file_names(
    settings: TritonRepositorySettings, siglip: SiglipLayout | None = None
) -> list[str]:
    """Every path, relative to the repository, an export writes."""
    layout = _layout(settings)
    configs = [f"{name}/{CONFIG_FILE}" for name, _ in layout.values()]
    scripts = list(_scripts(settings).values())
    extra = siglip.files() if siglip is not None else []
    return [path for _, path in layout.values()] + scripts + configs + extra + [METADATA_FILE]


def _fill_repository(
    export: ExportResult,
    staging: Path,
    settings: TritonRepositorySettings,
    *,
    move: bool,
    siglip: SiglipExportResult | None = None,
) -> dict[str, Any]:
    """Puts the graphs and writes the configs and metadata into ``staging``.

    Args:
        export: The ONNX export.
        staging: The folder being filled.
        settings: Names and serving settings.
        move: Move the graphs (an export made for this repository) instead of copying them.
        siglip: A SigLIP export whose models join the repository.

    Returns:
        The repository's metadata.
    """
    model_id = str(export.metadata["model_id"])
    graphs = dict(export.metadata["graphs"])
    for role, (name, relative) in _layout(settings).items():
        target = staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        entry = {**graphs[role], "file": relative, "triton_model": name}
        if role == "decoder" and settings.decoder.max_batch_size == 0:
            # Unbatched, Triton lets callers leave mask_input and has_mask_input out (seed 003's
            # clients send neither): the graph gets zero defaults for them. A batching model
            # may have no optional inputs, so it keeps the export's plain graph.
            write_with_input_defaults(export.files[role], target, GRAPHS[role][1])
            entry = {**entry, **graph_entry(role, target, input_defaults=True), "file": relative}
        elif move:
            os.replace(export.files[role], target)
        else:
            shutil.copyfile(export.files[role], target)
        config = render_pbtxt(model_config(role, settings, model_id))
        (staging / name / CONFIG_FILE).write_text(config, encoding="utf-8")
        graphs[role] = entry
    for relative in _scripts(settings).values():
        (staging / relative).write_text(python_model_source(), encoding="utf-8")
    graphs.pop("decoder_single_mask", None)
    metadata = {
        **export.metadata,
        "graphs": graphs,
        "triton": {
            **dataclasses.asdict(settings),
            "configs": {name: f"{name}/{CONFIG_FILE}" for name, _ in _layout(settings).values()},
        },
    }
    if siglip is not None:
        metadata["siglip"] = fill_siglip_models(siglip, staging, settings)
    metadata = json.loads(json.dumps(metadata))  # tuples to lists: what a reader gets back
    write_metadata(staging / METADATA_FILE, metadata)
    return metadata


def _result(
    folder: Path,
    settings: TritonRepositorySettings,
    metadata: dict[str, Any],
    siglip: SiglipLayout | None = None,
) -> TritonExportResult:
    layout = _layout(settings)
    configs = {name: f"{name}/{CONFIG_FILE}" for name, _ in layout.values()}
    graphs = {name: relative for name, relative in layout.values()}
    scripts = _scripts(settings)
    if siglip is not None:
        make_version_dirs(folder, siglip)
        configs, graphs = {**configs, **siglip.configs}, {**graphs, **siglip.graphs}
        scripts = {**scripts, **siglip.scripts}
    return TritonExportResult(
        out_dir=folder,
        model_dirs={name: folder / name for name in configs},
        config_paths={name: folder / relative for name, relative in configs.items()},
        model_paths={name: folder / relative for name, relative in graphs.items()},
        metadata=metadata,
        script_paths={name: folder / relative for name, relative in scripts.items()},
    )


def export_triton_from_onnx(
    onnx_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    settings: TritonRepositorySettings | None = None,
    overwrite: bool = False,
    siglip_dir: str | os.PathLike[str] | None = None,
) -> TritonExportResult:
    """Builds a Triton repository from an existing ONNX export, without tracing again.

    Args:
        onnx_dir: A folder :func:`~imgembed.export.onnx_export.export_onnx` wrote (any precision).
        out_dir: The repository folder; created if missing.
        settings: Model names and serving settings; the defaults batch the encoder.
        overwrite: Replace existing files of the same names.
        siglip_dir: A folder :func:`~imgembed.export.siglip_onnx.export_siglip_onnx` wrote, whose
            models join the repository.

    Returns:
        The written repository.

    Raises:
        InvalidInputError: ``onnx_dir`` is not an export, ``out_dir`` cannot be written, or a
            setting is one Triton would refuse.
        ConflictError: The repository files exist and ``overwrite`` is off.
    """
    settings = settings or TritonRepositorySettings()
    check_repository_settings(settings)
    export = read_export(onnx_dir)
    siglip = read_siglip_export(siglip_dir) if siglip_dir is not None else None
    layout = siglip_layout(settings, siglip.metadata["model_id"]) if siglip else None
    files = _file_names(settings, layout)
    folder = prepare_output_dir(out_dir, files, overwrite=overwrite)
    with staging_dir(folder) as staging:
        metadata = _fill_repository(export, staging, settings, move=False, siglip=siglip)
        move_into_place(staging, folder, files)
    logger.info(
        "Wrote a Triton repository (%s backend) for %s to %s",
        settings.backend,
        export.metadata["model_id"],
        folder,
    )
    return _result(folder, settings, metadata, layout)


def export_triton(
    model_name: str,
    weights: str | None,
    out_dir: str | os.PathLike[str],
    *,
    settings: TritonRepositorySettings | None = None,
    meta_config: str | None = None,
    opset: int = DEFAULT_OPSET,
    precision: Precision = "fp32",
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    hub_cache_dir: str | None = None,
    hub_offline: bool = False,
    hub_endpoint: str | None = None,
    siglip_model: str | SiglipVariant | None = None,
    siglip_weights: str | None = None,
) -> TritonExportResult:
    """Loads a SAM 2 model, exports it to ONNX and writes a Triton model repository.

    Args:
        model_name: Any name :func:`~imgembed.models.sam2_registry.resolve_variant` accepts.
        weights: As :func:`~imgembed.models.sam2_loading.load_sam2` takes them (``"dummy"`` for
            random untrained weights).
        out_dir: The repository folder; created if missing.
        settings: Model names and serving settings (backend, batching, queue delay,
            instances, TensorRT); the defaults batch the encoder and leave the decoder unbatched,
            for Triton's onnxruntime backend.
        meta_config: Meta's config name for a ``.pt`` checkpoint, when it is not implied.
        opset: ONNX opset.
        precision: ``fp32``, ``fp16`` or ``int8`` graphs (the configs' tensors stay FP32).
        device: Where the model is traced.
        overwrite: Replace existing files of the same names.
        hub_cache_dir: Hugging Face cache folder for hub weights.
        hub_offline: Never contact the hub.
        hub_endpoint: Hub address, for mirrors.
        siglip_model: A FixRes SigLIP 2 model whose image and text embeddings join the
            repository (:mod:`~imgembed.export.triton_siglip`); ``None`` for SAM 2 alone.
        siglip_weights: Its weights, as :func:`~imgembed.models.siglip_loading.load_siglip`
            takes them.

    Returns:
        The written repository.

    Raises:
        UnknownModelError: ``model_name`` names no SAM 2 model or ``siglip_model`` no SigLIP 2
            model.
        InvalidInputError: ``out_dir`` cannot be written, or a setting is one Triton would
            refuse, or the opset or precision is not supported.
        ConflictError: The repository files exist and ``overwrite`` is off.
        ModelLoadError: The weights cannot be loaded.
    """
    variant = resolve_variant(model_name)
    settings = settings or TritonRepositorySettings()
    check_repository_settings(settings)
    layout = None
    if siglip_model is not None:
        if not isinstance(siglip_model, SiglipVariant):
            siglip_model = resolve_siglip_variant(siglip_model)
        layout = siglip_layout(settings, siglip_model.name)
    files = _file_names(settings, layout)
    folder = prepare_output_dir(out_dir, files, overwrite=overwrite)
    hub = {"hub_cache_dir": hub_cache_dir, "hub_offline": hub_offline, "hub_endpoint": hub_endpoint}
    loaded = load_sam2(
        variant.name,
        weights,
        meta_config,
        device=torch.device(device),
        **hub,
    )
    siglip_loaded = None
    if isinstance(siglip_model, SiglipVariant):
        siglip_loaded = load_siglip(
            siglip_model, siglip_weights, device=torch.device(device), **hub
        )
    with staging_dir(folder) as staging:
        export = export_loaded_onnx(
            loaded, staging / "onnx", opset=opset, precision=precision, single_mask_decoder=False
        )
        siglip = None
        if siglip_loaded is not None:
            siglip = export_loaded_siglip_onnx(siglip_loaded, staging / "siglip-onnx", opset=opset)
        metadata = _fill_repository(export, staging, settings, move=True, siglip=siglip)
        move_into_place(staging, folder, files)
    logger.info(
        "Wrote a Triton repository (%s backend) for %s to %s",
        settings.backend,
        variant.name,
        folder,
    )
    return _result(folder, settings, metadata, layout)
