"""The SAM 2 variant table: every name users give resolves, and each config builds Meta's image model.

Architecture numbers are checked against Meta's own ``build_sam2`` for each of the eight YAML
configs: same number of image-path parameters, and every converted Meta weight lands on a
``Sam2Model`` weight of the same shape.
"""

from __future__ import annotations

from importlib.resources import files

import pytest
import torch
from transformers import Sam2Model

from imgembed.errors import UnknownModelError
from imgembed.models.sam2_meta import (
    DROPPED_META_PREFIXES,
    check_state_dict_fits,
    convert_meta_state_dict,
)
from imgembed.models.sam2_registry import (
    architecture_of,
    build_sam2_config,
    list_variants,
    resolve_variant,
    variant_names,
    variants_with,
)
from imgembed.models.sam2_variants import Sam2Variant
from imgembed.server.errors import http_status

VARIANTS = list_variants()
EXPECTED_NAMES = (
    "sam2-hiera-tiny",
    "sam2-hiera-small",
    "sam2-hiera-base-plus",
    "sam2-hiera-large",
    "sam2.1-hiera-tiny",
    "sam2.1-hiera-small",
    "sam2.1-hiera-base-plus",
    "sam2.1-hiera-large",
)

SPELLINGS = [
    # (what a user writes, canonical name)
    ("sam2.1-hiera-tiny", "sam2.1-hiera-tiny"),
    ("SAM2.1-Hiera-Tiny", "sam2.1-hiera-tiny"),
    ("facebook/sam2.1-hiera-tiny", "sam2.1-hiera-tiny"),
    ("facebook/sam2-hiera-large", "sam2-hiera-large"),
    ("sam2.1_hiera_tiny.pt", "sam2.1-hiera-tiny"),
    ("sam2_hiera_base_plus.pt", "sam2-hiera-base-plus"),
    ("./checkpoints/sam2_hiera_large.pt", "sam2-hiera-large"),
    ("/models/sam2.1_hiera_small.pt", "sam2.1-hiera-small"),
    ("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1-hiera-tiny"),
    ("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1-hiera-base-plus"),
    ("configs/sam2/sam2_hiera_s.yaml", "sam2-hiera-small"),
    ("configs/sam2.1/sam2.1_hiera_l", "sam2.1-hiera-large"),
    ("sam2.1_hiera_t.yaml", "sam2.1-hiera-tiny"),
    ("sam2.1_hiera_t", "sam2.1-hiera-tiny"),
    ("sam2_hiera_l.yaml", "sam2-hiera-large"),
    ("sam2_hiera_l", "sam2-hiera-large"),
    ("sam2_hiera_b+.yaml", "sam2-hiera-base-plus"),
    ("sam2_configs/sam2_hiera_l.yaml", "sam2-hiera-large"),
    ("sam2_configs/sam2_hiera_t.yaml", "sam2-hiera-tiny"),
]


def test_table_holds_the_eight_released_models() -> None:
    assert variant_names() == EXPECTED_NAMES
    for variant in VARIANTS:
        assert variant.hub_id == f"facebook/{variant.name}"
        assert variant.meta_checkpoint.startswith(variant.family + "_hiera_")
        assert variant.meta_config.startswith(f"configs/{variant.family}/{variant.family}_hiera_")


@pytest.mark.parametrize(("spelling", "expected"), SPELLINGS)
def test_every_spelling_resolves(spelling: str, expected: str) -> None:
    assert resolve_variant(spelling).name == expected


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda variant: variant.name)
def test_every_field_of_the_table_resolves_back(variant: Sam2Variant) -> None:
    for name in (variant.name, variant.hub_id, variant.meta_checkpoint, variant.meta_config):
        assert resolve_variant(name) is variant


@pytest.mark.parametrize(
    "unknown",
    ["sam2.1-hiera-huge", "sam3_hiera_t.yaml", "facebook/sam-vit-base", "", "sam2.1_hiera_b"],
)
def test_unknown_names_list_the_valid_ones(unknown: str) -> None:
    with pytest.raises(UnknownModelError) as raised:
        resolve_variant(unknown)
    assert repr(unknown) in raised.value.message
    for name in EXPECTED_NAMES:
        assert name in raised.value.message
    assert http_status(raised.value) == 404


def test_meta_config_files_exist_in_the_reference_package() -> None:
    sam2 = pytest.importorskip("sam2", reason="Meta's sam2 package is test-only")
    for variant in VARIANTS:
        assert files(sam2).joinpath(variant.meta_config).is_file(), variant.meta_config


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda variant: variant.name)
def test_config_builds_meta_image_model(variant: Sam2Variant) -> None:
    build_sam = pytest.importorskip("sam2.build_sam", reason="Meta's sam2 package is test-only")
    meta_model = build_sam.build_sam2(variant.meta_config, ckpt_path=None, device="meta")
    with torch.device("meta"):
        model = Sam2Model(build_sam2_config(variant))

    meta_image_parameters = sum(
        parameter.numel()
        for name, parameter in meta_model.named_parameters()
        if not name.startswith(DROPPED_META_PREFIXES)
    )
    assert sum(parameter.numel() for parameter in model.parameters()) == meta_image_parameters
    converted = convert_meta_state_dict(meta_model.state_dict())
    check_state_dict_fits(
        converted, {key: value.shape for key, value in model.state_dict().items()}
    )
    assert architecture_of(model.config) == variant.architecture
    assert variant in variants_with(variant.architecture)


def test_sam2_and_sam21_share_each_image_architecture() -> None:
    for size in ("tiny", "small", "base-plus", "large"):
        first, second = (v for v in VARIANTS if v.size == size)
        assert first.architecture == second.architecture
        assert variants_with(first.architecture) == (first, second)
