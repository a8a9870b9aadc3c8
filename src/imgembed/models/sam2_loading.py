"""Loading SAM 2 weights from every place users keep them, into ``transformers.Sam2Model``.

``weights`` is one of:

- ``None``: the variant's own hub repository (``facebook/sam2.1-hiera-tiny``).
- ``"dummy"``: random weights of the real architecture, seeded, logged loudly as untrained.
- a folder: Hugging Face format (``config.json`` + safetensors), or one holding a Meta ``.pt``.
- a ``.pt``/``.pth`` file: Meta's original checkpoint, architecture from ``meta_config`` or the
  model name.
- ``org/name``: a hub repository, fetched into (or read from) the standard Hugging Face cache. It
  may hold Hugging Face format weights (newer ``facebook/sam2*`` repos, whose ``config.json`` says
  ``sam2_video``; their image-path weights load into ``Sam2Model``) or a Meta ``.pt``.

Every failure raises one :class:`~imgembed.errors.ModelLoadError` that says what was tried and what
to set. This module reads no environment: ``huggingface_hub`` reads ``HF_HUB_OFFLINE``,
``HF_ENDPOINT`` and ``HF_HUB_CACHE`` once, at import, so callers pass ``hub_offline``,
``hub_endpoint`` and ``hub_cache_dir`` explicitly. Hub ids, snapshots and ``from_pretrained`` are
:mod:`imgembed.models.hub`'s, shared with the SigLIP 2 loader.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import Sam2Model

from imgembed.errors import ModelLoadError, UnknownModelError
from imgembed.models.hub import (
    HubAccess,
    download_snapshot,
    explained_load_errors,
    load_pretrained,
    local_path_or_hub_id,
    read_json_object,
)
from imgembed.models.sam2_meta import (
    check_state_dict_fits,
    convert_meta_state_dict,
    guess_meta_variants,
    read_meta_checkpoint,
)
from imgembed.models.sam2_registry import (
    architecture_of,
    build_sam2_config,
    resolve_variant,
    variants_with,
)
from imgembed.models.sam2_streamline import streamline_attention
from imgembed.models.sam2_variants import Sam2Variant

logger = logging.getLogger(__name__)

WeightsSource = Literal["hub", "folder", "meta_checkpoint", "dummy"]
DUMMY_WEIGHTS = "dummy"
"""The ``weights`` value that asks for random, untrained weights."""
TRANSFORMERS_MODEL_TYPES = ("sam2", "sam2_video")
"""``config.json`` model types whose image-path weights ``Sam2Model.from_pretrained`` takes."""
META_CHECKPOINT_SUFFIXES = (".pt", ".pth")
_HUB_CONFIG_PATTERNS = ["config.json"]
_HUB_TRANSFORMERS_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json"]
_HUB_META_PATTERNS = ["*.pt", "*.pth"]


@dataclass(frozen=True)
class LoadedSam2:
    """A SAM 2 model ready for inference, with where its weights came from.

    Attributes:
        model: The model in eval mode, float32 parameters, on the requested device.
        variant: The variant it was built as.
        source: What kind of place the weights came from.
        weights_location: The hub id, the file or folder path, or ``"dummy"``.
        untrained: ``True`` for random weights: outputs are meaningless, only shapes and speed
            are real.
    """

    model: Sam2Model
    variant: Sam2Variant
    source: WeightsSource
    weights_location: str
    untrained: bool


def _how_to_fix(variant: Sam2Variant) -> str:
    """The settings that would give a working load of ``variant``, appended to every load error."""
    return (
        f"To fix: set --weights (or SAM2_CHECKPOINT) to Meta's checkpoint "
        f"/path/to/{variant.meta_checkpoint} (with SAM2_MODEL_CFG {variant.meta_config}), to a "
        f"Hugging Face format folder, or to a hub id such as {variant.hub_id} (which needs network "
        "access or that repository in the Hugging Face cache); or set --weights dummy to run "
        "untrained."
    )


def _names(variants: tuple[Sam2Variant, ...]) -> str:
    """Variant names joined for an error message."""
    return " or ".join(v.name for v in variants) if variants else "no released SAM 2 variant"


def _resolve(name: str, what: str) -> Sam2Variant:
    """Resolves a model or config name, turning an unknown name into a load error."""
    try:
        return resolve_variant(name)
    except UnknownModelError as error:
        raise ModelLoadError(
            f"Cannot load SAM 2: the {what} is not known. {error.message}"
        ) from error


def _build_dummy(variant: Sam2Variant, seed: int) -> Sam2Model:
    """Random weights of the real architecture, the same for the same seed."""
    config = build_sam2_config(variant)
    # A private copy of the CPU generator: the caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam2Model(config)
    logger.warning(
        "UNTRAINED MODEL: %s is running with RANDOM weights (weights=%r, seed %d). Its features "
        "and masks are meaningless; use it only to exercise the service and measure speed. For "
        "real weights set --weights to a checkpoint, a folder or a hub id such as %s.",
        variant.name,
        DUMMY_WEIGHTS,
        seed,
        variant.hub_id,
    )
    return model


def _load_meta_checkpoint(path: Path, variant: Sam2Variant) -> Sam2Model:
    """Builds ``variant``'s architecture and fills it from a Meta checkpoint file."""
    meta_state = read_meta_checkpoint(path)
    try:
        converted = convert_meta_state_dict(meta_state)
        # No random initialisation: the model is built without storage and takes the loaded tensors.
        with torch.device("meta"):
            model = Sam2Model(build_sam2_config(variant))
        check_state_dict_fits(
            converted, {key: tensor.shape for key, tensor in model.state_dict().items()}
        )
    except ModelLoadError as error:
        raise ModelLoadError(
            f"The Meta checkpoint {path} does not fit {variant.name} (config "
            f"{variant.meta_config}); it looks like {_names(guess_meta_variants(meta_state))}. "
            f"{error.message}"
        ) from error
    float_state = {key: tensor.to(torch.float32) for key, tensor in converted.items()}
    model.load_state_dict(float_state, strict=True, assign=True)
    left_empty = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if left_empty:
        raise ModelLoadError(
            f"Loading {path} left {len(left_empty)} tensor(s) of {variant.name} without values "
            f"({', '.join(left_empty[:5])}); this transformers version builds Sam2Model "
            "differently from what imgembed expects. Load a Hugging Face format folder instead."
        )
    return model


