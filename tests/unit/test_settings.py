"""Settings: variables and flags become one configuration; bad values are named."""

from __future__ import annotations

import pytest

from imgembed.errors import InvalidInputError
from imgembed.settings import server_config_from_env


def test_defaults_serve_sam2_1_tiny_on_loopback_8000() -> None:
    config = server_config_from_env({})
    assert config.host == "127.0.0.1"
    assert config.port == 8000
    assert config.models[0].name == "sam2.1-hiera-tiny"
    assert config.models[0].weights is None
    assert config.fetch.timeout_s == 10.0
    assert not config.fetch.allow_private_networks


def test_seed_variables_select_checkpoint_and_architecture() -> None:
    config = server_config_from_env(
        {
            "SAM2_CHECKPOINT": "./checkpoints/sam2_hiera_large.pt",
            "SAM2_MODEL_CFG": "sam2_configs/sam2_hiera_l.yaml",
        }
    )
    spec = config.models[0]
    assert spec.weights == "./checkpoints/sam2_hiera_large.pt"
    assert spec.meta_config == "sam2_configs/sam2_hiera_l.yaml"
    assert spec.name == "sam2_configs/sam2_hiera_l.yaml"


def test_imgembed_variables_win_over_seed_variables_and_flags_win_over_both() -> None:
    env = {"IMGEMBED_WEIGHTS": "dummy", "SAM2_CHECKPOINT": "x.pt", "IMGEMBED_PORT": "9000"}
    assert server_config_from_env(env).models[0].weights == "dummy"
    config = server_config_from_env(env, {"weights": "y.pt", "port": 9100, "host": None})
    assert config.models[0].weights == "y.pt"
    assert config.port == 9100
    assert config.host == "127.0.0.1"


def test_nested_limits_and_fetch_policy() -> None:
    config = server_config_from_env(
        {
            "IMGEMBED_MAX_IMAGE_PIXELS": "1000",
            "IMGEMBED_FETCH_ALLOWED_HOSTS": "127.0.0.1/32, images.internal",
            "IMGEMBED_FETCH_ALLOW_PRIVATE": "yes",
        }
    )
    assert config.limits.max_image_pixels == 1000
    assert config.fetch.allowed_hosts == ("127.0.0.1/32", "images.internal")
    assert config.fetch.allow_private_networks


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IMGEMBED_PORT", "eighty"),
        ("IMGEMBED_DEVICE", "tpu"),
        ("IMGEMBED_FETCH_ALLOW_PRIVATE", "maybe"),
        ("IMGEMBED_RESIZE_MODE", "crop"),
    ],
)
def test_bad_variables_are_named(name: str, value: str) -> None:
    with pytest.raises(InvalidInputError, match=name) as caught:
        server_config_from_env({name: value})
    assert caught.value.field == name
