"""ONNX export of a SAM 2 model: ``encoder.onnx``, ``decoder.onnx`` and ``imgembed-export.json``.

The graphs have the inputs and outputs of samexporter's ``export_sam2`` (seed 002; see
:mod:`imgembed.export.sam2_io`) and compute exactly what imgembed's PyTorch path computes: they are
traced from :func:`~imgembed.models.sam2.encode_images` and
:func:`~imgembed.models.sam2_decoder.decode_masks` with ``torch.onnx.export(dynamo=True)``
(``torch.export`` plus onnxscript), so features from imgembed's server feed the exported decoder
by name. Dynamic axes: the encoder's batch; the decoder's prompt batch, number of points and the
"1 or B" batches of the features and mask inputs.

Also written, unless turned off: ``decoder_single_mask.onnx``, the same inputs with one mask per
prompt (``decode_masks(multimask_output=False)``: token 0 with the stability fallback), which
imgembed's ONNX Runtime backend uses for single-mask requests.

The JSON beside the graphs records the model, weights, opset, precision, input size,
normalisation, the coordinate convention and each graph's inputs and outputs as written.

Needs the ``onnx`` extra (``pip install 'imgembed[onnx]'``).
"""

from __future__ import annotations

import logging
import os
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from imgembed.errors import ImgembedError, InvalidInputError
from imgembed.export.graphs import Sam2DecoderGraph, Sam2EncoderGraph
from imgembed.export.onnx_metadata import (
    GRAPHS,
    METADATA_FILE,
    ExportResult,
    build_metadata,
    graph_entry,
    package_versions,
    read_export,
    write_metadata,
)
from imgembed.export.onnx_precision import PRECISIONS, Precision, convert_graph
from imgembed.export.output_dir import move_into_place, prepare_output_dir, staging_dir
from imgembed.export.sam2_io import GraphTensor
from imgembed.models.sam2_loading import LoadedSam2, load_sam2
from imgembed.models.sam2_registry import resolve_variant

try:
    import onnx
    from onnx import numpy_helper
except ImportError as e:
    raise ImportError("ONNX export needs the 'onnx' extra: pip install 'imgembed[onnx]'") from e

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
"""ONNX opset of the graphs: 18 runs on ONNX Runtime 1.14+ (Triton 23.02+, onnxruntime-web)."""
MIN_OPSET = 18
"""Lowest opset the exporter is asked for: the dynamo exporter writes 18 and newer."""


def _check_options(opset: int, precision: str) -> None:
    """Refuses an opset or precision the export cannot write."""
    if precision not in PRECISIONS:
        raise InvalidInputError(
            f"Unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}.",
            field="precision",
        )
    if opset < MIN_OPSET:
        raise InvalidInputError(
            f"Opset {opset} is too old: the exporter writes opset {MIN_OPSET} or newer. Use "
            f"--opset {DEFAULT_OPSET} (the default) or higher.",
            field="opset",
        )


def _roles(single_mask_decoder: bool) -> tuple[str, ...]:
    """The graphs an export writes."""
    if single_mask_decoder:
        return ("encoder", "decoder", "decoder_single_mask")
    return ("encoder", "decoder")


def write_with_input_defaults(source: Path, target: Path, inputs: tuple[GraphTensor, ...]) -> None:
    """Writes the graph in ``source`` to ``target`` with zero defaults for its ``zero_default``
    inputs, so that a caller may leave them out.

    An initializer that shares its name with a graph input is an overridable initializer: ONNX
    Runtime in Python (and Triton's ONNX Runtime backend) uses it when the caller leaves the input
    out and the caller's value otherwise. onnxruntime-web does not list such an input and refuses a
    feed for it, which is why exported graphs never carry these defaults; only a serving layer that
    lets callers omit inputs (Triton's unbatched decoder) gets a graph written with them.

    Args:
        source: A graph whose inputs are all plain inputs.
        target: Where to write the graph with defaults; may equal ``source``.
        inputs: The graph's inputs, as in :data:`~imgembed.export.onnx_metadata.GRAPHS`.
    """
    model = onnx.load(str(source))
    model.graph.initializer.extend(
        numpy_helper.from_array(np.zeros(tensor.default_shape, np.float32), tensor.name)
        for tensor in inputs
        if tensor.zero_default
    )
    onnx.save(model, str(target))


