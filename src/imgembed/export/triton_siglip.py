"""The SigLIP 2 models of a Triton repository, named and shaped as imgembed's v2 SigLIP models.

imgembed's v2 routes (:mod:`imgembed.server.v2_siglip`) serve ``siglip`` (``image_bytes`` BYTES
``[-1]`` in, ``embeddings`` FP32 ``[-1,D]`` out) and ``siglip_text`` (``text`` BYTES ``[-1]`` in,
the same out), also under the model's own name (``siglip2-base-patch16-224`` and
``siglip2-base-patch16-224_text``). The repository answers to the same four names with the same
tensors, so a ``tritonclient`` program runs against either server unchanged. Each is a Triton
ensemble of two steps::

    siglip       = siglip_preprocess (python: files -> pixel_values [B,3,S,S])
                   -> siglip_image_encoder (model.onnx: -> embeddings [B,D])
    siglip_text  = siglip_tokenize (python: texts -> input_ids INT64 [B,L])
                   -> siglip_text_encoder (model.onnx: -> embeddings [B,D])

The preprocessing steps are always Python-backend models
(:mod:`imgembed.export.triton_siglip_model`: images and texts cannot be decoded inside an ONNX
graph); they take a request's whole batch (``max_batch_size: 0``). The encoders have the
repository's backend (``onnxruntime``, or ``python`` running the same ``model.onnx`` with
:mod:`imgembed.export.triton_python_model`) and Triton's dynamic batcher
(``TritonRepositorySettings.siglip``), which joins the items of concurrent requests into one
forward pass, as imgembed's own batcher does. The ensembles have ``max_batch_size: 0`` so that
their tensors' shapes are imgembed's (``[-1]``, not ``[-1,1]``); a request may carry up to the
encoders' ``max_batch_size`` items.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgembed.errors import InvalidInputError
from imgembed.export.output_dir import move_into_place, prepare_output_dir, staging_dir
from imgembed.export.pbtxt import EnumValue, map_entries, render_pbtxt
from imgembed.export.sam2_io import GraphTensor
from imgembed.export.siglip_onnx import (
    SiglipExportResult,
    SiglipRole,
    graph_tensors,
    read_siglip_export,
)
from imgembed.export.triton_config import (
    TritonRepositorySettings,
    check_repository_settings,
    tensorrt_block,
)
from imgembed.export.triton_siglip_model import SETTINGS_FILE

CONFIG_FILE = "config.pbtxt"
PYTHON_MODEL_FILE = "model.py"
GRAPH_FILE = "model.onnx"
MODEL_VERSION = "1"
_KINDS = {"auto": "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}
_DATA_TYPES = {"FP32": "TYPE_FP32", "INT64": "TYPE_INT64"}


@dataclass(frozen=True)
class SiglipNames:
    """Model names of the SigLIP part of a repository.

    Attributes:
        image: The image ensemble (``siglip``).
        text: The text ensemble (``siglip_text``).
        preprocess: Image files to pixel values.
        tokenize: Texts to token ids.
        image_encoder: Pixel values to embeddings.
        text_encoder: Token ids to embeddings.
        aliases: The model's own name and its ``_text`` name, ensembles like the first two;
            none when ``siglip_model_aliases`` is off.
    """

    image: str
    text: str
    preprocess: str
    tokenize: str
    image_encoder: str
    text_encoder: str
    aliases: tuple[str, ...]

    def all(self) -> list[str]:
        """Every model name, ensembles first."""
        steps = [self.preprocess, self.tokenize, self.image_encoder, self.text_encoder]
        return [self.image, self.text, *self.aliases, *steps]


def siglip_names(settings: TritonRepositorySettings, model_id: str) -> SiglipNames:
    """The names the SigLIP models get from ``settings.siglip_name`` and the model's name."""
    base = settings.siglip_name
    return SiglipNames(
        image=base,
        text=f"{base}_text",
        preprocess=f"{base}_preprocess",
        tokenize=f"{base}_tokenize",
        image_encoder=f"{base}_image_encoder",
        text_encoder=f"{base}_text_encoder",
        aliases=(model_id, f"{model_id}_text") if settings.siglip_model_aliases else (),
    )


