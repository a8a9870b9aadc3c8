"""Meta's original SAM 2 checkpoints (``sam2.1_hiera_tiny.pt``, ...) as ``transformers`` weights.

A Meta checkpoint is ``{"model": state_dict}`` of ``sam2.modeling.sam2_base.SAM2Base``, which holds
the image path (Hiera trunk, FPN neck, prompt encoder, mask decoder, ``no_mem_embed``) and the
video path (memory attention, memory encoder, object pointers). ``transformers.Sam2Model`` is the
image path only, so video keys are dropped on purpose (:data:`DROPPED_META_PREFIXES`); every other
key must be mapped by :data:`KEY_RULES`, and every model weight must be filled, or loading fails.

All tensors keep their shapes except where noted in the rules: Hiera's fused ``qkv`` projection and
the positional embeddings have the same layout in both implementations.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import torch

from imgembed.errors import ModelLoadError
from imgembed.models.sam2_registry import list_variants
from imgembed.models.sam2_variants import Sam2Variant

logger = logging.getLogger(__name__)

DROPPED_META_PREFIXES: tuple[str, ...] = (
    "memory_attention.",  # cross-attention of the current frame to memories
    "memory_encoder.",  # turns a frame's masks into a memory
    "maskmem_tpos_enc",  # temporal positional encoding of memories
    "no_mem_pos_enc",  # positional encoding paired with no_mem_embed on video frames
    "no_obj_ptr",  # object pointer used when no object is present
    "no_obj_embed_spatial",  # SAM 2.1 only: memory embedding for frames without the object
    "mask_downsample.",  # downsamples input masks fed straight to the memory
    "obj_ptr_proj.",  # projects mask decoder tokens into object pointers
    "obj_ptr_tpos_proj.",  # SAM 2.1 only: temporal encoding of object pointers
)
"""Meta key prefixes that belong only to video tracking; they have no place in ``Sam2Model``."""

_TRUNK = r"image_encoder\.trunk\."
_BACKBONE = "vision_encoder.backbone."
_DECODER = r"sam_mask_decoder\."
_TRANSFORMER = r"sam_mask_decoder\.transformer\."
_THREE_LAYER_HEADS = r"(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)"
_ATTENTIONS = r"(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"

KEY_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # (regular expression matching a whole Meta key, replacement templates for Sam2Model keys)
    # Hiera trunk.
    (_TRUNK + r"patch_embed\.proj\.(weight|bias)", (_BACKBONE + r"patch_embed.projection.\1",)),
    (_TRUNK + r"(pos_embed|pos_embed_window)", (_BACKBONE + r"\1",)),
    (
        _TRUNK + r"blocks\.(\d+)\.norm(1|2)\.(weight|bias)",
        (_BACKBONE + r"blocks.\1.layer_norm\2.\3",),
    ),
    (
        _TRUNK + r"blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)",
        (_BACKBONE + r"blocks.\1.attn.\2.\3",),
    ),
    (
        _TRUNK + r"blocks\.(\d+)\.mlp\.layers\.0\.(weight|bias)",
        (_BACKBONE + r"blocks.\1.mlp.proj_in.\2",),
    ),
    (
        _TRUNK + r"blocks\.(\d+)\.mlp\.layers\.1\.(weight|bias)",
        (_BACKBONE + r"blocks.\1.mlp.proj_out.\2",),
    ),
    (_TRUNK + r"blocks\.(\d+)\.proj\.(weight|bias)", (_BACKBONE + r"blocks.\1.proj.\2",)),
    # FPN neck: both number the lateral convolutions coarsest level first.
    (
        r"image_encoder\.neck\.convs\.(\d+)\.conv\.(weight|bias)",
        (r"vision_encoder.neck.convs.\1.\2",),
    ),
    # Added to the coarsest features of a single image: [1,1,256] in both.
    (r"no_mem_embed", ("no_memory_embedding",)),
    # Prompt encoder. The random Fourier matrix [2,128] also positions the image embedding.
    (
        r"sam_prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix",
        (
            "prompt_encoder.shared_embedding.positional_embedding",
            "shared_image_embedding.positional_embedding",
        ),
    ),
    (
        r"sam_prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight",
        (r"prompt_encoder.\1.weight",),
    ),
    (
        r"sam_prompt_encoder\.mask_downscaling\.0\.(weight|bias)",
        (r"prompt_encoder.mask_embed.conv1.\1",),
    ),
    (
        r"sam_prompt_encoder\.mask_downscaling\.1\.(weight|bias)",
        (r"prompt_encoder.mask_embed.layer_norm1.\1",),
    ),
    (
        r"sam_prompt_encoder\.mask_downscaling\.3\.(weight|bias)",
        (r"prompt_encoder.mask_embed.conv2.\1",),
    ),
    (
        r"sam_prompt_encoder\.mask_downscaling\.4\.(weight|bias)",
        (r"prompt_encoder.mask_embed.layer_norm2.\1",),
    ),
    (
        r"sam_prompt_encoder\.mask_downscaling\.6\.(weight|bias)",
        (r"prompt_encoder.mask_embed.conv3.\1",),
    ),
    # Two-way transformer of the mask decoder.
    (
        _TRANSFORMER
        + r"layers\.(\d+)\."
        + _ATTENTIONS
        + r"\.(q_proj|k_proj|v_proj)\.(weight|bias)",
        (r"mask_decoder.transformer.layers.\1.\2.\3.\4",),
    ),
    (
        _TRANSFORMER + r"layers\.(\d+)\." + _ATTENTIONS + r"\.out_proj\.(weight|bias)",
        (r"mask_decoder.transformer.layers.\1.\2.o_proj.\3",),
    ),
    (
        _TRANSFORMER + r"layers\.(\d+)\.norm(\d)\.(weight|bias)",
        (r"mask_decoder.transformer.layers.\1.layer_norm\2.\3",),
    ),
    (
        _TRANSFORMER + r"layers\.(\d+)\.mlp\.layers\.0\.(weight|bias)",
        (r"mask_decoder.transformer.layers.\1.mlp.proj_in.\2",),
    ),
    (
        _TRANSFORMER + r"layers\.(\d+)\.mlp\.layers\.1\.(weight|bias)",
        (r"mask_decoder.transformer.layers.\1.mlp.proj_out.\2",),
    ),
    (
        _TRANSFORMER + r"final_attn_token_to_image\.(q_proj|k_proj|v_proj)\.(weight|bias)",
        (r"mask_decoder.transformer.final_attn_token_to_image.\1.\2",),
    ),
    (
        _TRANSFORMER + r"final_attn_token_to_image\.out_proj\.(weight|bias)",
        (r"mask_decoder.transformer.final_attn_token_to_image.o_proj.\1",),
    ),
    (
        _TRANSFORMER + r"norm_final_attn\.(weight|bias)",
        (r"mask_decoder.transformer.layer_norm_final_attn.\1",),
    ),
    # Mask decoder heads.
    (_DECODER + r"(iou_token|mask_tokens|obj_score_token)\.weight", (r"mask_decoder.\1.weight",)),
    (_DECODER + r"output_upscaling\.0\.(weight|bias)", (r"mask_decoder.upscale_conv1.\1",)),
    (_DECODER + r"output_upscaling\.1\.(weight|bias)", (r"mask_decoder.upscale_layer_norm.\1",)),
    (_DECODER + r"output_upscaling\.3\.(weight|bias)", (r"mask_decoder.upscale_conv2.\1",)),
    (_DECODER + r"conv_s(0|1)\.(weight|bias)", (r"mask_decoder.conv_s\1.\2",)),
    # Three-layer MLPs: Meta numbers layers 0..2, transformers calls them proj_in, layers.0,
    # proj_out.
    (
        _DECODER + _THREE_LAYER_HEADS + r"\.layers\.0\.(weight|bias)",
        (r"mask_decoder.\1.proj_in.\2",),
    ),
    (
        _DECODER + _THREE_LAYER_HEADS + r"\.layers\.1\.(weight|bias)",
        (r"mask_decoder.\1.layers.0.\2",),
    ),
    (
        _DECODER + _THREE_LAYER_HEADS + r"\.layers\.2\.(weight|bias)",
        (r"mask_decoder.\1.proj_out.\2",),
    ),
)
"""How each image-path Meta key becomes one or more ``Sam2Model`` keys; the first match wins."""

STACKED_RULES: tuple[tuple[str, str, int], ...] = (
    # (Meta key pattern whose group 1 is a row index, Sam2Model key, number of rows)
    # Four [1,256] point-type embeddings (negative, positive, box corner 1, box corner 2) become
    # the rows of one [4,256] embedding table.
    (
        r"sam_prompt_encoder\.point_embeddings\.(\d+)\.weight",
        "prompt_encoder.point_embed.weight",
        4,
    ),
)
"""Meta keys whose tensors are concatenated along dimension 0 into one ``Sam2Model`` tensor."""

_Target = TypeVar("_Target")
_COMPILED_RULES = tuple((re.compile(pattern), targets) for pattern, targets in KEY_RULES)
_COMPILED_STACKED = tuple(
    (re.compile(pattern), (target, rows)) for pattern, target, rows in STACKED_RULES
)
_CHECKPOINT_READ_ERRORS = (
    OSError,
    RuntimeError,
    EOFError,
    ValueError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)

_MISMATCH_HINT = (
    "The checkpoint does not match the config: check that the checkpoint file and the config name "
    "(SAM2_MODEL_CFG, or the model name) are of the same size and version, "
    "for example sam2.1_hiera_tiny.pt with configs/sam2.1/sam2.1_hiera_t.yaml."
)


def _key_list(keys: list[str], limit: int = 10) -> str:
    """A short, sorted listing of keys for an error message."""
    shown = sorted(keys)[:limit]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more


def _load_mapped_or_whole(path: Path) -> object:
    """``torch.load`` of a checkpoint, memory-mapped when it is a zip archive; read whole when it
    is not, or when mapping it fails (a file system without ``mmap``), so that only a file that
    cannot be read at all raises."""
    if zipfile.is_zipfile(path):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except _CHECKPOINT_READ_ERRORS as error:
            logger.info("Cannot memory-map %s (%s); reading it whole.", path, error)
    return torch.load(path, map_location="cpu", weights_only=True)


def read_meta_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Reads the state dict out of a Meta checkpoint file, without running any pickled code.

    A checkpoint in ``torch.save``'s zip format (Meta's releases are) is memory-mapped: the
    tensors' storage is the file's pages (a private, copy-on-write mapping), so nothing is read
    or copied until a tensor is used, and a model that keeps them on the CPU shares the page
    cache instead of holding a second copy. An older, non-zip checkpoint is read whole, and so is
    a zip checkpoint that cannot be mapped.

    Args:
        path: A ``.pt`` file as Meta publishes them: ``{"model": state_dict}``.

    Returns:
        The state dict, tensors on the CPU in the file's dtype (float32 for Meta's releases),
        backed by the mapped file for a zip checkpoint.

    Raises:
        ModelLoadError: When the file cannot be read (corrupt, truncated, not a checkpoint) or does
            not hold a state dict under ``"model"``.
    """
    try:
        checkpoint = _load_mapped_or_whole(path)
    except _CHECKPOINT_READ_ERRORS as error:
        raise ModelLoadError(
            f"Cannot read the Meta checkpoint {path}: {type(error).__name__}: "
            f"{str(error).rstrip('. ')}. The file is "
            "corrupt, truncated or not a PyTorch checkpoint."
        ) from error
    state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(state, Mapping) or not all(
        isinstance(key, str) and isinstance(tensor, torch.Tensor) for key, tensor in state.items()
    ):
        found = (
            f"a dict with keys {sorted(map(str, checkpoint))[:10]}"
            if isinstance(checkpoint, dict)
            else f"a {type(checkpoint).__name__}"
        )
        raise ModelLoadError(
            f"The file {path} is not a Meta SAM 2 checkpoint: expected a dict whose 'model' entry "
            f"is a state dict of tensors, as Meta's sam2*_hiera_*.pt files hold; found {found}."
        )
    return dict(state)


