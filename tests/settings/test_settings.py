"""Settings: variables and flags become one configuration; bad values are named."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from imgembed.engine import ServedModel, ServedSam2, ServedSiglip
from imgembed.errors import InvalidInputError
from imgembed.runtime.device import DevicePlacement
from imgembed.settings import (
    DECODER_BATCHING,
    DEFAULT_BATCH_SIZE,
    SAM2_ENCODER_BATCH_SIZE_ON_CPU,
    BatchingSettings,
    ModelSpec,
    server_config_from_env,
)


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
        ("IMGEMBED_PORT", "70000"),
        ("IMGEMBED_MAX_BATCH_SIZE", "-1"),
        ("IMGEMBED_MAX_BATCH_SIZE", "2.5"),
        ("IMGEMBED_MAX_QUEUE_SIZE", "0"),
        ("IMGEMBED_MAX_QUEUE_DELAY_MS", "-5"),
        ("IMGEMBED_MAX_QUEUE_DELAY_MS", "nan"),
        ("IMGEMBED_DECODER_MAX_BATCH_SIZE", "-3"),
        ("IMGEMBED_DECODER_MAX_QUEUE_SIZE", "0"),
        ("IMGEMBED_COMPUTE_THREADS", "-1"),
        ("IMGEMBED_PREPROCESS", "gpu"),
        ("IMGEMBED_TORCH_THREADS", "-1"),
        ("IMGEMBED_REQUEST_TIMEOUT_S", "0"),
        ("IMGEMBED_REQUEST_TIMEOUT_S", "inf"),
        ("IMGEMBED_MAX_BODY_BYTES", "0"),
        ("IMGEMBED_CACHE_BYTES", "-1"),
        ("IMGEMBED_FETCH_MAX_REDIRECTS", "-1"),
    ],
)
def test_bad_variables_are_named(name: str, value: str) -> None:
    """Out-of-range numbers are refused at start-up, not by the first batch or request."""
    with pytest.raises(InvalidInputError, match=name) as caught:
        server_config_from_env({name: value})
    assert caught.value.field == name
    assert "expected" in caught.value.message


@pytest.mark.parametrize(
    ("name", "value", "target", "parsed"),
    [
        ("IMGEMBED_MAX_BATCH_SIZE", "0", "max_batch_size", 0),
        ("IMGEMBED_MAX_QUEUE_DELAY_MS", "0", "max_queue_delay_ms", 0.0),
        ("IMGEMBED_MAX_QUEUE_SIZE", " 1 ", "max_queue_size", 1),
    ],
)
def test_edge_values_are_accepted(name: str, value: str, target: str, parsed: object) -> None:
    (spec,) = server_config_from_env({name: value}).models
    assert getattr(spec.batching, target) == parsed


def test_config_file_sets_models_and_limits_and_variables_and_flags_win(tmp_path: Path) -> None:
    path = tmp_path / "imgembed.toml"
    path.write_text(
        """
port = 9000
max_batch_size = 2
fetch_allowed_hosts = ["10.0.0.0/8", "images.internal"]
fetch_allow_private = false

[[models]]
name = "sam2.1-hiera-tiny"
weights = "dummy"
max_batch_size = 8

