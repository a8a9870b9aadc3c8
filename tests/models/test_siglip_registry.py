"""The SigLIP 2 table and name resolution, and that every released architecture builds."""

from __future__ import annotations

import pytest
import torch
from transformers import Siglip2Config, Siglip2Model, SiglipConfig, SiglipModel

from imgembed.errors import UnknownModelError
from imgembed.models.siglip_registry import (
    architecture_of_config,
    architecture_of_variant,
    build_siglip_config,
    is_siglip_name,
    list_siglip_variants,
    resolve_siglip_variant,
    siglip_variant_names,
    siglip_variants_with,
)
from imgembed.models.siglip_variants import DEFAULT_SIGLIP_MODEL
from imgembed.server.errors import http_status

EXPECTED_NAMES = {
    "siglip2-base-patch16-224",
    "siglip2-base-patch16-256",
    "siglip2-base-patch16-384",
    "siglip2-base-patch16-512",
    "siglip2-base-patch32-256",
    "siglip2-large-patch16-256",
    "siglip2-large-patch16-384",
    "siglip2-large-patch16-512",
    "siglip2-so400m-patch14-224",
    "siglip2-so400m-patch14-384",
    "siglip2-so400m-patch16-256",
    "siglip2-so400m-patch16-384",
    "siglip2-so400m-patch16-512",
    "siglip2-giant-opt-patch16-256",
    "siglip2-giant-opt-patch16-384",
    "siglip2-base-patch16-naflex",
    "siglip2-so400m-patch16-naflex",
}


def test_table_holds_the_released_models() -> None:
    assert set(siglip_variant_names()) == EXPECTED_NAMES
    assert len(siglip_variant_names()) == len(EXPECTED_NAMES)
    for variant in list_siglip_variants():
        assert variant.hub_id == f"google/{variant.name}"
        assert variant.text_max_length == 64
        assert variant.vocab_size == 256_000
        assert variant.embedding_dim == variant.vision.hidden_size
        assert variant.architecture_class == (
            "Siglip2Model" if variant.name.endswith("naflex") else "SiglipModel"
        )
    assert DEFAULT_SIGLIP_MODEL in EXPECTED_NAMES


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("siglip2-base-patch16-224", "siglip2-base-patch16-224"),
        ("google/siglip2-large-patch16-512", "siglip2-large-patch16-512"),
        ("Google/SigLIP2_Large_Patch16_512", "siglip2-large-patch16-512"),
        ("google/siglip2-giant-patch16-384", "siglip2-giant-opt-patch16-384"),
        ("siglip2-so400m-patch14-384", "siglip2-so400m-patch14-384"),
        (" google/siglip2-base-patch16-naflex ", "siglip2-base-patch16-naflex"),
    ],
)
def test_names_resolve(name: str, expected: str) -> None:
    assert resolve_siglip_variant(name).name == expected
    assert is_siglip_name(name)


@pytest.mark.parametrize(
    "name", ["siglip2-large-patch16-224", "google/siglip-base-patch16-224", "sam2.1-hiera-tiny", ""]
)
def test_unknown_names_list_the_valid_ones(name: str) -> None:
    assert not is_siglip_name(name)
    with pytest.raises(UnknownModelError) as raised:
        resolve_siglip_variant(name)
    assert repr(name) in raised.value.message
    assert "siglip2-large-patch16-512" in raised.value.message
    assert http_status(raised.value) == 404


def test_configs_round_trip_through_the_table() -> None:
    for variant in list_siglip_variants():
        config = build_siglip_config(variant)
        assert isinstance(config, SiglipConfig if variant.family == "fixres" else Siglip2Config)
        assert architecture_of_config(config) == architecture_of_variant(variant)
        assert siglip_variants_with(architecture_of_config(config)) == (variant,)


def test_giant_opt_text_tower_projects_to_the_vision_width() -> None:
    config = build_siglip_config(resolve_siglip_variant("siglip2-giant-opt-patch16-256"))
    assert config.text_config.hidden_size == 1152
    assert config.text_config.projection_size == config.vision_config.hidden_size == 1536


@pytest.mark.parametrize(
    ("name", "parameters_millions", "patches"),
    [
        ("siglip2-base-patch16-224", 375.2, 196),
        ("siglip2-large-patch16-512", 882.3, 1024),
        ("siglip2-base-patch16-naflex", 375.2, 256),
    ],
)
def test_real_architectures_build(name: str, parameters_millions: float, patches: int) -> None:
    """Built without storage: the released shapes, including the 256000 x width token table."""
    variant = resolve_siglip_variant(name)
    model_class = SiglipModel if variant.family == "fixres" else Siglip2Model
    with torch.device("meta"):
        model = model_class(build_siglip_config(variant))
    count = sum(parameter.numel() for parameter in model.parameters())
    assert count / 1e6 == pytest.approx(parameters_millions, abs=0.1)
    state = model.state_dict()
    width = variant.vision.hidden_size
    assert state["vision_model.embeddings.position_embedding.weight"].shape == (patches, width)
    assert state["text_model.embeddings.token_embedding.weight"].shape == (256_000, width)
    assert state["text_model.head.weight"].shape == (
        variant.embedding_dim,
        variant.text.hidden_size,
    )
