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
``hub_endpoint`` and ``hub_cache_dir`` explicitly.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HTTPError as HubHTTPError
from safetensors import SafetensorError
from transformers import Sam2Model

from imgembed.errors import ModelLoadError, UnknownModelError
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
_HUB_ERRORS = (OSError, ValueError, HubHTTPError)
_FROM_PRETRAINED_ERRORS = (OSError, ValueError, RuntimeError, KeyError, SafetensorError)


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
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    return model_type if isinstance(model_type, str) else None


def _load_transformers_folder(folder: Path, variant: Sam2Variant) -> Sam2Model:
    """Loads a Hugging Face format folder and checks it holds ``variant``'s architecture."""
    try:
        model, loading_info = Sam2Model.from_pretrained(
            folder, dtype=torch.float32, local_files_only=True, output_loading_info=True
        )
    except _FROM_PRETRAINED_ERRORS as error:
        raise ModelLoadError(
            f"Cannot load the Hugging Face format SAM 2 weights in {folder}: "
            f"{type(error).__name__}: {str(error).rstrip('. ')}."
        ) from error
    unfilled = sorted(loading_info["missing_keys"]) + sorted(loading_info["mismatched_keys"])
    if unfilled:
        raise ModelLoadError(
            f"The weights in {folder} leave {len(unfilled)} Sam2Model weight(s) unfilled "
            f"({', '.join(map(str, unfilled[:10]))}): the checkpoint does not match its config."
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


def _download(
    repo_id: str,
    patterns: list[str],
    *,
    cache_dir: str | None,
    offline: bool,
    endpoint: str | None,
) -> Path:
    """Fetches the files of a hub repository that match ``patterns`` into the Hugging Face cache."""
    try:
        snapshot = snapshot_download(
            repo_id,
            allow_patterns=patterns,
            cache_dir=cache_dir,
            local_files_only=offline,
            endpoint=endpoint,
        )
    except _HUB_ERRORS as error:
        where = f"the cache {cache_dir}" if cache_dir else "the default Hugging Face cache"
        if offline or hub_constants.HF_HUB_OFFLINE:
            mode = "offline, the hub was not contacted"
            remedy = (
                " To download it, allow hub access (unset HF_HUB_OFFLINE) on a networked machine."
            )
        else:
            mode = f"hub {endpoint or hub_constants.ENDPOINT}"
            remedy = ""
        raise ModelLoadError(
            f"Cannot get SAM 2 weights from hub repository {repo_id!r} ({mode}; looked in "
            f"{where}): {type(error).__name__}: {str(error).rstrip('. ')}.{remedy}"
        ) from error
    return Path(snapshot)


def _load_hub(
    repo_id: str,
    variant: Sam2Variant,
    *,
    cache_dir: str | None,
    offline: bool,
    endpoint: str | None,
) -> Sam2Model:
    """Loads a hub repository in either format, downloading only the format it is read in."""
    options = {"cache_dir": cache_dir, "offline": offline, "endpoint": endpoint}
    snapshot = _download(repo_id, _HUB_CONFIG_PATTERNS, **options)
    if _transformers_model_type(snapshot) in TRANSFORMERS_MODEL_TYPES:
        snapshot = _download(repo_id, _HUB_TRANSFORMERS_PATTERNS, **options)
    else:
        snapshot = _download(repo_id, _HUB_META_PATTERNS, **options)
    model, _ = _load_folder(snapshot, variant, f"The hub repository {repo_id!r} ({snapshot})")
    return model


def _is_hub_id(weights: str) -> bool:
    """Whether ``weights`` has the shape ``org/name`` rather than that of a file path."""
    parts = weights.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not weights.startswith((".", "~"))
        and "\\" not in weights
    )


def _load_weights(
    variant: Sam2Variant,
    weights: str | None,
    *,
    cache_dir: str | None,
    offline: bool,
    endpoint: str | None,
    dummy_seed: int,
) -> tuple[Sam2Model, WeightsSource, str]:
    """Dispatches on what ``weights`` names; see :func:`load_sam2`.

    Returns:
        The model on the CPU, the kind of source and the location loaded from.
    """
    hub_options = {"cache_dir": cache_dir, "offline": offline, "endpoint": endpoint}
    if weights == DUMMY_WEIGHTS:
        return _build_dummy(variant, dummy_seed), "dummy", DUMMY_WEIGHTS
    if weights is None:
        return _load_hub(variant.hub_id, variant, **hub_options), "hub", variant.hub_id
    path = Path(weights).expanduser()
    if path.is_dir():
        model, checkpoint = _load_folder(path, variant, f"The folder {path}")
        if checkpoint is not None:
            return model, "meta_checkpoint", str(checkpoint)
        return model, "folder", str(path)
    if path.suffix.lower() in META_CHECKPOINT_SUFFIXES:
        if not path.exists():
            raise ModelLoadError(f"The Meta checkpoint {path} does not exist.")
        if not path.is_file():
            raise ModelLoadError(f"{path} is not a file.")
        return _load_meta_checkpoint(path, variant), "meta_checkpoint", str(path)
    if path.exists():
        raise ModelLoadError(
            f"{path} is neither a folder nor a Meta checkpoint ending in .pt or .pth; for a "
            "Hugging Face format model, point at its folder."
        )
    if _is_hub_id(weights):
        return _load_hub(weights, variant, **hub_options), "hub", weights
    raise ModelLoadError(
        f"No file or folder {path} exists, and {weights!r} is not a hub id (org/name)."
    )


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
    try:
        model, source, location = _load_weights(
            variant,
            weights,
            cache_dir=hub_cache_dir,
            offline=hub_offline,
            endpoint=hub_endpoint,
            dummy_seed=dummy_seed,
        )
    except ModelLoadError as error:
        raise ModelLoadError(
            f"Cannot load {variant.name} from weights={weights!r}: {error.message} "
            f"{_how_to_fix(variant)}"
        ) from error
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
