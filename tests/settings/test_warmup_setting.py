"""``IMGEMBED_WARMUP`` (issue 15): ``auto`` by default (warm up on a GPU only), or a boolean, from a
variable, a config file (top level or per model) and the configuration classes alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgembed.errors import InvalidInputError
from imgembed.settings import ModelSpec, server_config_from_env


def test_the_default_is_auto() -> None:
    assert ModelSpec("sam2.1-hiera-tiny").warmup == "auto"
    assert [spec.warmup for spec in server_config_from_env({}).models] == ["auto"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auto", "auto"),
        (" AUTO ", "auto"),
        ("true", True),
        ("1", True),
        ("on", True),
        ("false", False),
        ("0", False),
        ("no", False),
    ],
)
def test_the_variable_takes_auto_or_a_boolean(text: str, expected: bool | str) -> None:
    (spec,) = server_config_from_env({"IMGEMBED_WARMUP": text}).models
    assert spec.warmup == expected


def test_a_config_file_takes_auto_or_a_boolean(tmp_path: Path) -> None:
    path = tmp_path / "imgembed.toml"
    path.write_text(
        """
warmup = false

[[models]]
name = "sam2.1-hiera-tiny"

[[models]]
name = "sam2.1-hiera-small"
warmup = "auto"

[[models]]
name = "sam2.1-hiera-base-plus"
warmup = true
"""
    )
    config = server_config_from_env({}, config_file=path)
    assert [spec.warmup for spec in config.models] == [False, "auto", True]


@pytest.mark.parametrize("text", ["sometimes", "gpu", "2"])
def test_other_values_are_refused_with_what_is_expected(text: str) -> None:
    with pytest.raises(InvalidInputError) as raised:
        server_config_from_env({"IMGEMBED_WARMUP": text})
    assert "IMGEMBED_WARMUP" in raised.value.message
    assert "expected auto or true/false" in raised.value.message
    assert repr(text) in raised.value.message
