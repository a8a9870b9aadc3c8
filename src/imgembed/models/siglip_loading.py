"""Loading SigLIP 2 weights, tokenizer and image settings from every place users keep them.

``weights`` is one of:

- ``None``: the variant's own hub repository (``google/siglip2-base-patch16-224``).
- ``"dummy"``: random weights of the real architecture, seeded, logged loudly as untrained, with a
  stand-in tokenizer (:mod:`imgembed.models.siglip_dummy`).
- a folder in Hugging Face format: ``config.json`` and safetensors, the tokenizer files and the
  image processor's ``preprocessor_config.json`` (or ``processor_config.json``), as
  ``save_pretrained`` of the model and of its processor write them.
- ``org/name``: a hub repository, fetched into (or read from) the standard Hugging Face cache.

FixRes checkpoints (``model_type: siglip``) load as ``transformers.SiglipModel``, NaFlex ones
(``model_type: siglip2``) as ``transformers.Siglip2Model``. The image settings (resize filter,
mean, std, NaFlex patch budget) come from the checkpoint's own processor config when it has one.

Every failure raises one :class:`~imgembed.errors.ModelLoadError` that says what was tried and what
to set. Like :mod:`imgembed.models.sam2_loading`, this module reads no environment: callers pass
``hub_offline``, ``hub_endpoint`` and ``hub_cache_dir`` explicitly. Hub ids, snapshots and
``from_pretrained`` are :mod:`imgembed.models.hub`'s, shared with the SAM 2 loader.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Siglip2Model,
    SiglipModel,
)

from imgembed.errors import ModelLoadError, UnknownModelError
from imgembed.models.hub import (
    HubAccess,
    describe_error,
    download_snapshot,
    explained_load_errors,
    load_pretrained,
    local_path_or_hub_id,
    read_json_object,
)
from imgembed.models.siglip_dummy import (
    DUMMY_WEIGHTS,
    build_dummy_model,
    build_stand_in_tokenizer,
)
from imgembed.models.siglip_registry import (
    architecture_of_config,
    architecture_of_variant,
    resolve_siglip_variant,
    siglip_variants_with,
)
from imgembed.models.siglip_variants import (
    RESAMPLE_BY_CODE,
    ImageProcessing,
    SiglipVariant,
)

logger = logging.getLogger(__name__)

SiglipWeightsSource = Literal["hub", "folder", "dummy"]
SiglipModelClass = SiglipModel | Siglip2Model
_MODEL_CLASSES: dict[str, type[SiglipModel] | type[Siglip2Model]] = {
    "siglip": SiglipModel,
    "siglip2": Siglip2Model,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
"""A folder needs one of these (plus ``tokenizer_config.json``) for its tokenizer to load."""
_PROCESSOR_CONFIGS = ("preprocessor_config.json", "processor_config.json")
_HUB_PATTERNS = [
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    *_PROCESSOR_CONFIGS,
]
_TOKENIZER_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError)


@dataclass(frozen=True)
class LoadedSiglip:
    """A SigLIP 2 model ready for inference, with its tokenizer and where it came from.

    Attributes:
        model: ``SiglipModel`` (FixRes) or ``Siglip2Model`` (NaFlex) in eval mode, float32
            parameters, on the requested device.
        tokenizer: The checkpoint's tokenizer (Gemma's for released models); for ``dummy``
            weights the stand-in of
            :func:`~imgembed.models.siglip_dummy.build_stand_in_tokenizer`.
        variant: The variant it was built as.
        image_processing: How images become input, from the checkpoint's processor config when it
            has one, else the variant's defaults.
        source: What kind of place the weights came from.
        weights_location: The hub id, the folder path, or ``"dummy"``.
        untrained: ``True`` for random weights: embeddings are meaningless, only shapes and speed
            are real.
    """

    model: SiglipModelClass
    tokenizer: PreTrainedTokenizerBase
    variant: SiglipVariant
    image_processing: ImageProcessing
    source: SiglipWeightsSource
    weights_location: str
    untrained: bool

    @property
    def text_max_length(self) -> int:
        """Tokens every text is padded or cut to."""
        return self.variant.text_max_length

    @property
    def embedding_dim(self) -> int:
        """Length of the image and text embeddings."""
        return self.variant.embedding_dim


def _how_to_fix(variant: SiglipVariant) -> str:
    """The settings that would give a working load of ``variant``, appended to every load error."""
    return (
        "To fix: set --weights to a Hugging Face format folder (config.json, model.safetensors, "
        "the tokenizer files and preprocessor_config.json, as save_pretrained of the model and "
        f"its processor writes them) or to a hub id such as {variant.hub_id} (which needs network "
        "access or that repository in the Hugging Face cache); or set --weights dummy to run "
        "untrained."
    )


def _names(variants: tuple[SiglipVariant, ...]) -> str:
    """Variant names joined for an error message."""
    return " or ".join(v.name for v in variants) if variants else "no released SigLIP 2 variant"


def _load_model(folder: Path, variant: SiglipVariant, described_as: str) -> SiglipModelClass:
    """Loads the weights of a Hugging Face format folder and checks they are ``variant``'s."""
    config = read_json_object(folder / "config.json")
    model_type = config.get("model_type") if config else None
    if model_type not in _MODEL_CLASSES:
        present = sorted(path.name for path in folder.iterdir())[:10] if folder.is_dir() else []
        found = f"its config.json has model_type {model_type!r}" if config else "no config.json"
        raise ModelLoadError(
            f"{described_as} holds no SigLIP weights ({found}; files: {present or 'none'}): "
            f"expected a config.json with model_type {variant.model_type!r} and safetensors."
        )
    if model_type != variant.model_type:
        raise ModelLoadError(
            f"{described_as} holds a {_MODEL_CLASSES[model_type].__name__} checkpoint "
            f"(model_type {model_type!r}) but {variant.name} is a {variant.family} model "
            f"({variant.architecture_class}, model_type {variant.model_type!r}); name a "
            f"{'NaFlex' if model_type == 'siglip2' else 'FixRes'} model for these weights."
        )
    model = load_pretrained(
        _MODEL_CLASSES[model_type], folder, what="SigLIP weights", where=described_as
    )
    try:
        found = architecture_of_config(model.config)
    except ValueError as error:
        raise ModelLoadError(f"{described_as} has an unsupported config: {error}.") from error
    if found != architecture_of_variant(variant):
        raise ModelLoadError(
            f"The weights in {described_as} are {_names(siglip_variants_with(found))} (patch "
            f"{found.patch_size}, image size {found.image_size}, vision width "
            f"{found.vision.hidden_size} x {found.vision.num_hidden_layers} layers), not "
            f"{variant.name}: set the model name to match the weights, or use weights of the "
            "named model."
        )
    return model


