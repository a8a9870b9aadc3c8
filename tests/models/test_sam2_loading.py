"""``load_sam2``: every place weights come from, and every way loading fails.

No test here reaches a network: hub tests read a hub cache laid out in ``tmp_path`` or talk to
127.0.0.1, and the ``_loopback_only`` fixture of ``conftest.py`` fails any other connection.
``huggingface_hub`` reads ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT`` once at import, so setting them
here would change nothing; ``load_sam2`` takes ``hub_offline`` and ``hub_endpoint`` instead.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from transformers import Sam2Model

from imgembed.errors import ModelLoadError
from imgembed.models.sam2_loading import LoadedSam2, load_sam2
from imgembed.models.sam2_meta import convert_meta_state_dict
from imgembed.server.errors import http_status

CPU = torch.device("cpu")
AddToHubCache = Callable[[str, Mapping[str, Path | bytes]], Path]
FIX_HINTS = ("--weights", "SAM2_CHECKPOINT", "dummy")


def assert_same_weights(model: Sam2Model, expected: dict[str, torch.Tensor]) -> None:
    """Every tensor of ``model`` equals the one of the same name in ``expected``, and no more."""
    state = model.state_dict()
    assert sorted(state) == sorted(expected)
    different = [key for key in state if not torch.equal(state[key], expected[key])]
    assert different == []


def assert_says_how_to_fix(error: ModelLoadError) -> None:
    """The message names the settings that would fix the load, and the cause is chained."""
    for hint in FIX_HINTS:
        assert hint in error.message
    assert http_status(error) == 500


def assert_inference_ready(loaded: LoadedSam2) -> None:
    assert not loaded.model.training
    assert all(parameter.dtype == torch.float32 for parameter in loaded.model.parameters())
    assert all(parameter.device == CPU for parameter in loaded.model.parameters())


# Dummy weights.


def test_dummy_is_seeded_untrained_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caller_random_state = torch.random.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="imgembed.models.sam2_loading"):
        first = load_sam2("sam2.1-hiera-tiny", "dummy", device=CPU)
    second = load_sam2("sam2.1-hiera-tiny", "dummy", device=CPU)
    other_seed = load_sam2("sam2.1-hiera-tiny", "dummy", device=CPU, dummy_seed=1)

    assert torch.equal(torch.random.get_rng_state(), caller_random_state)
    assert (first.source, first.weights_location, first.untrained) == ("dummy", "dummy", True)
    assert_inference_ready(first)
    assert_same_weights(second.model, first.model.state_dict())
    first_weight = first.model.mask_decoder.iou_token.weight
    assert not torch.equal(other_seed.model.mask_decoder.iou_token.weight, first_weight)
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert any("UNTRAINED" in record.getMessage() for record in warnings)
    assert any("RANDOM weights" in record.getMessage() for record in warnings)


# Hugging Face format folders.


def test_hf_folder_loads_the_same_weights(hf_tiny_folder: Path, hf_tiny_model: Sam2Model) -> None:
    loaded = load_sam2("sam2.1-hiera-tiny", str(hf_tiny_folder), device=CPU)

    assert (loaded.source, loaded.weights_location) == ("folder", str(hf_tiny_folder))
    assert not loaded.untrained
    assert_inference_ready(loaded)
    assert_same_weights(loaded.model, hf_tiny_model.state_dict())


def test_hf_video_folder_loads_its_image_weights(
    hf_video_tiny_folder: tuple[Path, torch.nn.Module],
) -> None:
    folder, video_model = hf_video_tiny_folder
    assert json.loads((folder / "config.json").read_text())["model_type"] == "sam2_video"

    loaded = load_sam2("sam2.1-hiera-tiny", str(folder), device=CPU)

    video_state = video_model.state_dict()
    assert_same_weights(loaded.model, {key: video_state[key] for key in loaded.model.state_dict()})


def test_hf_folder_of_another_size_is_refused(hf_tiny_folder: Path) -> None:
    with pytest.raises(ModelLoadError) as raised:
        load_sam2("sam2.1-hiera-large", str(hf_tiny_folder), device=CPU)
    assert "sam2-hiera-tiny or sam2.1-hiera-tiny" in raised.value.message
    assert "not sam2.1-hiera-large" in raised.value.message
    assert_says_how_to_fix(raised.value)


# Meta checkpoints.


def test_meta_checkpoint_loads_converted_weights(
    meta_tiny_checkpoint: Path, meta_tiny_model: torch.nn.Module
) -> None:
    loaded = load_sam2("sam2.1-hiera-tiny", str(meta_tiny_checkpoint), device=CPU)

    assert (loaded.source, loaded.weights_location) == (
        "meta_checkpoint",
        str(meta_tiny_checkpoint),
    )
    assert_inference_ready(loaded)
    assert_same_weights(loaded.model, convert_meta_state_dict(meta_tiny_model.state_dict()))


@pytest.mark.parametrize(
    ("variant_name", "meta_config"),
    [
        ("sam2.1-hiera-tiny", "configs/sam2.1/sam2.1_hiera_t.yaml"),
        ("sam2.1_hiera_t.yaml", None),
        ("sam2.1-hiera-tiny", "sam2.1_hiera_t"),
    ],
)
def test_meta_checkpoint_with_config_names(
    meta_tiny_checkpoint: Path, variant_name: str, meta_config: str | None
) -> None:
    loaded = load_sam2(variant_name, str(meta_tiny_checkpoint), meta_config, device=CPU)
    assert loaded.variant.name == "sam2.1-hiera-tiny"


def test_seed_worker_settings_load(meta_checkpoint_factory: Callable[[str, str], Path]) -> None:
    """The seed worker's SAM2_MODEL_CFG / SAM2_CHECKPOINT pair, with a SAM 2 (not 2.1) file."""
    checkpoint = meta_checkpoint_factory("configs/sam2/sam2_hiera_t.yaml", "sam2_hiera_tiny.pt")
    loaded = load_sam2(
        "sam2_configs/sam2_hiera_t.yaml",
        f"{checkpoint.parent}/../{checkpoint.parent.name}/sam2_hiera_tiny.pt",
        "sam2_configs/sam2_hiera_t.yaml",
        device=CPU,
    )
    assert loaded.variant.name == "sam2-hiera-tiny"
    assert Path(loaded.weights_location).resolve() == checkpoint.resolve()