def _transformers_model_type(folder: Path) -> str | None:
    """The ``model_type`` of a folder's ``config.json``, or ``None`` when it has no such config."""
    config = read_json_object(folder / "config.json")
    model_type = config.get("model_type") if config else None
    return model_type if isinstance(model_type, str) else None


def _load_transformers_folder(folder: Path, variant: Sam2Variant) -> Sam2Model:
    """Loads a Hugging Face format folder and checks it holds ``variant``'s architecture."""
    model = load_pretrained(
        Sam2Model, folder, what="Hugging Face format SAM 2 weights", where=str(folder)
    )
    found = architecture_of(model.config)
    if found != variant.architecture:
        raise ModelLoadError(
            f"The weights in {folder} are {_names(variants_with(found))}, not {variant.name}: "
            "set the model name to match the weights, or use weights of the named model."
        )
    return model


def _pick_meta_checkpoint(folder: Path, variant: Sam2Variant) -> Path | None:
    """The Meta checkpoint file of a folder: the variant's own name first, else the only one."""
    candidates = sorted(
        path for suffix in META_CHECKPOINT_SUFFIXES for path in folder.glob(f"*{suffix}")
    )
    if not candidates:
        return None
    named = [path for path in candidates if path.name == variant.meta_checkpoint]
    if named:
        return named[0]
    if len(candidates) == 1:
        return candidates[0]
    raise ModelLoadError(
        f"The folder {folder} holds several checkpoints ({', '.join(p.name for p in candidates)}) "
        f"and none is named {variant.meta_checkpoint}. Point --weights at one of the files."
    )


def _load_folder(
    folder: Path, variant: Sam2Variant, described_as: str
) -> tuple[Sam2Model, Path | None]:
    """Loads whichever format a folder (local, or a hub snapshot) holds.

    Returns:
        The model, and the Meta checkpoint file it came from (``None`` for Hugging Face format).
    """
    model_type = _transformers_model_type(folder)
    if model_type in TRANSFORMERS_MODEL_TYPES:
        return _load_transformers_folder(folder, variant), None
    checkpoint = _pick_meta_checkpoint(folder, variant)
    if checkpoint is not None:
        return _load_meta_checkpoint(checkpoint, variant), checkpoint
    present = sorted(path.name for path in folder.iterdir())[:10] if folder.is_dir() else []
    config_note = f" (its config.json has model_type {model_type!r})" if model_type else ""
    raise ModelLoadError(
        f"{described_as} holds no usable SAM 2 weights{config_note}: expected a config.json "
        f"with model_type one of {list(TRANSFORMERS_MODEL_TYPES)} plus safetensors, or a Meta "
        f"checkpoint such as {variant.meta_checkpoint}; found {present or 'nothing'}."
    )


def fetch_sam2_hub(repo_id: str, hub: HubAccess, *, local_dir: Path | None = None) -> Path:
    """Fetches the files of a SAM 2 hub repository that the loader reads, and no others.

    ``config.json`` first; then, when it names a ``transformers`` SAM 2 model, the safetensors
    (and their index), else Meta's ``.pt``/``.pth`` checkpoints. With ``hub.offline`` the cache is
    read instead. Both the loader and ``imgembed download`` call this, so a download holds what a
    later offline start reads.

    Args:
        repo_id: The repository, ``org/name``.
        hub: How to reach the hub.
        local_dir: A plain folder to write the files into instead of the Hugging Face cache.

    Returns:
        The snapshot folder (or ``local_dir``).

    Raises:
        ModelLoadError: The repository is absent or the hub unreachable (see
            :func:`~imgembed.models.hub.download_snapshot`).
    """
    snapshot = download_snapshot(
        repo_id, _HUB_CONFIG_PATTERNS, hub, weights_of="SAM 2", local_dir=local_dir
    )
    if _transformers_model_type(snapshot) in TRANSFORMERS_MODEL_TYPES:
        patterns = _HUB_TRANSFORMERS_PATTERNS
    else:
        patterns = _HUB_META_PATTERNS
    return download_snapshot(repo_id, patterns, hub, weights_of="SAM 2", local_dir=local_dir)


