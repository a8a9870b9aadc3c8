"""Finding a SigLIP 2 variant by the names users give it, and building its ``transformers`` config.

Users name a model by its canonical name (``siglip2-base-patch16-224``) or its hub id
(``google/siglip2-large-patch16-512``, what the seed worker uses). :func:`resolve_siglip_variant`
accepts both, in any case, with ``_`` for ``-``, and ``giant`` for ``giant-opt``.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedConfig, Siglip2Config, SiglipConfig

from imgembed.errors import UnknownModelError
from imgembed.models.siglip_variants import (
    SIGLIP_VARIANTS,
    SiglipFamily,
    SiglipVariant,
    TowerArchitecture,
)

_HUB_ORG = "google/"


@dataclass(frozen=True)
class SiglipArchitecture:
    """Everything that fixes the shapes of a SigLIP model's weights and its input.

    Two checkpoints with equal architectures take the same input and hold weights of the same
    shapes; this is what a loaded ``config.json`` is compared by.

    Attributes:
        family: ``fixres`` or ``naflex``.
        patch_size: Side of a patch in pixels.
        image_size: FixRes input side; ``None`` for NaFlex.
        num_position_patches: NaFlex position grid size; ``None`` for FixRes.
        vision: Vision tower shape.
        text: Text tower shape.
        embedding_dim: Length of the embeddings.
        vocab_size: Rows of the token embedding.
        text_max_length: Text positions.
    """

    family: SiglipFamily
    patch_size: int
    image_size: int | None
    num_position_patches: int | None
    vision: TowerArchitecture
    text: TowerArchitecture
    embedding_dim: int
    vocab_size: int
    text_max_length: int


def _normalise(name: str) -> str:
    """Lower-case, ``-`` for ``_``, without the ``google/`` organisation, ``giant-opt`` for
    ``giant``."""
    key = name.strip().lower().replace("_", "-")
    key = key.removeprefix(_HUB_ORG)
    if "-giant-" in key and "-giant-opt-" not in key:
        key = key.replace("-giant-", "-giant-opt-")
    return key


_BY_NAME: dict[str, SiglipVariant] = {_normalise(v.name): v for v in SIGLIP_VARIANTS}


def list_siglip_variants() -> tuple[SiglipVariant, ...]:
    """All SigLIP 2 variants this package can build: FixRes in release order, then NaFlex."""
    return SIGLIP_VARIANTS


def siglip_variant_names() -> tuple[str, ...]:
    """Canonical names of all variants, in table order."""
    return tuple(variant.name for variant in SIGLIP_VARIANTS)


def is_siglip_name(name: str) -> bool:
    """Whether ``name`` names a SigLIP 2 variant (so an engine can route it without a try)."""
    return _normalise(name) in _BY_NAME


def resolve_siglip_variant(name: str) -> SiglipVariant:
    """Finds the variant a user-supplied name refers to.

    Args:
        name: A canonical name (``siglip2-base-patch16-224``) or hub id
            (``google/siglip2-large-patch16-512``); case and ``-``/``_`` do not matter, and
            ``giant`` stands for ``giant-opt``.

    Returns:
        The matching variant.

    Raises:
        UnknownModelError: When nothing matches; the message lists the valid names.
    """
    variant = _BY_NAME.get(_normalise(name))
    if variant is None:
        raise UnknownModelError(
            f"Unknown SigLIP 2 model {name!r}. Expected one of: "
            f"{', '.join(siglip_variant_names())}; or the same as a hub id "
            "(google/siglip2-large-patch16-512)."
        )
    return variant


def _tower_options(tower: TowerArchitecture) -> dict[str, int]:
    return {
        "hidden_size": tower.hidden_size,
        "intermediate_size": tower.intermediate_size,
        "num_hidden_layers": tower.num_hidden_layers,
        "num_attention_heads": tower.num_attention_heads,
    }


def build_siglip_config(variant: SiglipVariant) -> SiglipConfig | Siglip2Config:
    """The ``transformers`` configuration of a variant.

    Fields not set here (``gelu_pytorch_tanh``, layer norm epsilon 1e-6, the attention pooling
    head) keep ``transformers``' defaults, which are SigLIP's.

    Args:
        variant: The variant to build.

    Returns:
        A ``SiglipConfig`` (FixRes) or ``Siglip2Config`` (NaFlex).
    """
    text_config = {
        **_tower_options(variant.text),
        "vocab_size": variant.vocab_size,
        "max_position_embeddings": variant.text_max_length,
        "projection_size": variant.embedding_dim,
    }
    vision_config: dict[str, int] = {
        **_tower_options(variant.vision),
        "patch_size": variant.patch_size,
    }
    if variant.family == "fixres":
        assert variant.image_size is not None, "a FixRes variant has an image size"
        vision_config["image_size"] = variant.image_size
        return SiglipConfig(text_config=text_config, vision_config=vision_config)
    assert variant.num_position_patches is not None, "a NaFlex variant has a position grid"
    vision_config["num_patches"] = variant.num_position_patches
    return Siglip2Config(text_config=text_config, vision_config=vision_config)


def _tower_of(config: PreTrainedConfig) -> TowerArchitecture:
    """The tower shape of a vision or text sub-configuration."""
    return TowerArchitecture(
        hidden_size=int(config.hidden_size),
        intermediate_size=int(config.intermediate_size),
        num_hidden_layers=int(config.num_hidden_layers),
        num_attention_heads=int(config.num_attention_heads),
    )


def _single_int(value: int | list[int] | tuple[int, ...]) -> int:
    """A size stored as one int or as an equal pair."""
    if isinstance(value, int):
        return value
    first, *rest = value
    if any(other != first for other in rest):
        raise ValueError(f"non-square size {list(value)}")
    return int(first)


def architecture_of_config(config: SiglipConfig | Siglip2Config) -> SiglipArchitecture:
    """The architecture a loaded or built ``transformers`` configuration describes.

    Raises:
        ValueError: For a non-square FixRes input or patch, which no SigLIP 2 model has.
    """
    vision, text = config.vision_config, config.text_config
    naflex = isinstance(config, Siglip2Config)
    return SiglipArchitecture(
        family="naflex" if naflex else "fixres",
        patch_size=_single_int(vision.patch_size),
        image_size=None if naflex else _single_int(vision.image_size),
        num_position_patches=int(vision.num_patches) if naflex else None,
        vision=_tower_of(vision),
        text=_tower_of(text),
        embedding_dim=int(text.projection_size),
        vocab_size=int(text.vocab_size),
        text_max_length=int(text.max_position_embeddings),
    )


def architecture_of_variant(variant: SiglipVariant) -> SiglipArchitecture:
    """The architecture a variant is built as."""
    return SiglipArchitecture(
        family=variant.family,
        patch_size=variant.patch_size,
        image_size=variant.image_size,
        num_position_patches=variant.num_position_patches,
        vision=variant.vision,
        text=variant.text,
        embedding_dim=variant.embedding_dim,
        vocab_size=variant.vocab_size,
        text_max_length=variant.text_max_length,
    )


def siglip_variants_with(architecture: SiglipArchitecture) -> tuple[SiglipVariant, ...]:
    """The released variants built as ``architecture`` (one, or none for a custom model)."""
    return tuple(v for v in SIGLIP_VARIANTS if architecture_of_variant(v) == architecture)