[[models]]
name = "sam2-hiera-small"
weights = "/models/sam2_hiera_small.pt"
device = "cpu"
warmup = false
"""
    )
    config = server_config_from_env({}, config_file=path)
    assert config.port == 9000
    assert config.fetch.allowed_hosts == ("10.0.0.0/8", "images.internal")
    tiny, small = config.models
    assert (tiny.name, tiny.weights, tiny.batching.max_batch_size) == (
        "sam2.1-hiera-tiny",
        "dummy",
        8,
    )
    assert (small.name, small.device, small.warmup) == ("sam2-hiera-small", "cpu", False)
    assert small.batching.max_batch_size == 2
    assert server_config_from_env({"IMGEMBED_PORT": "9100"}, config_file=path).port == 9100
    assert server_config_from_env({"IMGEMBED_CONFIG": str(path)}, {"port": 9200}).port == 9200


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("prot = 1", "unknown key 'prot'"),
        ("port = 'eighty'", "port='eighty' is invalid"),
        ("[[models]]\nweights = 'dummy'", "needs a name"),
        ("[[models]]\nname = 'x'\nhost = 'a'", "unknown key 'host'"),
        ("port = ", "not valid TOML"),
    ],
)
def test_bad_config_files_are_named(tmp_path: Path, text: str, phrase: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InvalidInputError, match=phrase):
        server_config_from_env({}, config_file=path)


def test_repeated_model_flags_serve_several_models() -> None:
    overrides = {"model": ["sam2.1-hiera-tiny", "sam2-hiera-large"], "weights": ["dummy"]}
    config = server_config_from_env({"IMGEMBED_MAX_BATCH_SIZE": "3"}, overrides)
    assert [spec.name for spec in config.models] == ["sam2.1-hiera-tiny", "sam2-hiera-large"]
    assert all(spec.weights == "dummy" for spec in config.models)
    assert all(spec.batching.max_batch_size == 3 for spec in config.models)
    paired = server_config_from_env({}, {"model": ["a", "b"], "weights": ["x.pt", "y.pt"]})
    assert [spec.weights for spec in paired.models] == ["x.pt", "y.pt"]
    with pytest.raises(InvalidInputError, match="one per --model"):
        server_config_from_env({}, {"model": ["a", "b", "c"], "weights": ["x.pt", "y.pt"]})


def test_decoder_batching_from_variables_and_per_model_in_a_config_file(tmp_path: Path) -> None:
    env = {"IMGEMBED_DECODER_MAX_BATCH_SIZE": "1", "IMGEMBED_DECODER_MAX_QUEUE_DELAY_MS": "0"}
    (spec,) = server_config_from_env(env).models
    assert (spec.decoder_batching.max_batch_size, spec.decoder_batching.max_queue_delay_ms) == (
        1,
        0,
    )
    assert spec.decoder_batching.max_queue_size == 256, "unset fields keep the decoder's default"
    assert spec.batching == BatchingSettings(), "the encoder's batching is separate"
    path = tmp_path / "imgembed.toml"
    path.write_text('[[models]]\nname = "sam2.1-hiera-tiny"\ndecoder_max_batch_size = 128\n')
    (spec,) = server_config_from_env({}, config_file=path).models
    assert spec.decoder_batching.max_batch_size == 128
    with pytest.raises(InvalidInputError, match="IMGEMBED_DECODER_MAX_BATCH_SIZE"):
        server_config_from_env({"IMGEMBED_DECODER_MAX_BATCH_SIZE": "many"})


@pytest.mark.parametrize(
    ("device", "configured", "resolved"),
    [("cpu", 0, 1), ("cpu", 8, 8), ("cuda", 1, 1)],
)
def test_decoder_batch_size_zero_picks_by_device(
    device: str, configured: int, resolved: int
) -> None:
    """No GPU is needed: only the placement's device type is read, nothing runs there (a GPU's
    size by its memory: tests/runtime/test_batch_size.py)."""
    spec = ModelSpec(
        "sam2.1-hiera-tiny",
        decoder_batching=dataclasses.replace(DECODER_BATCHING, max_batch_size=configured),
    )
    served = settings_only(ServedSam2, spec, device)
    assert served.decoder_batching.max_batch_size == resolved
    assert served.decoder_batching.max_queue_size == DECODER_BATCHING.max_queue_size
    served.device_executor.shutdown()


def settings_only(kind: type[ServedModel], spec: ModelSpec, device: str) -> ServedModel:
    """A served model without weights: only its settings and device type are read."""
    return kind(  # type: ignore[call-arg]
        spec=spec,
        placement=DevicePlacement(torch.device(device), "float32"),
        names=frozenset({spec.name}),
        load_seconds=0.0,
        device_executor=ThreadPoolExecutor(max_workers=1),
        loaded=None,
    )


@pytest.mark.parametrize(
    ("kind", "device", "configured", "resolved"),
    [
        (ServedSam2, "cpu", 0, SAM2_ENCODER_BATCH_SIZE_ON_CPU),
        (ServedSam2, "cpu", 4, 4),
        (ServedSiglip, "cpu", 0, DEFAULT_BATCH_SIZE),
        (ServedSiglip, "cuda", 2, 2),
        (ServedSiglip, "cpu", 1, 1),
    ],
)
def test_batch_size_zero_picks_by_model_and_device(
    kind: type[ServedModel], device: str, configured: int, resolved: int
) -> None:
    """The default (0) turns SAM 2's encoder batching off on a CPU only; a set size is kept."""
    assert BatchingSettings().max_batch_size == 0
    spec = ModelSpec("model", batching=BatchingSettings(max_batch_size=configured))
    served = settings_only(kind, spec, device)
    assert served.batching == BatchingSettings(max_batch_size=resolved)
    served.device_executor.shutdown()


def test_torch_threads_default_to_torch_and_can_be_set() -> None:
    assert server_config_from_env({}).torch_threads == 0
    assert server_config_from_env({"IMGEMBED_TORCH_THREADS": "1"}).torch_threads == 1
    assert server_config_from_env({}, {"torch_threads": 3}).torch_threads == 3