def _load_hub(repo_id: str, variant: Sam2Variant, hub: HubAccess) -> Sam2Model:
    """Loads a hub repository in either format, downloading only the format it is read in."""
    snapshot = fetch_sam2_hub(repo_id, hub)
    model, _ = _load_folder(snapshot, variant, f"The hub repository {repo_id!r} ({snapshot})")
    return model


def _load_weights(
    variant: Sam2Variant, weights: str | None, hub: HubAccess, dummy_seed: int
) -> tuple[Sam2Model, WeightsSource, str]:
    """Dispatches on what ``weights`` names; see :func:`load_sam2`.

    Returns:
        The model on the CPU, the kind of source and the location loaded from.
    """
    if weights == DUMMY_WEIGHTS:
        return _build_dummy(variant, dummy_seed), "dummy", DUMMY_WEIGHTS
    if weights is None:
        return _load_hub(variant.hub_id, variant, hub), "hub", variant.hub_id
    expanded = Path(weights).expanduser()
    is_meta_name = expanded.suffix.lower() in META_CHECKPOINT_SUFFIXES
    if is_meta_name and not expanded.exists():
        raise ModelLoadError(f"The Meta checkpoint {expanded} does not exist.")
    place = local_path_or_hub_id(weights, looked_for="file or folder")
    if isinstance(place, str):
        return _load_hub(place, variant, hub), "hub", place
    if place.is_dir():
        model, checkpoint = _load_folder(place, variant, f"The folder {place}")
        if checkpoint is not None:
            return model, "meta_checkpoint", str(checkpoint)
        return model, "folder", str(place)
    if not is_meta_name:
        raise ModelLoadError(
            f"{place} is neither a folder nor a Meta checkpoint ending in .pt or .pth; for a "
            "Hugging Face format model, point at its folder."
        )
    if not place.is_file():
        raise ModelLoadError(f"{place} is not a file.")
    return _load_meta_checkpoint(place, variant), "meta_checkpoint", str(place)


def load_sam2(
    variant_name: str,
    weights: str | None,
    meta_config: str | None = None,
    *,
    device: torch.device,
    hub_cache_dir: str | None = None,
    hub_offline: bool = False,
    hub_endpoint: str | None = None,
    dummy_seed: int = 0,
) -> LoadedSam2:
    """Loads a SAM 2 image model for inference.

    Args:
        variant_name: Which model, in any spelling that
            :func:`~imgembed.models.sam2_registry.resolve_variant` accepts (``sam2.1-hiera-tiny``,
            ``sam2_hiera_l.yaml``, ...).
        weights: ``None`` for the variant's hub repository, ``"dummy"`` for random untrained
            weights, a Hugging Face format folder, a folder or file holding a Meta ``.pt``/``.pth``
            checkpoint, or a hub id ``org/name``.
        meta_config: Meta's config name for a ``.pt`` checkpoint
            (``configs/sam2.1/sam2.1_hiera_t.yaml``, ``sam2_configs/sam2_hiera_l.yaml``). When
            given it must name the same variant as ``variant_name``.
        device: Where the model runs.
        hub_cache_dir: Hugging Face cache folder; ``None`` for the default one.
        hub_offline: Read the hub cache only and never contact the hub (what
            ``HF_HUB_OFFLINE=1`` means).
        hub_endpoint: Hub address, for mirrors; ``None`` for the default one.
        dummy_seed: Seed of the random weights when ``weights`` is ``"dummy"``.

    Returns:
        The model in eval mode with float32 parameters on ``device``, and where it came from.

    Raises:
        ModelLoadError: For every failure: unknown names, missing or unusable files, corrupt
            checkpoints, checkpoints of another size, hub repositories that are absent or
            unreachable.
    """
    variant = _resolve(variant_name, "model name")
    if meta_config is not None:
        config_variant = _resolve(meta_config, "Meta config name")
        if config_variant != variant:
            raise ModelLoadError(
                f"The Meta config {meta_config!r} is {config_variant.name} but the model is "
                f"{variant.name}. Set the model name to {config_variant.name}, or the config to "
                f"{variant.meta_config}, or leave the config unset to follow the model name."
            )
    hub = HubAccess(cache_dir=hub_cache_dir, offline=hub_offline, endpoint=hub_endpoint)
    with explained_load_errors(variant.name, weights, _how_to_fix(variant)):
        model, source, location = _load_weights(variant, weights, hub, dummy_seed)
    model = model.to(device=device, dtype=torch.float32).eval()
    streamline_attention(model)
    logger.info("Loaded %s from %s %s onto %s.", variant.name, source, location, device)
    return LoadedSam2(
        model=model,
        variant=variant,
        source=source,
        weights_location=location,
        untrained=source == "dummy",
    )
