"""Triton ``config.pbtxt`` for the exported SAM 2 encoder and decoder.

Tensor names, data types and shapes are those of the ONNX graphs (:mod:`imgembed.export.sam2_io`)
and of imgembed's own v2 models (:mod:`imgembed.server.v2_models`), so the same client code runs
against either server:

- ``sam2_encoder`` batches dynamically by default (``max_batch_size`` > 0): its config lists
  ``image`` as ``[3,1024,1024]`` and Triton reports ``[-1,3,1024,1024]``, as imgembed does.
- ``sam2_decoder`` has ``max_batch_size: 0`` by default: the batch axis is part of every shape
  (``point_coords [-1,-1,2]``, ``image_embed [-1,256,64,64]``), so one request carries one image's
  features (batch 1) with B prompts, exactly imgembed's v2 decoder, and ``mask_input`` and
  ``has_mask_input`` may be left out. With ``max_batch_size`` > 0 Triton batches decoder requests
  instead, but then every input of a request has the same batch (features repeated per prompt),
  ``has_mask_input`` is ``[B,1]`` and nothing is optional (Triton's rules for batching models).

The optional TensorRT block asks the ONNX Runtime backend to run what TensorRT supports in FP16,
with an engine cache (a first build takes minutes) and optimisation profiles that cover the
shapes the config allows.

Two backends serve the same graphs with the same names, tensors, shapes and batching settings:

- ``onnxruntime`` (the default): Triton's ONNX Runtime backend runs ``model.onnx`` itself, on GPUs
  with the optional TensorRT block. It ships in NVIDIA's Triton containers.
- ``python``: Triton's Python backend runs ``model.py``
  (:mod:`imgembed.export.triton_python_model`), which runs ``model.onnx`` with ONNX Runtime in the
  backend stub's Python. For a Triton without the ONNX Runtime backend (the ``tritonserver`` of
  the ``nvidia-pytriton`` wheel, a CPU machine); no TensorRT.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from imgembed.errors import InvalidInputError
from imgembed.export.pbtxt import EnumValue, map_entries
from imgembed.export.sam2_io import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_BATCH,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    FEATURE_BATCH,
    HAS_MASK_BATCH,
    MASK_BATCH,
    NUM_POINTS,
    PROMPT_BATCH,
    GraphTensor,
)

InstanceKind = Literal["auto", "gpu", "cpu"]
TritonBackend = Literal["onnxruntime", "python"]
"""Which Triton backend runs the graphs: ONNX Runtime's, or the Python backend (``model.py``)."""
TRITON_BACKENDS: tuple[TritonBackend, ...] = ("onnxruntime", "python")
_KINDS = {"auto": "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}
BATCH_AXES = (ENCODER_BATCH, PROMPT_BATCH, FEATURE_BATCH, MASK_BATCH, HAS_MASK_BATCH)
"""Axis names that are the batch axis Triton adds when a model batches."""
MAX_REQUEST_BATCH = 64
"""Upper end of a TensorRT profile's batch axes for a model without Triton batching: imgembed's
v2 limit on prompts per request."""
MAX_POINTS = 64
"""Upper end of a TensorRT profile's point axis: imgembed's v2 limit on points per prompt."""


@dataclass(frozen=True)
class TritonModelSettings:
    """How Triton serves one model.

    Attributes:
        max_batch_size: Largest batch Triton's dynamic batcher forms; 0 turns Triton batching
            off (the batch axis is then part of each tensor's shape).
        preferred_batch_sizes: Batch sizes the batcher tries to form first; each in
            1..``max_batch_size``.
        max_queue_delay_microseconds: How long a request may wait for others to join its batch.
        instance_count: Copies of the model Triton runs at once (per GPU for ``gpu``).
        instance_kind: ``gpu``, ``cpu``, or ``auto`` (GPU when Triton sees one).
        tensorrt_fp16: Add the TensorRT accelerator block with FP16 precision.
    """

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 0
    instance_count: int = 1
    instance_kind: InstanceKind = "auto"
    tensorrt_fp16: bool = False


DEFAULT_ENCODER_SETTINGS = TritonModelSettings(
    max_batch_size=8, preferred_batch_sizes=(4, 8), max_queue_delay_microseconds=2000
)
DEFAULT_DECODER_SETTINGS = TritonModelSettings(max_batch_size=0)
DEFAULT_SIGLIP_SETTINGS = TritonModelSettings(
    max_batch_size=32, preferred_batch_sizes=(8, 16, 32), max_queue_delay_microseconds=2000
)
"""The SigLIP image and text encoders: imgembed's own SigLIP batch limit per forward pass."""


@dataclass(frozen=True)
class TritonRepositorySettings:
    """Model names and serving settings of a Triton repository.

    Attributes:
        encoder: Settings of the encoder model.
        decoder: Settings of the decoder model.
        encoder_name: Encoder model name (its folder); imgembed's default model answers to
            ``sam2_encoder`` too.
        decoder_name: Decoder model name.
        tensorrt_workspace_bytes: TensorRT's scratch memory limit, when TensorRT is on.
        tensorrt_cache_dir: Where TensorRT engines are cached, as the Triton server sees the
            path; each model gets a sub-folder.
        backend: ``onnxruntime`` (Triton's ONNX Runtime backend runs ``model.onnx``) or
            ``python`` (Triton's Python backend runs ``model.py``, which runs ``model.onnx`` with
            ONNX Runtime); see the module's notes.
        siglip: Settings of the SigLIP image and text encoders, when the repository has them
            (:mod:`imgembed.export.triton_siglip`).
        siglip_name: Name of the SigLIP image model; the text model is ``{siglip_name}_text``
            and the steps behind them are ``{siglip_name}_preprocess``, ``_tokenize``,
            ``_image_encoder`` and ``_text_encoder``.
        siglip_model_aliases: Also name the SigLIP ensembles after the model
            (``siglip2-base-patch16-224`` and ``..._text``), as imgembed's v2 routes do.
    """

    encoder: TritonModelSettings = DEFAULT_ENCODER_SETTINGS
    decoder: TritonModelSettings = DEFAULT_DECODER_SETTINGS
    encoder_name: str = "sam2_encoder"
    decoder_name: str = "sam2_decoder"
    tensorrt_workspace_bytes: int = 1 << 30
    tensorrt_cache_dir: str = "/tmp/imgembed-tensorrt"
    backend: TritonBackend = "onnxruntime"
    siglip: TritonModelSettings = DEFAULT_SIGLIP_SETTINGS
    siglip_name: str = "siglip"
    siglip_model_aliases: bool = True


def _invalid(message: str, field_name: str) -> InvalidInputError:
    return InvalidInputError(message, field=field_name)


def check_model_settings(settings: TritonModelSettings, role: str) -> None:
    """Refuses settings Triton would refuse at load time (its ``ValidateModelConfig`` rules).

    Raises:
        InvalidInputError: The message names the setting and the allowed values.
    """
    if settings.max_batch_size < 0:
        raise _invalid(
            f"{role} max_batch_size must be 0 (no Triton batching) or more, got "
            f"{settings.max_batch_size}",
            f"{role}.max_batch_size",
        )
    if settings.max_batch_size == 0 and (
        settings.preferred_batch_sizes or settings.max_queue_delay_microseconds
    ):
        raise _invalid(
            f"{role} has preferred batch sizes or a queue delay but max_batch_size 0: dynamic "
            "batching needs max_batch_size > 0. Set a max batch size or drop those settings.",
            f"{role}.max_batch_size",
        )
    bad = [
        size for size in settings.preferred_batch_sizes if not 1 <= size <= settings.max_batch_size
    ]
    if bad:
        raise _invalid(
            f"{role} preferred batch sizes {bad} are outside 1..{settings.max_batch_size} "
            "(max_batch_size)",
            f"{role}.preferred_batch_sizes",
        )
    if settings.max_queue_delay_microseconds < 0:
        raise _invalid(
            f"{role} max_queue_delay_microseconds must be 0 or more, got "
            f"{settings.max_queue_delay_microseconds}",
            f"{role}.max_queue_delay_microseconds",
        )
    if settings.instance_count < 1:
        raise _invalid(
            f"{role} instance_count must be 1 or more, got {settings.instance_count}",
            f"{role}.instance_count",
        )
    if settings.tensorrt_fp16 and settings.instance_kind == "cpu":
        raise _invalid(
            f"{role} asks for TensorRT on CPU instances; TensorRT runs on GPUs. Use instance "
            "kind gpu or auto, or leave TensorRT off.",
            f"{role}.tensorrt_fp16",
        )
    if settings.instance_kind not in _KINDS:
        raise _invalid(
            f"{role} instance_kind must be one of {', '.join(_KINDS)}, got "
            f"{settings.instance_kind!r}",
            f"{role}.instance_kind",
        )


def check_repository_settings(settings: TritonRepositorySettings) -> None:
    """Checks both models' settings and their names.

    Raises:
        InvalidInputError: A setting Triton would refuse, or unusable model names.
    """
    if settings.backend not in TRITON_BACKENDS:
        raise _invalid(
            f"backend must be one of {', '.join(TRITON_BACKENDS)}, got {settings.backend!r}",
            "backend",
        )
    check_model_settings(settings.encoder, "encoder")
    check_model_settings(settings.decoder, "decoder")
    check_model_settings(settings.siglip, "siglip")
    if settings.siglip.max_batch_size < 1:
        raise _invalid(
            f"siglip max_batch_size must be 1 or more (the SigLIP encoders batch requests), got "
            f"{settings.siglip.max_batch_size}",
            "siglip.max_batch_size",
        )
    models = (("encoder", settings.encoder), ("decoder", settings.decoder))
    for role, model in (*models, ("siglip", settings.siglip)):
        if settings.backend == "python" and model.tensorrt_fp16:
            raise _invalid(
                f"{role} asks for TensorRT with the python backend; TensorRT is an accelerator of "
                "Triton's onnxruntime backend. Use backend onnxruntime, or leave TensorRT off.",
                f"{role}.tensorrt_fp16",
            )
    names = (
        ("encoder", settings.encoder_name),
        ("decoder", settings.decoder_name),
        ("siglip", settings.siglip_name),
    )
    for role, name in names:
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise _invalid(
                f"{role} model name {name!r} cannot be a folder name; use letters, digits, '_', "
                "'-' or '.'",
                f"{role}_name",
            )
    if settings.encoder_name == settings.decoder_name:
        raise _invalid(
            f"encoder and decoder are both named {settings.encoder_name!r}; give them different "
            "names",
            "decoder_name",
        )


def _io_entry(tensor: GraphTensor, batching: bool) -> dict[str, Any]:
    """One ``input``/``output`` entry: the batch axis dropped when Triton batches, dynamic axes
    as -1; a batched scalar per item becomes ``dims [1]`` reshaped to ``[]``."""
    dims = [-1 if isinstance(size, str) else size for size in tensor.shape]
    reshape = None
    if batching:
        dims = dims[1:]
        if not dims:
            dims, reshape = [1], {"shape": []}
    entry: dict[str, Any] = {
        "name": tensor.name,
        "data_type": EnumValue("TYPE_FP32"),
        "dims": dims,
        "reshape": reshape,
    }
    if tensor.zero_default and not batching:
        entry["optional"] = True
    return entry


def _profile(tensors: tuple[GraphTensor, ...], sizes: Mapping[str, int]) -> str:
    """A TensorRT optimisation profile: ``name:AxBxC,...`` with ``sizes`` on the dynamic axes."""
    return ",".join(
        f"{tensor.name}:"
        + "x".join(str(sizes[size] if isinstance(size, str) else size) for size in tensor.shape)
        for tensor in tensors
    )


def tensorrt_block(
    inputs: tuple[GraphTensor, ...],
    settings: TritonModelSettings,
    repository: TritonRepositorySettings,
    model_name: str,
) -> dict[str, Any]:
    """The ``optimization`` block that runs the graph through TensorRT in FP16."""
    batch_max = settings.max_batch_size or MAX_REQUEST_BATCH
    batch_opt = max(settings.preferred_batch_sizes, default=1)
    ranges = {
        "min": {**dict.fromkeys(BATCH_AXES, 1), NUM_POINTS: 1},
        "opt": {**dict.fromkeys(BATCH_AXES, batch_opt), NUM_POINTS: 2},
        "max": {**dict.fromkeys(BATCH_AXES, batch_max), NUM_POINTS: MAX_POINTS},
    }
    parameters = {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(repository.tensorrt_workspace_bytes),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": f"{repository.tensorrt_cache_dir.rstrip('/')}/{model_name}",
        "trt_profile_min_shapes": _profile(inputs, ranges["min"]),
        "trt_profile_opt_shapes": _profile(inputs, ranges["opt"]),
        "trt_profile_max_shapes": _profile(inputs, ranges["max"]),
    }
    accelerator = {"name": "tensorrt", "parameters": map_entries(parameters)}
    return {"execution_accelerators": {"gpu_execution_accelerator": [accelerator]}}


def model_config(
    role: Literal["encoder", "decoder"],
    repository: TritonRepositorySettings,
    model_id: str,
) -> dict[str, Any]:
    """The ``config.pbtxt`` message of the encoder or decoder, as nested Python values.

    Args:
        role: Which model.
        repository: The repository's settings.
        model_id: The exported SAM 2 model (``sam2.1-hiera-tiny``), recorded as a parameter.

    Returns:
        A message for :func:`~imgembed.export.pbtxt.render_pbtxt`.
    """
    if role == "encoder":
        name, settings = repository.encoder_name, repository.encoder
        inputs, outputs = ENCODER_INPUTS, ENCODER_OUTPUTS
    else:
        name, settings = repository.decoder_name, repository.decoder
        inputs, outputs = DECODER_INPUTS, DECODER_OUTPUTS
    batching = settings.max_batch_size > 0
    onnxruntime = repository.backend == "onnxruntime"
    config: dict[str, Any] = {
        "name": name,
        "backend": repository.backend,
        "max_batch_size": settings.max_batch_size,
        # The Python backend runs model.py (its default file name), which opens model.onnx.
        "default_model_filename": "model.onnx" if onnxruntime else None,
        "input": [_io_entry(tensor, batching) for tensor in inputs],
        "output": [_io_entry(tensor, batching) for tensor in outputs],
    }
    if batching:
        config["dynamic_batching"] = {
            "preferred_batch_size": list(settings.preferred_batch_sizes) or None,
            "max_queue_delay_microseconds": settings.max_queue_delay_microseconds,
        }
    config["instance_group"] = [
        {"count": settings.instance_count, "kind": EnumValue(_KINDS[settings.instance_kind])}
    ]
    if settings.tensorrt_fp16:
        config["optimization"] = tensorrt_block(inputs, settings, repository, name)
    config["parameters"] = map_entries({"imgembed_model": {"string_value": model_id}})
    return config
