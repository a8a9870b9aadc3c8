"""ONNX export of a SigLIP 2 FixRes model: its image and text encoders, tokenizer and settings.

Writes into one folder:

- ``siglip_image.onnx``: ``pixel_values`` float32 ``[B,3,S,S]`` (what
  :func:`~imgembed.preprocess.siglip_pixels.fixres_pixel_values` makes) to ``embeddings``
  float32 ``[B,D]``, each row of L2 norm 1;
- ``siglip_text.onnx``: ``input_ids`` int64 ``[B,L]`` (what
  :func:`~imgembed.preprocess.siglip_text.tokenize_texts` makes, L = 64) to ``embeddings``
  float32 ``[B,D]``, each row of L2 norm 1;
- ``tokenizer.json``: the checkpoint's tokenizer in the ``tokenizers`` library's format;
- ``siglip-export.json``: the model, weights, opset, each graph's real signature, and the
  preprocessing settings (:func:`preprocessing_settings`) the Triton repository's Python
  preprocessing models read.

The graphs are traced from :func:`~imgembed.models.siglip.embed_images` and
:func:`~imgembed.models.siglip.embed_texts`'s math (``get_*_features`` then
:func:`~imgembed.models.siglip.l2_normalise`) with ``torch.onnx.export(dynamo=True)``; the batch
axis is dynamic. NaFlex models are not exported: their variable patch grids resize position
embeddings per image, which this export does not trace.

Needs the ``onnx`` extra (``pip install 'imgembed[onnx]'``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch

from imgembed.errors import ImgembedError, InvalidInputError
from imgembed.export.onnx_export import DEFAULT_OPSET, MIN_OPSET, trace_to_onnx
from imgembed.export.onnx_graph_check import graph_signature
from imgembed.export.onnx_metadata import package_versions, write_metadata
from imgembed.export.output_dir import move_into_place, prepare_output_dir, staging_dir
from imgembed.models.siglip import l2_normalise
from imgembed.models.siglip_loading import LoadedSiglip, load_siglip
from imgembed.models.siglip_variants import SiglipVariant
from imgembed.settings import InputLimits

logger = logging.getLogger(__name__)

SIGLIP_FORMAT = "imgembed-siglip-onnx"
"""``format`` of ``siglip-export.json``."""
SIGLIP_METADATA_FILE = "siglip-export.json"
TOKENIZER_FILE = "tokenizer.json"
SiglipRole = Literal["image", "text"]
GRAPH_FILES: dict[SiglipRole, str] = {"image": "siglip_image.onnx", "text": "siglip_text.onnx"}
BATCH_AXIS = "batch"
"""Name of the dynamic batch axis in both graphs."""
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
"""What :mod:`imgembed.preprocess.image` opens (export/ sits beside preprocess/ and may not import
it; tests/export/test_siglip_onnx.py checks that these four values are imgembed's)."""
ALPHA_BACKGROUND = (255, 255, 255)
"""The colour transparent pixels are composited over, as :mod:`imgembed.preprocess.image`'s."""
MAX_INTERMEDIATE_SIDE = 2048
"""Long side above which an image is box-reduced first, as
:mod:`imgembed.preprocess.siglip_pixels`'s."""
MAX_TEXT_CHARACTERS = 10_000
"""Longest text accepted, as :mod:`imgembed.preprocess.siglip_text`'s."""
_EXAMPLE_BATCH = 2
"""Batch of the tracing examples; a batch of 1 would be specialised to a constant."""


@dataclass(frozen=True)
class SiglipTensor:
    """One input or output of an exported SigLIP graph.

    Attributes:
        name: The tensor's name in the graph, in Triton's configs and on imgembed's v2 wire.
        datatype: Its v2 data type.
        shape: Dimensions; :data:`BATCH_AXIS` is the dynamic batch axis.
    """

    name: str
    datatype: Literal["FP32", "INT64"]
    shape: tuple[int | str, ...]


def graph_tensors(
    role: SiglipRole, *, image_size: int, text_length: int, embedding_dim: int
) -> tuple[SiglipTensor, SiglipTensor]:
    """The (input, output) of the image or text graph.

    Args:
        role: ``image`` or ``text``.
        image_size: FixRes input side S.
        text_length: Tokens per text L.
        embedding_dim: Embedding length D.

    Returns:
        ``pixel_values FP32 [B,3,S,S]`` or ``input_ids INT64 [B,L]``, and ``embeddings FP32
        [B,D]``.
    """
    output = SiglipTensor("embeddings", "FP32", (BATCH_AXIS, embedding_dim))
    if role == "image":
        return SiglipTensor("pixel_values", "FP32", (BATCH_AXIS, 3, image_size, image_size)), output
    return SiglipTensor("input_ids", "INT64", (BATCH_AXIS, text_length)), output


def _pooled(output: torch.Tensor | Any) -> torch.Tensor:
    """The ``[B,D]`` tensor of a ``get_*_features`` result (a tensor in ``transformers`` 4, an
    output with ``pooler_output`` in 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class SiglipImageGraph(torch.nn.Module):
    """``pixel_values [B,3,S,S]`` float32 to ``embeddings [B,D]`` float32, rows of norm 1."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Image embeddings, as :func:`~imgembed.models.siglip.embed_images` computes them.

        Args:
            pixel_values: ``[B,3,S,S]`` float32, normalised FixRes input.

        Returns:
            ``[B,D]`` float32, each row of L2 norm 1.
        """
        return l2_normalise(_pooled(self.model.get_image_features(pixel_values=pixel_values)))


class SiglipTextGraph(torch.nn.Module):
    """``input_ids [B,L]`` int64 to ``embeddings [B,D]`` float32, rows of norm 1."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Text embeddings, as :func:`~imgembed.models.siglip.embed_texts` computes them.

        Args:
            input_ids: ``[B,L]`` int64 token ids, padded on the right to L.

        Returns:
            ``[B,D]`` float32, each row of L2 norm 1.
        """
        return l2_normalise(_pooled(self.model.get_text_features(input_ids=input_ids)))


@dataclass(frozen=True)
class SiglipExportResult:
    """What a SigLIP ONNX export wrote.

    Attributes:
        out_dir: The folder.
        files: ``image`` and ``text`` to their graphs.
        tokenizer_path: ``tokenizer.json``.
        metadata_path: ``siglip-export.json``.
        metadata: Its contents.
    """

    out_dir: Path
    files: dict[SiglipRole, Path]
    tokenizer_path: Path
    metadata_path: Path
    metadata: dict[str, Any]


def preprocessing_settings(loaded: LoadedSiglip, limits: InputLimits) -> dict[str, Any]:
    """What turns image files and texts into the graphs' inputs, as imgembed does it.

    Args:
        loaded: The exported model.
        limits: The image limits to enforce (imgembed's defaults unless a deployment sets others).

    Returns:
        ``{"image": {...}, "text": {...}}``: decoding limits and formats, the intermediate
        reduction, the FixRes size, filter, rescale factor, mean and std; the text length, the
        padding id, lower-casing and the character limit.
    """
    processing = loaded.image_processing
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ImgembedError(
            f"The tokenizer of {loaded.variant.name} has no padding token; SigLIP pads every "
            "text to its length. Use the checkpoint's own tokenizer files."
        )
    return {
        "image": {
            "accepted_formats": list(ACCEPTED_FORMATS),
            "max_image_pixels": limits.max_image_pixels,
            "min_image_side": limits.min_image_side,
            "alpha_background": list(ALPHA_BACKGROUND),
            "max_intermediate_side": MAX_INTERMEDIATE_SIDE,
            "image_size": processing.image_size,
            "resample": processing.resample,
            "rescale_factor": processing.rescale_factor,
            "image_mean": list(processing.image_mean),
            "image_std": list(processing.image_std),
        },
        "text": {
            "max_length": loaded.text_max_length,
            "pad_id": int(pad_id),
            "lowercase": True,
            "max_characters": MAX_TEXT_CHARACTERS,
            "tokenizer_file": TOKENIZER_FILE,
        },
    }


def _check(loaded: LoadedSiglip, opset: int) -> None:
    """Refuses a NaFlex model, a tokenizer without a ``tokenizers`` form, or an old opset."""
    if loaded.variant.family != "fixres":
        raise InvalidInputError(
            f"{loaded.variant.name} is a NaFlex model; the SigLIP export covers FixRes models "
            "(siglip2-*-patch16-224 and the other fixed-size ones). Choose a FixRes model.",
            field="siglip_model",
        )
    if getattr(loaded.tokenizer, "backend_tokenizer", None) is None:
        raise InvalidInputError(
            f"The tokenizer of {loaded.variant.name} ({type(loaded.tokenizer).__name__}) has no "
            "tokenizers-library form to write as tokenizer.json; use the checkpoint's "
            "tokenizer.json (a fast tokenizer).",
            field="siglip_weights",
        )
    if opset < MIN_OPSET:
        raise InvalidInputError(
            f"Opset {opset} is too old: the exporter writes opset {MIN_OPSET} or newer.",
            field="opset",
        )


def _trace(
    module: torch.nn.Module, example: torch.Tensor, inputs: SiglipTensor, path: Path, opset: int
) -> None:
    """Traces one graph to ``path`` with a dynamic batch axis."""
    batch = torch.export.Dim(BATCH_AXIS, min=1)
    trace_to_onnx(
        module,
        (example,),
        path,
        input_names=[inputs.name],
        output_names=["embeddings"],
        dynamic_shapes={inputs.name: {0: batch}},
        opset=opset,
        what=path.name,
    )


def export_loaded_siglip_onnx(
    loaded: LoadedSiglip,
    out_dir: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    limits: InputLimits | None = None,
    overwrite: bool = False,
) -> SiglipExportResult:
    """Exports an already loaded FixRes SigLIP 2 model; see :func:`export_siglip_onnx`."""
    _check(loaded, opset)
    names = [*GRAPH_FILES.values(), TOKENIZER_FILE, SIGLIP_METADATA_FILE]
    folder = prepare_output_dir(out_dir, names, overwrite=overwrite, field="siglip_out_dir")
    model = loaded.model
    device = next(model.parameters()).device
    size = int(loaded.image_processing.image_size or 0)
    generator = torch.Generator().manual_seed(0)
    examples = {
        "image": torch.randn((_EXAMPLE_BATCH, 3, size, size), generator=generator).to(device),
        "text": torch.randint(
            0,
            loaded.variant.vocab_size,
            (_EXAMPLE_BATCH, loaded.text_max_length),
            generator=generator,
        ).to(device),
    }
    modules = {"image": SiglipImageGraph(model), "text": SiglipTextGraph(model)}
    settings = preprocessing_settings(loaded, limits or InputLimits())
    with staging_dir(folder) as staging:
        graphs: dict[str, Any] = {}
        for role, file_name in GRAPH_FILES.items():
            inputs, _ = graph_tensors(
                role,
                image_size=size,
                text_length=loaded.text_max_length,
                embedding_dim=loaded.embedding_dim,
            )
            logger.info("Exporting the SigLIP %s graph to %s (opset %d)", role, folder, opset)
            _trace(modules[role], examples[role], inputs, staging / file_name, opset)
            path = staging / file_name
            signature = graph_signature(path)
            graphs[role] = {"file": file_name, "bytes": path.stat().st_size, **signature}
        (staging / TOKENIZER_FILE).write_text(
            loaded.tokenizer.backend_tokenizer.to_str(), encoding="utf-8"
        )
        contents = {
            "format": SIGLIP_FORMAT,
            "format_version": 1,
            "model_id": loaded.variant.name,
            "hub_id": loaded.variant.hub_id,
            "weights": {
                "source": loaded.source,
                "location": loaded.weights_location,
                "untrained": loaded.untrained,
            },
            "opset": opset,
            "embedding_dim": loaded.embedding_dim,
            "preprocessing": settings,
            "graphs": graphs,
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": package_versions(),
        }
        write_metadata(staging / SIGLIP_METADATA_FILE, contents)
        move_into_place(staging, folder, names)
    logger.info("Exported %s (SigLIP image and text graphs) to %s", loaded.variant.name, folder)
    return read_siglip_export(folder)


def export_siglip_onnx(
    model_name: str | SiglipVariant,
    weights: str | None,
    out_dir: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    hub_cache_dir: str | None = None,
    hub_offline: bool = False,
    hub_endpoint: str | None = None,
) -> SiglipExportResult:
    """Loads a FixRes SigLIP 2 model and writes its image and text encoders as ONNX graphs.

    Args:
        model_name: A SigLIP 2 name (``siglip2-base-patch16-224``, ``google/siglip2-...``) or a
            :class:`~imgembed.models.siglip_variants.SiglipVariant`.
        weights: As :func:`~imgembed.models.siglip_loading.load_siglip` takes them (``None`` for
            the hub, ``"dummy"``, a Hugging Face folder, a hub id).
        out_dir: Folder to write into; created if missing.
        opset: ONNX opset.
        device: Where the model is traced; the graphs do not depend on it.
        overwrite: Replace existing files of the same names.
        hub_cache_dir: Hugging Face cache folder for hub weights.
        hub_offline: Never contact the hub.
        hub_endpoint: Hub address, for mirrors.

    Returns:
        The written files and metadata.

    Raises:
        ModelLoadError: The name is unknown or the weights cannot be loaded.
        InvalidInputError: A NaFlex model, a tokenizer with no ``tokenizer.json`` form, an old
            opset, or an ``out_dir`` that cannot be written.
        ConflictError: The files exist and ``overwrite`` is off.
        ImgembedError: The exporter failed.
    """
    loaded = load_siglip(
        model_name,
        weights,
        device=torch.device(device),
        hub_cache_dir=hub_cache_dir,
        hub_offline=hub_offline,
        hub_endpoint=hub_endpoint,
    )
    return export_loaded_siglip_onnx(loaded, out_dir, opset=opset, overwrite=overwrite)


def read_siglip_export(out_dir: str | os.PathLike[str]) -> SiglipExportResult:
    """Reads a folder :func:`export_siglip_onnx` wrote.

    Raises:
        InvalidInputError: No readable ``siglip-export.json`` of this format, or a listed file is
            missing.
    """
    folder = Path(out_dir).expanduser().absolute()
    path = folder / SIGLIP_METADATA_FILE
    try:
        contents = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InvalidInputError(
            f"{folder} is not an imgembed SigLIP export: cannot read {SIGLIP_METADATA_FILE} "
            f"({error}). Export one with export_siglip_onnx or `imgembed export triton --siglip`.",
            field="siglip_dir",
        ) from error
    if not isinstance(contents, dict) or contents.get("format") != SIGLIP_FORMAT:
        raise InvalidInputError(
            f"{path} is not a SigLIP export description (format {SIGLIP_FORMAT!r} expected).",
            field="siglip_dir",
        )
    files: dict[SiglipRole, Path] = {
        role: folder / contents["graphs"][role]["file"] for role in GRAPH_FILES
    }
    missing = [str(p) for p in (*files.values(), folder / TOKENIZER_FILE) if not p.is_file()]
    if missing:
        raise InvalidInputError(
            f"The SigLIP export in {folder} lacks {', '.join(missing)}. Export again.",
            field="siglip_dir",
        )
    return SiglipExportResult(
        out_dir=folder,
        files=files,
        tokenizer_path=folder / TOKENIZER_FILE,
        metadata_path=path,
        metadata=contents,
    )