def _check_names(names: SiglipNames, settings: TritonRepositorySettings) -> None:
    """Refuses SigLIP names that repeat each other or a SAM 2 model's name."""
    taken = [*names.all(), settings.encoder_name, settings.decoder_name]
    repeated = sorted({name for name in taken if taken.count(name) > 1})
    if repeated:
        raise InvalidInputError(
            f"the repository would hold several models named {repeated}; choose another SigLIP "
            f"name (siglip_name, now {settings.siglip_name!r}) or other SAM 2 model names",
            field="siglip_name",
        )


def _tensor(name: str, data_type: str, dims: list[int]) -> dict[str, Any]:
    return {"name": name, "data_type": EnumValue(data_type), "dims": dims}


def _dims(shape: tuple[int | str, ...]) -> list[int]:
    return [-1 if isinstance(size, str) else size for size in shape]


def _shapes(export: SiglipExportResult) -> dict[str, int]:
    metadata = export.metadata
    return {
        "image_size": int(metadata["preprocessing"]["image"]["image_size"]),
        "text_length": int(metadata["preprocessing"]["text"]["max_length"]),
        "embedding_dim": int(metadata["embedding_dim"]),
    }


def _parameters(model_id: str, step: str | None = None) -> list[dict[str, Any]]:
    values: dict[str, Any] = {"imgembed_model": {"string_value": model_id}}
    if step is not None:
        values["imgembed_step"] = {"string_value": step}
    return map_entries(values)


def encoder_config(
    role: SiglipRole, export: SiglipExportResult, settings: TritonRepositorySettings
) -> dict[str, Any]:
    """The ``config.pbtxt`` message of the image or text encoder: batched by Triton.

    Args:
        role: ``image`` or ``text``.
        export: The SigLIP ONNX export.
        settings: The repository's settings (backend, ``siglip`` batching, TensorRT).

    Returns:
        A message for :func:`~imgembed.export.pbtxt.render_pbtxt`; tensors without the batch
        axis (``pixel_values [3,S,S]`` or ``input_ids [L]``, ``embeddings [D]``).
    """
    model_id = str(export.metadata["model_id"])
    names = siglip_names(settings, model_id)
    name = names.image_encoder if role == "image" else names.text_encoder
    model = settings.siglip
    inputs, output = graph_tensors(role, **_shapes(export))
    onnxruntime = settings.backend == "onnxruntime"
    config: dict[str, Any] = {
        "name": name,
        "backend": settings.backend,
        "max_batch_size": model.max_batch_size,
        "default_model_filename": GRAPH_FILE if onnxruntime else None,
        "input": [_tensor(inputs.name, _DATA_TYPES[inputs.datatype], _dims(inputs.shape[1:]))],
        "output": [_tensor(output.name, "TYPE_FP32", _dims(output.shape[1:]))],
        "dynamic_batching": {
            "preferred_batch_size": list(model.preferred_batch_sizes) or None,
            "max_queue_delay_microseconds": model.max_queue_delay_microseconds,
        },
        "instance_group": [
            {"count": model.instance_count, "kind": EnumValue(_KINDS[model.instance_kind])}
        ],
    }
    if model.tensorrt_fp16:
        profile = (GraphTensor(inputs.name, inputs.shape, "the encoder's input"),)
        config["optimization"] = tensorrt_block(profile, model, settings, name)
    config["parameters"] = _parameters(model_id)
    return config


def step_config(
    role: SiglipRole, export: SiglipExportResult, settings: TritonRepositorySettings
) -> dict[str, Any]:
    """The ``config.pbtxt`` message of ``siglip_preprocess`` (image) or ``siglip_tokenize``
    (text): Python backend, whole request batches, on CPU instances.

    Returns:
        A message whose input is ``image_bytes`` or ``text`` BYTES ``[-1]`` and whose output is
        ``pixel_values FP32 [-1,3,S,S]`` or ``input_ids INT64 [-1,L]``.
    """
    model_id = str(export.metadata["model_id"])
    names = siglip_names(settings, model_id)
    inputs, _ = graph_tensors(role, **_shapes(export))
    source, name, step = (
        ("image_bytes", names.preprocess, "siglip_preprocess")
        if role == "image"
        else ("text", names.tokenize, "siglip_tokenize")
    )
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": 0,
        "input": [_tensor(source, "TYPE_STRING", [-1])],
        "output": [_tensor(inputs.name, _DATA_TYPES[inputs.datatype], _dims(inputs.shape))],
        "instance_group": [
            {"count": settings.siglip.instance_count, "kind": EnumValue("KIND_CPU")}
        ],
        "parameters": _parameters(model_id, step),
    }


