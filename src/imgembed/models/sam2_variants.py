"""The eight SAM 2 image models, as data.

Each :class:`Sam2Variant` names one released checkpoint (SAM 2 of July 2024, SAM 2.1 of September
2024) and the architecture numbers a ``transformers.Sam2Config`` needs. The numbers come from Meta's
YAML configs in the ``sam2`` package (``configs/sam2/*.yaml``, ``configs/sam2.1/*.yaml``); where a
YAML leaves a field out (``sam2*_hiera_b+.yaml`` gives only ``embed_dim`` and ``num_heads``), the
value is the default of Meta's ``Hiera`` class. Every Hiera stage doubles the channels and the heads
of the one before (``dim_mul = head_mul = 2``).

SAM 2 and SAM 2.1 share the image path exactly: their YAMLs differ only in video/memory settings
(``no_obj_embed_spatial``, object pointer temporal encodings). They differ in trained weights.

The logic over this table lives in :mod:`imgembed.models.sam2_registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Sam2Family = Literal["sam2", "sam2.1"]
Sam2Size = Literal["tiny", "small", "base-plus", "large"]


@dataclass(frozen=True)
class HieraArchitecture:
    """Architecture numbers of one Hiera image encoder with its FPN neck.

    Field names follow ``transformers``' ``Sam2HieraDetConfig`` and ``Sam2VisionConfig``; the Meta
    YAML key each comes from is given in brackets.

    Attributes:
        hidden_size: Channels after the patch embedding, stage 1 (``trunk.embed_dim``).
        num_attention_heads: Heads in stage 1 (``trunk.num_heads``).
        blocks_per_stage: Transformer blocks in each of the four stages (``trunk.stages``).
        embed_dim_per_stage: Channels of each stage (``embed_dim`` doubled per stage).
        num_attention_heads_per_stage: Heads of each stage (``num_heads`` doubled per stage).
        window_size_per_stage: Side of the attention window of each stage (``trunk.window_spec``).
        global_attention_blocks: Indices, counted over all blocks, of blocks attending globally
            (``trunk.global_att_blocks``).
        window_positional_embedding_background_size: Side of the background positional embedding
            that is interpolated to the feature map (``trunk.window_pos_embed_bkg_spatial_size``).
        backbone_channel_list: Channels of the stages, coarsest first, as the neck takes them
            (``neck.backbone_channel_list``).
    """

    hidden_size: int
    num_attention_heads: int
    blocks_per_stage: tuple[int, int, int, int]
    embed_dim_per_stage: tuple[int, int, int, int]
    num_attention_heads_per_stage: tuple[int, int, int, int]
    window_size_per_stage: tuple[int, int, int, int]
    global_attention_blocks: tuple[int, ...]
    window_positional_embedding_background_size: tuple[int, int]
    backbone_channel_list: tuple[int, int, int, int]


@dataclass(frozen=True)
class Sam2Variant:
    """One released SAM 2 image model.

    Attributes:
        name: Canonical name, for example ``sam2.1-hiera-tiny``.
        family: ``sam2`` (July 2024) or ``sam2.1`` (September 2024).
        size: Model size within the family.
        hub_id: Hugging Face Hub repository holding the released weights.
        meta_checkpoint: File name of Meta's original checkpoint, for example
            ``sam2.1_hiera_tiny.pt``.
        meta_config: Meta's config name as ``sam2.build_sam.build_sam2`` takes it, for example
            ``configs/sam2.1/sam2.1_hiera_t.yaml``.
        architecture: Numbers needed to build the model.
    """

    name: str
    family: Sam2Family
    size: Sam2Size
    hub_id: str
    meta_checkpoint: str
    meta_config: str
    architecture: HieraArchitecture


HIERA_TINY = HieraArchitecture(
    hidden_size=96,
    num_attention_heads=1,
    blocks_per_stage=(1, 2, 7, 2),
    embed_dim_per_stage=(96, 192, 384, 768),
    num_attention_heads_per_stage=(1, 2, 4, 8),
    window_size_per_stage=(8, 4, 14, 7),
    global_attention_blocks=(5, 7, 9),
    window_positional_embedding_background_size=(7, 7),
    backbone_channel_list=(768, 384, 192, 96),
)

HIERA_SMALL = HieraArchitecture(
    hidden_size=96,
    num_attention_heads=1,
    blocks_per_stage=(1, 2, 11, 2),
    embed_dim_per_stage=(96, 192, 384, 768),
    num_attention_heads_per_stage=(1, 2, 4, 8),
    window_size_per_stage=(8, 4, 14, 7),
    global_attention_blocks=(7, 10, 13),
    window_positional_embedding_background_size=(7, 7),
    backbone_channel_list=(768, 384, 192, 96),
)

HIERA_BASE_PLUS = HieraArchitecture(
    hidden_size=112,
    num_attention_heads=2,
    blocks_per_stage=(2, 3, 16, 3),
    embed_dim_per_stage=(112, 224, 448, 896),
    num_attention_heads_per_stage=(2, 4, 8, 16),
    window_size_per_stage=(8, 4, 14, 7),
    global_attention_blocks=(12, 16, 20),
    window_positional_embedding_background_size=(14, 14),
    backbone_channel_list=(896, 448, 224, 112),
)

HIERA_LARGE = HieraArchitecture(
    hidden_size=144,
    num_attention_heads=2,
    blocks_per_stage=(2, 6, 36, 4),
    embed_dim_per_stage=(144, 288, 576, 1152),
    num_attention_heads_per_stage=(2, 4, 8, 16),
    window_size_per_stage=(8, 4, 16, 8),
    global_attention_blocks=(23, 33, 43),
    window_positional_embedding_background_size=(7, 7),
    backbone_channel_list=(1152, 576, 288, 144),
)

_SIZES: tuple[tuple[Sam2Size, str, str, HieraArchitecture], ...] = (
    # (size, checkpoint suffix, config suffix, architecture)
    ("tiny", "tiny", "t", HIERA_TINY),
    ("small", "small", "s", HIERA_SMALL),
    ("base-plus", "base_plus", "b+", HIERA_BASE_PLUS),
    ("large", "large", "l", HIERA_LARGE),
)

SAM2_VARIANTS: tuple[Sam2Variant, ...] = tuple(
    Sam2Variant(
        name=f"{family}-hiera-{size}",
        family=family,
        size=size,
        hub_id=f"facebook/{family}-hiera-{size}",
        meta_checkpoint=f"{family}_hiera_{checkpoint_suffix}.pt",
        meta_config=f"configs/{family}/{family}_hiera_{config_suffix}.yaml",
        architecture=architecture,
    )
    for family in ("sam2", "sam2.1")
    for size, checkpoint_suffix, config_suffix, architecture in _SIZES
)
"""All eight variants: SAM 2 tiny to large, then SAM 2.1 tiny to large."""