def _export_graph(
    module: torch.nn.Module, role: str, path: Path, opset: int, device: torch.device
) -> None:
    """Traces one graph to ``path`` in float32; every input a plain graph input."""
    _, inputs, outputs = GRAPHS[role]
    generator = torch.Generator().manual_seed(0)
    # Example sizes: batches of 2 and 3 (a batch of 1 would be specialised to a constant), and
    # distinct sizes for independent axes.
    example_sizes = {"batch": 2, "prompt_batch": 3, "num_points": 4}
    examples = []
    for tensor in inputs:
        shape = [
            size if isinstance(size, int) else example_sizes.get(size, 2) for size in tensor.shape
        ]
        examples.append(torch.randn(shape, generator=generator).to(device))
    if role != "encoder":
        labels = [tensor.name for tensor in inputs].index("point_labels")
        examples[labels] = torch.ones_like(examples[labels])
    dims: dict[str, torch.export.Dim] = {}
    dynamic_shapes = {
        tensor.name: {
            axis: dims.setdefault(name, torch.export.Dim(name, min=1))
            for axis, name in tensor.dynamic_axes.items()
        }
        for tensor in inputs
    }
    logger.info("Exporting the %s graph to %s (opset %d)", role, path, opset)
    trace_to_onnx(
        module,
        tuple(examples),
        path,
        input_names=[tensor.name for tensor in inputs],
        output_names=[tensor.name for tensor in outputs],
        dynamic_shapes=dynamic_shapes,
        opset=opset,
        what=f"the SAM 2 {role}",
    )