def _first_match(
    rules: tuple[tuple[re.Pattern[str], _Target], ...], key: str
) -> tuple[re.Match[str], _Target] | None:
    """The match of the first rule whose pattern matches all of ``key``, with that rule's target."""
    for pattern, target in rules:
        match = pattern.fullmatch(key)
        if match is not None:
            return match, target
    return None


def convert_meta_state_dict(meta_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames Meta's SAM 2 weights to ``transformers.Sam2Model`` names.

    Args:
        meta_state: The ``"model"`` entry of a Meta checkpoint (``SAM2Base.state_dict()``).

    Returns:
        ``Sam2Model`` state dict entries, tensors in the checkpoint's dtype on its device. Shapes
        are unchanged except the point embeddings: four ``[1,256]`` tensors become one ``[4,256]``.
        The Fourier matrix ``[2,128]`` appears under two keys, the second a copy.

    Raises:
        ModelLoadError: When a key is neither an image-path key nor a known video-only key, or when
            a stacked tensor is missing some of its rows.
    """
    converted: dict[str, torch.Tensor] = {}
    stacked_rows: dict[str, dict[int, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, tensor in meta_state.items():
        if key.startswith(DROPPED_META_PREFIXES):
            continue
        renamed = _first_match(_COMPILED_RULES, key)
        stacked = _first_match(_COMPILED_STACKED, key) if renamed is None else None
        if renamed is not None:
            match, targets = renamed
            for index, target in enumerate(targets):
                # Copies for later targets, so that no two model tensors share storage.
                converted[match.expand(target)] = tensor if index == 0 else tensor.clone()
        elif stacked is not None:
            match, (target, _) = stacked
            stacked_rows.setdefault(target, {})[int(match.group(1))] = tensor
        else:
            unknown.append(key)

    if unknown:
        raise ModelLoadError(
            f"The checkpoint holds {len(unknown)} key(s) that are not SAM 2 image-model weights: "
            f"{_key_list(unknown)}. Expected a Meta SAM 2 / SAM 2.1 checkpoint "
            f"({{'model': SAM2Base.state_dict()}}). {_MISMATCH_HINT}"
        )

    for _, (target, rows) in _COMPILED_STACKED:
        pieces = stacked_rows.get(target, {})
        if not pieces:
            continue
        if sorted(pieces) != list(range(rows)):
            raise ModelLoadError(
                f"The checkpoint holds rows {sorted(pieces)} of {target}, expected rows 0 to "
                f"{rows - 1}. {_MISMATCH_HINT}"
            )
        # rows x [1,C] -> [rows,C]
        converted[target] = torch.cat([pieces[row] for row in range(rows)], dim=0)
    return converted


def check_state_dict_fits(
    converted: Mapping[str, torch.Tensor], expected_shapes: Mapping[str, torch.Size]
) -> None:
    """Checks that converted weights fill a model exactly: no key missing, extra or misshapen.

    Args:
        converted: Output of :func:`convert_meta_state_dict`.
        expected_shapes: Shape of every entry of the target model's state dict.

    Raises:
        ModelLoadError: Naming the missing, unexpected and misshapen keys; this is what a
            checkpoint of another size (tiny weights, large config) produces.
    """
    missing = [key for key in expected_shapes if key not in converted]
    unexpected = [key for key in converted if key not in expected_shapes]
    misshapen = [
        f"{key} (checkpoint {list(converted[key].shape)}, config {list(expected_shapes[key])})"
        for key in converted
        if key in expected_shapes and converted[key].shape != expected_shapes[key]
    ]
    if not (missing or unexpected or misshapen):
        return
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} weight(s) the config needs are absent: {_key_list(missing)}"
        )
    if unexpected:
        problems.append(
            f"{len(unexpected)} weight(s) have no place in the config: {_key_list(unexpected)}"
        )
    if misshapen:
        problems.append(
            f"{len(misshapen)} weight(s) have the wrong shape: {_key_list(misshapen, 5)}"
        )
    raise ModelLoadError(f"{'; '.join(problems)}. {_MISMATCH_HINT}")


def guess_meta_variants(meta_state: Mapping[str, torch.Tensor]) -> tuple[Sam2Variant, ...]:
    """The variants a Meta state dict looks like, judged by its Hiera width and depth.

    Args:
        meta_state: The ``"model"`` entry of a Meta checkpoint.

    Returns:
        Matching variants (a SAM 2 and a SAM 2.1 one share each architecture); empty when none fits.
    """
    patch_weight = meta_state.get("image_encoder.trunk.patch_embed.proj.weight")
    block_pattern = re.compile(r"image_encoder\.trunk\.blocks\.(\d+)\.")
    block_indices = {
        int(match.group(1)) for key in meta_state if (match := block_pattern.match(key)) is not None
    }
    if patch_weight is None or not block_indices:
        return ()
    return tuple(
        variant
        for variant in list_variants()
        if variant.architecture.hidden_size == patch_weight.shape[0]
        and sum(variant.architecture.blocks_per_stage) == max(block_indices) + 1
    )