def ensemble_config(
    role: SiglipRole, name: str, export: SiglipExportResult, settings: TritonRepositorySettings
) -> dict[str, Any]:
    """The ``config.pbtxt`` message of an ensemble: ``siglip`` / ``siglip_text`` or an alias.

    Args:
        role: ``image`` or ``text``.
        name: The ensemble's name.
        export: The SigLIP ONNX export.
        settings: The repository's settings.

    Returns:
        A message with imgembed's v2 tensors: ``image_bytes`` or ``text`` BYTES ``[-1]`` in,
        ``embeddings FP32 [-1,D]`` out.
    """
    model_id = str(export.metadata["model_id"])
    names = siglip_names(settings, model_id)
    inputs, output = graph_tensors(role, **_shapes(export))
    source, step, encoder = (
        ("image_bytes", names.preprocess, names.image_encoder)
        if role == "image"
        else ("text", names.tokenize, names.text_encoder)
    )
    return {
        "name": name,
        "platform": "ensemble",
        "max_batch_size": 0,
        "input": [_tensor(source, "TYPE_STRING", [-1])],
        "output": [_tensor(output.name, "TYPE_FP32", _dims(output.shape))],
        "ensemble_scheduling": {
            "step": [
                {
                    "model_name": step,
                    "model_version": -1,
                    "input_map": map_entries({source: source}),
                    "output_map": map_entries({inputs.name: inputs.name}),
                },
                {
                    "model_name": encoder,
                    "model_version": -1,
                    "input_map": map_entries({inputs.name: inputs.name}),
                    "output_map": map_entries({output.name: output.name}),
                },
            ]
        },
        "parameters": _parameters(model_id),
    }


def _source(module: str) -> str:
    """The text of one of this package's modules (a ``model.py``)."""
    package = importlib.resources.files("imgembed.export")
    return package.joinpath(f"{module}.py").read_text(encoding="utf-8")


@dataclass(frozen=True)
class SiglipLayout:
    """Where each SigLIP file of a repository goes, relative to the repository.

    Attributes:
        names: The model names.
        configs: Model name to its ``config.pbtxt``.
        graphs: Encoder name to its ``1/model.onnx``.
        scripts: Python-backend model name to its ``1/model.py``.
        extras: The preprocessing steps' settings and the tokenizer.
    """

    names: SiglipNames
    configs: dict[str, str]
    graphs: dict[str, str]
    scripts: dict[str, str]
    extras: list[str]

    def files(self) -> list[str]:
        """Every file the SigLIP part writes."""
        return [
            *self.configs.values(),
            *self.graphs.values(),
            *self.scripts.values(),
            *self.extras,
        ]


def siglip_layout(settings: TritonRepositorySettings, model_id: str) -> SiglipLayout:
    """The files of the SigLIP models for ``settings`` and the model's name."""
    names = siglip_names(settings, model_id)
    _check_names(names, settings)
    version = MODEL_VERSION
    encoders = (names.image_encoder, names.text_encoder)
    steps = (names.preprocess, names.tokenize)
    scripts = {name: f"{name}/{version}/{PYTHON_MODEL_FILE}" for name in steps}
    if settings.backend == "python":
        scripts.update({name: f"{name}/{version}/{PYTHON_MODEL_FILE}" for name in encoders})
    return SiglipLayout(
        names=names,
        configs={name: f"{name}/{CONFIG_FILE}" for name in names.all()},
        graphs={name: f"{name}/{version}/{GRAPH_FILE}" for name in encoders},
        scripts=scripts,
        extras=[
            *(f"{name}/{version}/{SETTINGS_FILE}" for name in steps),
            f"{names.tokenize}/{version}/tokenizer.json",
        ],
    )