def trace_to_onnx(
    module: torch.nn.Module,
    examples: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: dict[str, dict[int, torch.export.Dim]],
    opset: int,
    what: str,
) -> None:
    """Traces ``module`` in eval mode to one self-contained ONNX file with torch's dynamo
    exporter (every SAM 2 and SigLIP 2 graph goes through here).

    Args:
        module: The graph's module; its forward takes ``examples`` in order.
        examples: Example inputs of the sizes the dynamic axes must not be specialised to.
        path: The ``.onnx`` file to write.
        input_names: Graph input names, in ``examples`` order.
        output_names: Graph output names, in the order the forward returns them.
        dynamic_shapes: Input name to axis index to its ``torch.export.Dim``.
        opset: ONNX opset.
        what: The graph, as an error message names it (``the SAM 2 encoder``).

    Raises:
        ImgembedError: torch.onnx could not export it (the message has torch's first line).
    """
    try:
        with warnings.catch_warnings():
            # The exporter notes that axes sharing one name share one symbol: intended here.
            warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
            # A deprecation inside torch.export's own pytree code, nothing the caller can act on.
            warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
            torch.onnx.export(
                module.eval(),
                examples,
                str(path),
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except torch.onnx.OnnxExporterError as error:
        raise ImgembedError(
            f"torch.onnx could not export {what} (opset {opset}, torch "
            f"{torch.__version__}): {str(error).splitlines()[0]}"
        ) from error


def export_loaded_onnx(
    loaded: LoadedSam2,
    out_dir: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    precision: Precision = "fp32",
    single_mask_decoder: bool = True,
    overwrite: bool = False,
) -> ExportResult:
    """Exports an already loaded SAM 2 model; see :func:`export_onnx`."""
    _check_options(opset, precision)
    roles = _roles(single_mask_decoder)
    names = [GRAPHS[role][0] for role in roles] + [METADATA_FILE]
    folder = prepare_output_dir(out_dir, names, overwrite=overwrite)
    model = loaded.model
    device = next(model.parameters()).device
    modules = {
        "encoder": Sam2EncoderGraph(model),
        "decoder": Sam2DecoderGraph(model, multimask_output=True),
        "decoder_single_mask": Sam2DecoderGraph(model, multimask_output=False),
    }
    with staging_dir(folder) as staging:
        traced_dir = staging / "fp32" if precision != "fp32" else staging
        traced_dir.mkdir(exist_ok=True)
        graphs: dict[str, Path] = {}
        for role in roles:
            file_name = GRAPHS[role][0]
            _export_graph(modules[role], role, traced_dir / file_name, opset, device)
            if precision != "fp32":
                convert_graph(traced_dir / file_name, staging / file_name, precision)
            graphs[role] = staging / file_name
        contents = build_metadata(
            loaded,
            opset=opset,
            precision=precision,
            graphs=graphs,
            converted_from={"precision": "fp32"} if precision != "fp32" else None,
        )
        write_metadata(staging / METADATA_FILE, contents)
        move_into_place(staging, folder, names)
    logger.info("Exported %s (%s) to %s", loaded.variant.name, precision, folder)
    return ExportResult(
        out_dir=folder,
        precision=precision,
        files={role: folder / GRAPHS[role][0] for role in roles},
        metadata_path=folder / METADATA_FILE,
        metadata=contents,
    )


def export_onnx(
    model_name: str,
    weights: str | None,
    out_dir: str | os.PathLike[str],
    *,
    meta_config: str | None = None,
    opset: int = DEFAULT_OPSET,
    precision: Precision = "fp32",
    device: str | torch.device = "cpu",
    single_mask_decoder: bool = True,
    overwrite: bool = False,
    hub_cache_dir: str | None = None,
    hub_offline: bool = False,
    hub_endpoint: str | None = None,
) -> ExportResult:
    """Loads a SAM 2 model and writes its encoder and decoder as ONNX graphs.

    Writes ``encoder.onnx``, ``decoder.onnx``, ``decoder_single_mask.onnx`` (unless
    ``single_mask_decoder`` is off) and ``imgembed-export.json`` into ``out_dir``. Nothing is
    written under a final name until every file is complete.

    Args:
        model_name: Any name :func:`~imgembed.models.sam2_registry.resolve_variant` accepts
            (``sam2.1-hiera-tiny``, ``facebook/sam2-hiera-large``, ``sam2_hiera_l.yaml``).
        weights: As :func:`~imgembed.models.sam2_loading.load_sam2` takes them: ``None`` for the
            hub, ``"dummy"`` for random untrained weights, a folder, a ``.pt`` file, a hub id.
        out_dir: Folder to write into; created if missing.
        meta_config: Meta's config name for a ``.pt`` checkpoint, when it is not implied.
        opset: ONNX opset, :data:`MIN_OPSET` or newer.
        precision: ``fp32``; ``fp16`` (float16 weights and math, float32 inputs and outputs) or
            ``int8`` (dynamically quantised MatMul weights); see
            :mod:`imgembed.export.onnx_precision`.
        device: Where the model is traced; the graphs do not depend on it.
        single_mask_decoder: Also write ``decoder_single_mask.onnx``.
        overwrite: Replace existing files of the same names.
        hub_cache_dir: Hugging Face cache folder for hub weights.
        hub_offline: Never contact the hub.
        hub_endpoint: Hub address, for mirrors.

    Returns:
        The written files and metadata.

    Raises:
        UnknownModelError: ``model_name`` names no SAM 2 model; the message lists the valid names.
        InvalidInputError: ``out_dir`` cannot be written, or the opset or precision is not
            supported.
        ConflictError: ``out_dir`` already holds export files and ``overwrite`` is off.
        ModelLoadError: The weights cannot be loaded.
        ImgembedError: The exporter failed, or a written graph does not have the expected inputs
            and outputs.
    """
    variant = resolve_variant(model_name)
    _check_options(opset, precision)
    names = [GRAPHS[role][0] for role in _roles(single_mask_decoder)] + [METADATA_FILE]
    folder = prepare_output_dir(out_dir, names, overwrite=overwrite)
    loaded = load_sam2(
        variant.name,
        weights,
        meta_config,
        device=torch.device(device),
        hub_cache_dir=hub_cache_dir,
        hub_offline=hub_offline,
        hub_endpoint=hub_endpoint,
    )
    return export_loaded_onnx(
        loaded,
        folder,
        opset=opset,
        precision=precision,
        single_mask_decoder=single_mask_decoder,
        overwrite=overwrite,
    )


def convert_precision(
    source_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    precision: Precision,
    *,
    overwrite: bool = False,
) -> ExportResult:
    """Writes an fp16 or int8 variant of a float32 export, without tracing the model again.

    Args:
        source_dir: A float32 export folder (:func:`export_onnx` with ``precision="fp32"``).
        out_dir: Folder for the variant; the same file names and a metadata file that records
            the precision and what it was converted from.
        precision: ``fp16`` or ``int8`` (``fp32`` copies).
        overwrite: Replace existing files of the same names.

    Returns:
        The written files and metadata.

    Raises:
        InvalidInputError: ``source_dir`` is not a float32 export, or ``out_dir`` cannot be
            written, or the precision is unknown.
        ConflictError: ``out_dir`` already holds export files and ``overwrite`` is off.
    """
    source = read_export(source_dir)
    _check_options(source.metadata["opset"], precision)
    if source.precision != "fp32":
        raise InvalidInputError(
            f"{source.out_dir} holds a {source.precision} export; convert from a float32 export.",
            field="source_dir",
        )
    names = [path.name for path in source.files.values()] + [METADATA_FILE]
    folder = prepare_output_dir(out_dir, names, overwrite=overwrite)
    if folder == source.out_dir:
        raise InvalidInputError(
            f"The variant would replace its own source in {folder}; give another folder.",
            field="out_dir",
        )
    with staging_dir(folder) as staging:
        graphs: dict[str, Path] = {}
        for role, path in source.files.items():
            convert_graph(path, staging / path.name, precision)
            graphs[role] = staging / path.name
        contents = {
            **source.metadata,
            "precision": precision,
            "converted_from": {
                "precision": source.precision,
                "folder": str(source.out_dir),
                "exported_at": source.metadata.get("exported_at"),
            },
            "graphs": {role: graph_entry(role, path) for role, path in graphs.items()},
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": package_versions(),
        }
        write_metadata(staging / METADATA_FILE, contents)
        move_into_place(staging, folder, names)
    return ExportResult(
        out_dir=folder,
        precision=precision,
        files={role: folder / path.name for role, path in source.files.items()},
        metadata_path=folder / METADATA_FILE,
        metadata=contents,
    )