def _load_tokenizer(
    folder: Path, variant: SiglipVariant, described_as: str
) -> PreTrainedTokenizerBase:
    """The folder's own tokenizer, checked to fit the model's vocabulary."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{described_as} holds no tokenizer (expected {' or '.join(TOKENIZER_FILES)} with "
            "tokenizer_config.json, as the processor's save_pretrained writes them)."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except _TOKENIZER_ERRORS as error:
        raise ModelLoadError(
            f"Cannot load the tokenizer in {described_as}: {describe_error(error)}"
        ) from error
    if len(tokenizer) > variant.vocab_size:
        raise ModelLoadError(
            f"The tokenizer in {described_as} has {len(tokenizer)} tokens but the model's "
            f"vocabulary has {variant.vocab_size}: they do not belong together."
        )
    if tokenizer.pad_token_id is None:
        raise ModelLoadError(
            f"The tokenizer in {described_as} has no padding token; SigLIP pads every text to "
            f"{variant.text_max_length} tokens."
        )
    return tokenizer


def _image_processor_config(folder: Path) -> dict[str, Any] | None:
    """The image processor settings a folder saved: ``preprocessor_config.json`` (what the hub
    repositories hold) or the ``image_processor`` entry of ``processor_config.json`` (what
    ``transformers`` 5 writes)."""
    legacy = read_json_object(folder / "preprocessor_config.json")
    if legacy is not None:
        return legacy
    combined = read_json_object(folder / "processor_config.json")
    nested = combined.get("image_processor") if combined else None
    return nested if isinstance(nested, dict) else None


def _image_processing(folder: Path, variant: SiglipVariant, described_as: str) -> ImageProcessing:
    """The checkpoint's image settings, checked to be ones imgembed reproduces exactly."""
    defaults = variant.image_processing()
    saved = _image_processor_config(folder)
    if saved is None:
        logger.info(
            "%s has no image processor config; using %s's released settings.",
            described_as,
            variant.name,
        )
        return defaults
    switched_off = [
        flag for flag in ("do_resize", "do_rescale", "do_normalize") if saved.get(flag) is False
    ]
    if switched_off:
        raise ModelLoadError(
            f"The image processor config of {described_as} turns off {', '.join(switched_off)}; "
            "imgembed reproduces the SigLIP processor with resize, rescale and normalise on."
        )
    resample_code = saved.get("resample", 2)
    if resample_code not in RESAMPLE_BY_CODE:
        raise ModelLoadError(
            f"The image processor config of {described_as} asks for resample={resample_code!r}; "
            f"expected one of Pillow's filters {sorted(RESAMPLE_BY_CODE)}."
        )
    try:
        settings = replace(
            defaults,
            resample=RESAMPLE_BY_CODE[resample_code],
            rescale_factor=float(saved.get("rescale_factor", defaults.rescale_factor)),
            image_mean=_three(saved.get("image_mean", defaults.image_mean)),
            image_std=_three(saved.get("image_std", defaults.image_std)),
        )
    except (TypeError, ValueError) as error:
        raise ModelLoadError(
            f"The image processor config of {described_as} is malformed: {error}."
        ) from error
    if variant.family == "fixres":
        size = saved.get("size") or {}
        saved_hw = (size.get("height"), size.get("width")) if isinstance(size, dict) else None
        if saved_hw != (variant.image_size, variant.image_size):
            raise ModelLoadError(
                f"The image processor config of {described_as} resizes to {size!r}, not to the "
                f"model's {variant.image_size}x{variant.image_size}."
            )
    else:
        if saved.get("patch_size", variant.patch_size) != variant.patch_size:
            raise ModelLoadError(
                f"The image processor config of {described_as} cuts patches of "
                f"{saved.get('patch_size')} pixels, the model takes {variant.patch_size}."
            )
        budget = saved.get("max_num_patches", defaults.max_num_patches)
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise ModelLoadError(
                f"The image processor config of {described_as} has max_num_patches "
                f"{budget!r}; expected a positive number of patches such as 256."
            )
        settings = replace(settings, max_num_patches=budget)
    return settings