def test_folder_with_only_a_meta_checkpoint(meta_tiny_checkpoint: Path) -> None:
    loaded = load_sam2("sam2.1-hiera-tiny", str(meta_tiny_checkpoint.parent), device=CPU)
    assert (loaded.source, loaded.weights_location) == (
        "meta_checkpoint",
        str(meta_tiny_checkpoint),
    )


# The hub, through the standard cache, without network.


def test_hub_snapshot_in_hf_format(
    hub_cache_dir: Path,
    add_to_hub_cache: AddToHubCache,
    hf_tiny_folder: Path,
    hf_tiny_model: Sam2Model,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    add_to_hub_cache(
        "facebook/sam2.1-hiera-tiny",
        {name: hf_tiny_folder / name for name in ("config.json", "model.safetensors")},
    )

    loaded = load_sam2(
        "sam2.1-hiera-tiny", None, device=CPU, hub_cache_dir=str(hub_cache_dir), hub_offline=True
    )

    assert (loaded.source, loaded.weights_location) == ("hub", "facebook/sam2.1-hiera-tiny")
    assert_same_weights(loaded.model, hf_tiny_model.state_dict())


def test_hub_snapshot_with_a_meta_checkpoint(
    hub_cache_dir: Path,
    add_to_hub_cache: AddToHubCache,
    meta_tiny_checkpoint: Path,
    meta_tiny_model: torch.nn.Module,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Like the original ``facebook/sam2*`` repositories: a ``.pt``, its YAML and a config.json
    that is not a ``transformers`` one."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    add_to_hub_cache(
        "facebook/sam2.1-hiera-tiny",
        {
            "config.json": b'{"library_name": "sam2"}',
            "sam2.1_hiera_t.yaml": b"# Meta config\n",
            "sam2.1_hiera_tiny.pt": meta_tiny_checkpoint,
        },
    )

    loaded = load_sam2(
        "sam2.1-hiera-tiny",
        "facebook/sam2.1-hiera-tiny",
        device=CPU,
        hub_cache_dir=str(hub_cache_dir),
        hub_offline=True,
    )

    assert loaded.source == "hub"
    assert_same_weights(loaded.model, convert_meta_state_dict(meta_tiny_model.state_dict()))


# Failures: each one a ModelLoadError that says what to set.


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    missing = tmp_path / "checkpoints" / "sam2.1_hiera_tiny.pt"
    with pytest.raises(ModelLoadError) as raised:
        load_sam2("sam2.1-hiera-tiny", str(missing), device=CPU)
    assert f"{missing} does not exist" in raised.value.message
    assert_says_how_to_fix(raised.value)


def test_missing_path_that_is_not_a_hub_id(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(ModelLoadError) as raised:
        load_sam2("sam2.1-hiera-tiny", str(missing), device=CPU)
    assert "is not a hub id" in raised.value.message
    assert_says_how_to_fix(raised.value)


def test_folder_with_nothing_usable(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no weights here")
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelLoadError) as raised:
        load_sam2("sam2.1-hiera-tiny", str(tmp_path), device=CPU)
    assert "holds no usable SAM 2 weights" in raised.value.message
    assert "'bert'" in raised.value.message
    assert_says_how_to_fix(raised.value)


def test_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError) as raised:
        load_sam2("sam2.1-hiera-tiny", str(weights), device=CPU)
    assert "point at its folder" in raised.value.message


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    corrupt = tmp_path / "sam2.1_hiera_tiny.pt"
    corrupt.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(ModelLoadError) as raised:
        load_sam2("sam2.1-hiera-tiny", str(corrupt), device=CPU)
    assert "Cannot read the Meta checkpoint" in raised.value.message
    assert raised.value.__cause__ is not None
    assert_says_how_to_fix(raised.value)


def test_checkpoint_without_model_entry(tmp_path: Path) -> None:
    weights = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"state_dict": {"weight": torch.zeros(1)}}, weights)
    with pytest.raises(ModelLoadError) as raised:
        load_sam2("sam2.1-hiera-tiny", str(weights), device=CPU)
    assert "expected a dict whose 'model' entry" in raised.value.message
    assert "state_dict" in raised.value.message


