"""Finding a SAM 2 variant by any name users give it, and building its ``transformers`` config.

Users name a SAM 2 model in many ways: the canonical name (``sam2.1-hiera-tiny``), the hub id
(``facebook/sam2.1-hiera-tiny``), Meta's checkpoint file (``./checkpoints/sam2_hiera_large.pt``) or
Meta's config (``configs/sam2.1/sam2.1_hiera_t.yaml``, ``sam2_hiera_l.yaml``, the seed worker's
``sam2_configs/sam2_hiera_l.yaml``). :func:`resolve_variant` accepts all of them.
"""

from __future__ import annotations

import re

from transformers import (
    Sam2Config,
    Sam2HieraDetConfig,
    Sam2MaskDecoderConfig,
    Sam2PromptEncoderConfig,
    Sam2VisionConfig,
)

from imgembed.errors import UnknownModelError
from imgembed.models.sam2_variants import SAM2_VARIANTS, HieraArchitecture, Sam2Variant

_FILE_SUFFIXES = (".yaml", ".yml", ".pt", ".pth")


def _normalise(name: str) -> str:
    """Lower-cases a name and unifies ``-`` and ``_``, so ``sam2.1-hiera-base-plus`` matches
    ``sam2.1_hiera_base_plus``."""
    return name.strip().lower().replace("-", "_")


def _last_path_component(name: str) -> str:
    """The file name of a path or hub id, without a known file suffix."""
    base = re.split(r"[/\\]", name.strip())[-1]
    for suffix in _FILE_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def _names_of(variant: Sam2Variant) -> tuple[str, ...]:
    """Every spelling that names ``variant``, before normalisation."""
    return (
        variant.name,
        variant.hub_id,
        _last_path_component(variant.meta_checkpoint),
        _last_path_component(variant.meta_config),
    )


_BY_FULL_NAME: dict[str, Sam2Variant] = {
    _normalise(name): variant for variant in SAM2_VARIANTS for name in _names_of(variant)
}
_BY_FILE_NAME: dict[str, Sam2Variant] = {
    _normalise(_last_path_component(name)): variant
    for variant in SAM2_VARIANTS
    for name in _names_of(variant)
}


def list_variants() -> tuple[Sam2Variant, ...]:
    """All SAM 2 image variants this package can build: SAM 2 tiny to large, then SAM 2.1."""
    return SAM2_VARIANTS


def variant_names() -> tuple[str, ...]:
    """Canonical names of all variants, in table order."""
    return tuple(variant.name for variant in SAM2_VARIANTS)


def resolve_variant(name: str) -> Sam2Variant:
    """Finds the variant a user-supplied name refers to.

    Args:
        name: A canonical name (``sam2.1-hiera-tiny``), a hub id (``facebook/sam2-hiera-large``),
            a Meta checkpoint file name or path (``./checkpoints/sam2_hiera_large.pt``), or a Meta
            config name in any of its spellings (``configs/sam2.1/sam2.1_hiera_t.yaml``,
            ``sam2.1_hiera_t.yaml``, ``sam2_configs/sam2_hiera_l.yaml``, ``sam2_hiera_l``).
            Case and ``-``/``_`` do not matter.

    Returns:
        The matching variant.

    Raises:
        UnknownModelError: When nothing matches; the message lists the valid names.
    """
    variant = _BY_FULL_NAME.get(_normalise(name)) or _BY_FILE_NAME.get(
        _normalise(_last_path_component(name))
    )
    if variant is None:
        examples = ", ".join(variant_names())
        raise UnknownModelError(
            f"Unknown SAM 2 model {name!r}. Expected one of: {examples}; or the same as a hub id "
            "(facebook/sam2.1-hiera-tiny), a Meta checkpoint file (sam2.1_hiera_tiny.pt) or a Meta "
            "config name (configs/sam2.1/sam2.1_hiera_t.yaml, sam2_hiera_l.yaml)."
        )
    return variant


def build_sam2_config(variant: Sam2Variant) -> Sam2Config:
    """The ``transformers`` configuration of a variant's image model.

    Only the Hiera encoder and its neck differ between variants; the prompt encoder and mask
    decoder use ``transformers``' defaults, which equal Meta's (256 channels, 3 multimask outputs,
    dynamic multimask via stability with delta 0.05 and threshold 0.98, sigmoid IoU head).

    Args:
        variant: The variant to build.

    Returns:
        A configuration ``transformers.Sam2Model`` can be built from.
    """
    architecture = variant.architecture
    backbone_config = Sam2HieraDetConfig(
        hidden_size=architecture.hidden_size,
        num_attention_heads=architecture.num_attention_heads,
        blocks_per_stage=list(architecture.blocks_per_stage),
        embed_dim_per_stage=list(architecture.embed_dim_per_stage),
        num_attention_heads_per_stage=list(architecture.num_attention_heads_per_stage),
        window_size_per_stage=list(architecture.window_size_per_stage),
        global_attention_blocks=list(architecture.global_attention_blocks),
        window_positional_embedding_background_size=list(
            architecture.window_positional_embedding_background_size
        ),
    )
    vision_config = Sam2VisionConfig(
        backbone_config=backbone_config,
        backbone_channel_list=list(architecture.backbone_channel_list),
    )
    return Sam2Config(
        vision_config=vision_config,
        prompt_encoder_config=Sam2PromptEncoderConfig(),
        mask_decoder_config=Sam2MaskDecoderConfig(),
    )


def _four(values: list[int]) -> tuple[int, int, int, int]:
    """A list of four per-stage values as a tuple."""
    first, second, third, fourth = values
    return (first, second, third, fourth)


def architecture_of(config: Sam2Config) -> HieraArchitecture:
    """The architecture numbers of a ``transformers`` configuration, for comparison with the table.

    Args:
        config: A loaded or built configuration.

    Returns:
        Its Hiera and neck numbers, equal to a variant's ``architecture`` when built as that
        variant.
    """
    backbone = config.vision_config.backbone_config
    first_side, second_side = backbone.window_positional_embedding_background_size
    return HieraArchitecture(
        hidden_size=backbone.hidden_size,
        num_attention_heads=backbone.num_attention_heads,
        blocks_per_stage=_four(backbone.blocks_per_stage),
        embed_dim_per_stage=_four(backbone.embed_dim_per_stage),
        num_attention_heads_per_stage=_four(backbone.num_attention_heads_per_stage),
        window_size_per_stage=_four(backbone.window_size_per_stage),
        global_attention_blocks=tuple(backbone.global_attention_blocks),
        window_positional_embedding_background_size=(first_side, second_side),
        backbone_channel_list=_four(config.vision_config.backbone_channel_list),
    )


def variants_with(architecture: HieraArchitecture) -> tuple[Sam2Variant, ...]:
    """The variants built as ``architecture``: one SAM 2 and one SAM 2.1 variant, or none."""
    return tuple(variant for variant in SAM2_VARIANTS if variant.architecture == architecture)