def fill_siglip_models(
    export: SiglipExportResult, staging: Path, settings: TritonRepositorySettings
) -> dict[str, Any]:
    """Writes the SigLIP models' files into ``staging`` (a repository being built).

    Args:
        export: The SigLIP ONNX export (copied, not moved).
        staging: The folder being filled.
        settings: The repository's settings.

    Returns:
        The ``siglip`` entry of the repository's metadata: the model, its names, files and the
        export's graphs and preprocessing.
    """
    model_id = str(export.metadata["model_id"])
    layout = siglip_layout(settings, model_id)
    names = layout.names
    messages = {
        names.image: ensemble_config("image", names.image, export, settings),
        names.text: ensemble_config("text", names.text, export, settings),
        **{
            alias: ensemble_config(role, alias, export, settings)
            for role, alias in zip(("image", "text"), names.aliases, strict=False)
        },
        names.preprocess: step_config("image", export, settings),
        names.tokenize: step_config("text", export, settings),
        names.image_encoder: encoder_config("image", export, settings),
        names.text_encoder: encoder_config("text", export, settings),
    }
    for name, relative in layout.configs.items():
        target = staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render_pbtxt(messages[name]), encoding="utf-8")
    sources = {names.image_encoder: export.files["image"], names.text_encoder: export.files["text"]}
    for name, relative in layout.graphs.items():
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sources[name], staging / relative)
    for name, relative in layout.scripts.items():
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        module = "triton_siglip_model" if name in (names.preprocess, names.tokenize) else None
        (staging / relative).write_text(_source(module or "triton_python_model"), "utf-8")
    settings_text = json.dumps(export.metadata["preprocessing"], indent=2) + "\n"
    for name in (names.preprocess, names.tokenize):
        (staging / name / MODEL_VERSION / SETTINGS_FILE).write_text(settings_text, "utf-8")
    shutil.copyfile(
        export.tokenizer_path, staging / names.tokenize / MODEL_VERSION / "tokenizer.json"
    )
    return {
        "model_id": model_id,
        "weights": export.metadata["weights"],
        "embedding_dim": export.metadata["embedding_dim"],
        "models": {
            "image": names.image,
            "text": names.text,
            "aliases": list(names.aliases),
            "preprocess": names.preprocess,
            "tokenize": names.tokenize,
            "image_encoder": names.image_encoder,
            "text_encoder": names.text_encoder,
        },
        "configs": layout.configs,
        "graphs": export.metadata["graphs"],
        "preprocessing": export.metadata["preprocessing"],
    }


def make_version_dirs(folder: Path, layout: SiglipLayout) -> None:
    """Creates the ensembles' empty version folders, which Triton requires."""
    names = layout.names
    for name in (names.image, names.text, *names.aliases):
        (folder / name / MODEL_VERSION).mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class SiglipTritonResult:
    """What :func:`export_siglip_triton_from_onnx` wrote.

    Attributes:
        out_dir: The repository folder.
        names: The model names.
        config_paths: Model name to its ``config.pbtxt``.
        metadata: The ``siglip`` metadata entry.
    """

    out_dir: Path
    names: SiglipNames
    config_paths: dict[str, Path]
    metadata: dict[str, Any]


def export_siglip_triton_from_onnx(
    siglip_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    settings: TritonRepositorySettings | None = None,
    overwrite: bool = False,
) -> SiglipTritonResult:
    """Writes the SigLIP models of a SigLIP ONNX export into a Triton repository folder.

    The folder may already hold other models (a SAM 2 repository); only the SigLIP models' files
    are written. :func:`~imgembed.export.triton_repository.export_triton` with ``siglip_model``
    writes both parts at once and records them in ``imgembed-export.json``.

    Args:
        siglip_dir: A folder :func:`~imgembed.export.siglip_onnx.export_siglip_onnx` wrote.
        out_dir: The repository folder; created if missing.
        settings: Backend, SigLIP batching and names.
        overwrite: Replace existing files of the same names.

    Returns:
        The written models.

    Raises:
        InvalidInputError: ``siglip_dir`` is not a SigLIP export, a setting Triton would refuse,
            or names that collide.
        ConflictError: The files exist and ``overwrite`` is off.
    """
    settings = settings or TritonRepositorySettings()
    check_repository_settings(settings)
    export = read_siglip_export(siglip_dir)
    layout = siglip_layout(settings, str(export.metadata["model_id"]))
    folder = prepare_output_dir(out_dir, layout.files(), overwrite=overwrite)
    with staging_dir(folder) as staging:
        metadata = fill_siglip_models(export, staging, settings)
        move_into_place(staging, folder, layout.files())
    make_version_dirs(folder, layout)
    return SiglipTritonResult(
        out_dir=folder,
        names=layout.names,
        config_paths={name: folder / path for name, path in layout.configs.items()},
        metadata=metadata,
    )