def test_checkpoint_with_unknown_keys(tmp_path: Path, meta_tiny_model: torch.nn.Module) -> None:
    weights = tmp_path / "sam2.1_hiera_tiny.pt"
    state = dict(meta_tiny_model.state_dict())
    state["image_encoder.trunk.adapter.weight"] = torch.zeros(3)
    torch.save({"model": state}, weights)
    with pytest.raises(ModelLoadError) as raised:
        load_sam2("sam2.1-hiera-tiny", str(weights), device=CPU)
    assert "image_encoder.trunk.adapter.weight" in raised.value.message
    assert "does not match the config" in raised.value.message


def test_checkpoint_of_another_size(meta_tiny_checkpoint: Path) -> None:
    with pytest.raises(ModelLoadError) as raised:
        load_sam2(
            "sam2.1-hiera-large",
            str(meta_tiny_checkpoint),
            "configs/sam2.1/sam2.1_hiera_l.yaml",
            device=CPU,
        )
    message = raised.value.message
    assert "does not fit sam2.1-hiera-large" in message
    assert "looks like sam2-hiera-tiny or sam2.1-hiera-tiny" in message
    assert "does not match the config" in message
    assert "wrong shape" in message
    assert_says_how_to_fix(raised.value)


def test_unknown_config_name(meta_tiny_checkpoint: Path) -> None:
    with pytest.raises(ModelLoadError) as raised:
        load_sam2("sam2.1-hiera-tiny", str(meta_tiny_checkpoint), "sam3_hiera_t.yaml", device=CPU)
    assert "'sam3_hiera_t.yaml'" in raised.value.message
    assert "sam2.1-hiera-base-plus" in raised.value.message


def test_config_disagreeing_with_model_name(meta_tiny_checkpoint: Path) -> None:
    with pytest.raises(ModelLoadError) as raised:
        load_sam2("sam2.1-hiera-tiny", str(meta_tiny_checkpoint), "sam2_hiera_l.yaml", device=CPU)
    assert "is sam2-hiera-large but the model is sam2.1-hiera-tiny" in raised.value.message


def test_hub_repo_absent_offline(hub_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as raised:
        load_sam2(
            "sam2.1-hiera-tiny",
            "facebook/sam2.1-hiera-tiny",
            device=CPU,
            hub_cache_dir=str(hub_cache_dir),
            hub_offline=True,
        )
    assert "offline, the hub was not contacted" in raised.value.message
    assert str(hub_cache_dir) in raised.value.message
    assert_says_how_to_fix(raised.value)


def test_hub_snapshot_without_weights(
    hub_cache_dir: Path, add_to_hub_cache: AddToHubCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    add_to_hub_cache("someone/sam2-readme-only", {"README.md": b"# nothing"})
    with pytest.raises(ModelLoadError) as raised:
        load_sam2(
            "sam2.1-hiera-tiny",
            "someone/sam2-readme-only",
            device=CPU,
            hub_cache_dir=str(hub_cache_dir),
            hub_offline=True,
        )
    assert "holds no usable SAM 2 weights" in raised.value.message
    assert_says_how_to_fix(raised.value)


def _free_loopback_port() -> int:
    """A loopback TCP port on which nothing listens (it was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _FailingHub(ThreadingHTTPServer):
    """A loopback HTTP server that counts the requests it refused."""

    requests_seen = 0


class _AlwaysFailing(BaseHTTPRequestHandler):
    """Answers every request with HTTP 500, like a hub that is down."""

    def do_GET(self) -> None:
        self.send_error(500, "hub is down")
        assert isinstance(self.server, _FailingHub)
        self.server.requests_seen += 1

    def log_message(self, format: str, *args: object) -> None:
        """Keeps the test output quiet."""


@pytest.fixture
def failing_hub() -> Iterator[_FailingHub]:
    """A loopback HTTP server that answers 500 to everything."""
    server = _FailingHub(("127.0.0.1", 0), _AlwaysFailing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("hub", ["nothing_listening", "answers_500"])
def test_hub_unreachable(hub: str, hub_cache_dir: Path, request: pytest.FixtureRequest) -> None:
    server: _FailingHub | None = None
    if hub == "nothing_listening":
        endpoint = f"http://127.0.0.1:{_free_loopback_port()}"
    else:
        server = request.getfixturevalue("failing_hub")
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    with pytest.raises(ModelLoadError) as raised:
        load_sam2(
            "sam2.1-hiera-tiny",
            None,
            device=CPU,
            hub_cache_dir=str(hub_cache_dir),
            hub_endpoint=endpoint,
        )
    assert "facebook/sam2.1-hiera-tiny" in raised.value.message
    assert endpoint in raised.value.message
    assert_says_how_to_fix(raised.value)
    if server is not None:
        assert server.requests_seen >= 1