def _three(values: object) -> tuple[float, float, float]:
    """Three per-channel floats, or one float for all channels."""
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    if not isinstance(values, (list, tuple)) or len(values) != 3:
        raise ValueError(f"expected three per-channel values, got {values!r}")
    first, second, third = (float(value) for value in values)
    return (first, second, third)


def _load_folder(
    folder: Path, variant: SiglipVariant, described_as: str
) -> tuple[SiglipModelClass, PreTrainedTokenizerBase, ImageProcessing]:
    """Model, tokenizer and image settings of a local folder or hub snapshot."""
    model = _load_model(folder, variant, described_as)
    tokenizer = _load_tokenizer(folder, variant, described_as)
    return model, tokenizer, _image_processing(folder, variant, described_as)


def fetch_siglip_hub(repo_id: str, hub: HubAccess, *, local_dir: Path | None = None) -> Path:
    """Fetches the files of a SigLIP 2 hub repository that the loader reads, and no others.

    ``config.json``, the safetensors (and their index), the tokenizer files and the image
    processor config. With ``hub.offline`` the cache is read instead. Both the loader and
    ``imgembed download`` call this, so a download holds what a later offline start reads.

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
    return download_snapshot(
        repo_id, _HUB_PATTERNS, hub, weights_of="SigLIP 2", local_dir=local_dir
    )


def _load_weights(
    variant: SiglipVariant, weights: str | None, hub: HubAccess, dummy_seed: int
) -> tuple[SiglipModelClass, PreTrainedTokenizerBase, ImageProcessing, SiglipWeightsSource, str]:
    """Dispatches on what ``weights`` names; see :func:`load_siglip`."""
    if weights == DUMMY_WEIGHTS:
        model = build_dummy_model(variant, dummy_seed)
        tokenizer = build_stand_in_tokenizer(variant.vocab_size)
        return model, tokenizer, variant.image_processing(), "dummy", DUMMY_WEIGHTS
    repo_id = variant.hub_id
    if weights is not None:
        place = local_path_or_hub_id(weights, looked_for="folder")
        if isinstance(place, str):
            repo_id = place
        elif place.is_dir():
            return (*_load_folder(place, variant, f"The folder {place}"), "folder", str(place))
        else:
            raise ModelLoadError(
                f"{place} is a file; SigLIP weights are a Hugging Face format folder: point at "
                "the folder holding config.json."
            )
    snapshot = fetch_siglip_hub(repo_id, hub)
    loaded = _load_folder(snapshot, variant, f"The hub repository {repo_id!r} ({snapshot})")
    return (*loaded, "hub", repo_id)


def load_siglip(
    name: str | SiglipVariant,
    weights: str | None,
    *,
    device: torch.device,
    hub_cache_dir: str | None = None,
    hub_offline: bool = False,
    hub_endpoint: str | None = None,
    dummy_seed: int = 0,
) -> LoadedSiglip:
    """Loads a SigLIP 2 model, its tokenizer and its image settings for inference.

    Args:
        name: Which model: a name :func:`~imgembed.models.siglip_registry.resolve_siglip_variant`
            accepts (``siglip2-base-patch16-224``, ``google/siglip2-large-patch16-512``), or a
            :class:`~imgembed.models.siglip_variants.SiglipVariant` for an architecture outside
            the released table.
        weights: ``None`` for the variant's hub repository, ``"dummy"`` for random untrained
            weights, a Hugging Face format folder, or a hub id ``org/name``.
        device: Where the model runs.
        hub_cache_dir: Hugging Face cache folder; ``None`` for the default one.
        hub_offline: Read the hub cache only and never contact the hub (what
            ``HF_HUB_OFFLINE=1`` means).
        hub_endpoint: Hub address, for mirrors; ``None`` for the default one.
        dummy_seed: Seed of the random weights when ``weights`` is ``"dummy"``.

    Returns:
        The model in eval mode with float32 parameters on ``device``, its tokenizer, its image
        settings, and where it came from.

    Raises:
        ModelLoadError: For every failure: unknown names, missing or unusable files, weights of
            another model, hub repositories that are absent or unreachable.
    """
    if isinstance(name, SiglipVariant):
        variant = name
    else:
        try:
            variant = resolve_siglip_variant(name)
        except UnknownModelError as error:
            raise ModelLoadError(
                f"Cannot load SigLIP 2: the model name is not known. {error.message}"
            ) from error
    hub = HubAccess(cache_dir=hub_cache_dir, offline=hub_offline, endpoint=hub_endpoint)
    with explained_load_errors(variant.name, weights, _how_to_fix(variant)):
        model, tokenizer, image_processing, source, location = _load_weights(
            variant, weights, hub, dummy_seed
        )
    model = model.to(device=device, dtype=torch.float32).eval()
    logger.info("Loaded %s from %s %s onto %s.", variant.name, source, location, device)
    return LoadedSiglip(
        model=model,
        tokenizer=tokenizer,
        variant=variant,
        image_processing=image_processing,
        source=source,
        weights_location=location,
        untrained=source == "dummy",
    )
