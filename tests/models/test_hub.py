"""``imgembed.models.hub``: hub ids and local paths, snapshots, ``from_pretrained`` and the messages
of what goes wrong, on their own (the loaders' tests show them through ``load_sam2`` and
``load_siglip``).

No test here reaches a network: snapshots come from a hub cache laid out in ``tmp_path`` (the
``hub_cache_dir`` and ``add_to_hub_cache`` fixtures of ``conftest.py``), and the unreachable hub is
a loopback port on which nothing listens.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import load_file, save_file
from siglip_checkpoints import TINY_FIXRES, build_siglip_model
from transformers import SiglipModel

from imgembed.errors import ModelLoadError
from imgembed.models.hub import (
    HubAccess,
    describe_error,
    download_snapshot,
    explained_load_errors,
    is_hub_id,
    load_pretrained,
    local_path_or_hub_id,
    read_json_object,
)
from imgembed.server.errors import http_status

AddToHubCache = Callable[[str, Mapping[str, Path | bytes]], Path]
OFFLINE_REMEDY = "To download it, allow hub access (unset HF_HUB_OFFLINE) on a networked machine."


@pytest.fixture(scope="module")
def tiny_model() -> SiglipModel:
    model = build_siglip_model(TINY_FIXRES)
    assert isinstance(model, SiglipModel)
    return model


@pytest.fixture
def tiny_folder(tiny_model: SiglipModel, tmp_path: Path) -> Path:
    """``save_pretrained`` of :func:`tiny_model`: ``config.json`` + ``model.safetensors``."""
    folder = tmp_path / "tiny"
    tiny_model.save_pretrained(folder)
    return folder


# Hub ids and local paths.


@pytest.mark.parametrize("weights", ["facebook/sam2.1-hiera-tiny", "org/name.pt", "a/b"])
def test_hub_id_shapes(weights: str) -> None:
    assert is_hub_id(weights)


@pytest.mark.parametrize(
    "weights", ["name", "org/", "/name", "a/b/c", "./org/name", "~/name", "~org/name", "a\\b/c"]
)
def test_not_hub_id_shapes(weights: str) -> None:
    assert not is_hub_id(weights)


def test_existing_folder_is_local(tmp_path: Path) -> None:
    assert local_path_or_hub_id(str(tmp_path), looked_for="folder") == tmp_path


def test_existing_file_is_local_even_with_a_hub_id_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").write_text("x")
    monkeypatch.chdir(tmp_path)
    assert local_path_or_hub_id("org/name", looked_for="folder") == Path("org/name")


def test_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "weights").mkdir()
    assert local_path_or_hub_id("~/weights", looked_for="folder") == tmp_path / "weights"


def test_missing_path_with_a_hub_id_shape_is_a_hub_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    place = local_path_or_hub_id("google/siglip2-base-patch16-224", looked_for="folder")
    assert place == "google/siglip2-base-patch16-224"
    assert isinstance(place, str)


def test_bad_id_says_what_was_looked_for(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(ModelLoadError) as raised:
        local_path_or_hub_id(str(missing), looked_for="file or folder")
    assert raised.value.message == (
        f"No file or folder {missing} exists, and {str(missing)!r} is not a hub id (org/name)."
    )
    assert http_status(raised.value) == 500


# Snapshots.


def test_offline_hit_returns_the_cached_snapshot(
    hub_cache_dir: Path, add_to_hub_cache: AddToHubCache
) -> None:
    snapshot = add_to_hub_cache("org/name", {"config.json": b"{}", "model.safetensors": b"x"})
    hub = HubAccess(cache_dir=str(hub_cache_dir), offline=True)
    found = download_snapshot("org/name", ["config.json"], hub, weights_of="SAM 2")
    assert found == snapshot
    assert (found / "config.json").read_bytes() == b"{}"


def test_offline_miss_names_the_repository_the_cache_and_the_fix(hub_cache_dir: Path) -> None:
    hub = HubAccess(cache_dir=str(hub_cache_dir), offline=True)
    with pytest.raises(ModelLoadError) as raised:
        download_snapshot("org/absent", ["config.json"], hub, weights_of="SigLIP 2")
    message = raised.value.message
    assert message.startswith(
        "Cannot get SigLIP 2 weights from hub repository 'org/absent' (offline, the hub was not "
        f"contacted; looked in the cache {hub_cache_dir}): LocalEntryNotFoundError: "
    )
    assert message.endswith(f". {OFFLINE_REMEDY}")
    assert isinstance(raised.value.__cause__, LocalEntryNotFoundError)


def test_offline_miss_in_the_default_cache_says_so() -> None:
    with pytest.raises(ModelLoadError) as raised:
        download_snapshot(
            "org/surely-not-cached-0123456789",
            ["config.json"],
            HubAccess(offline=True),
            weights_of="SAM 2",
        )
    assert "looked in the default Hugging Face cache" in raised.value.message


def test_unreachable_hub_names_the_endpoint(hub_cache_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    hub = HubAccess(cache_dir=str(hub_cache_dir), endpoint=endpoint)
    with pytest.raises(ModelLoadError) as raised:
        download_snapshot("org/name", ["config.json"], hub, weights_of="SAM 2")
    message = raised.value.message
    assert message.startswith(
        f"Cannot get SAM 2 weights from hub repository 'org/name' (hub {endpoint}; looked in "
        f"the cache {hub_cache_dir}): "
    )
    assert OFFLINE_REMEDY not in message
    assert raised.value.__cause__ is not None


# from_pretrained.


def test_load_pretrained_loads_the_saved_weights(
    tiny_folder: Path, tiny_model: SiglipModel
) -> None:
    model = load_pretrained(SiglipModel, tiny_folder, what="SigLIP weights", where="here")
    assert isinstance(model, SiglipModel)
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    expected = tiny_model.state_dict()
    assert all(torch.equal(tensor, expected[key]) for key, tensor in model.state_dict().items())


def test_load_pretrained_without_weights(tiny_folder: Path) -> None:
    (tiny_folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as raised:
        load_pretrained(SiglipModel, tiny_folder, what="SigLIP weights", where="the folder X")
    assert raised.value.message.startswith("Cannot load the SigLIP weights in the folder X: ")
    assert raised.value.message.endswith(".")
    assert raised.value.__cause__ is not None


def test_load_pretrained_with_weights_missing(tiny_folder: Path) -> None:
    weights_file = tiny_folder / "model.safetensors"
    state = load_file(weights_file)
    dropped = sorted(key for key in state if key.startswith("logit_"))
    assert dropped
    save_file({k: v for k, v in state.items() if k not in dropped}, weights_file, {"format": "pt"})
    with pytest.raises(ModelLoadError) as raised:
        load_pretrained(SiglipModel, tiny_folder, what="SigLIP weights", where="the folder X")
    assert raised.value.message == (
        f"The weights in the folder X leave {len(dropped)} SiglipModel weight(s) unfilled "
        f"({', '.join(dropped)}): the checkpoint does not match its config."
    )


# Messages.


@pytest.mark.parametrize(
    ("error", "described"),
    [
        (OSError("no such file."), "OSError: no such file."),
        (ValueError("bad value"), "ValueError: bad value."),
        (KeyError("key"), "KeyError: 'key'."),
        (RuntimeError("dots... "), "RuntimeError: dots."),
    ],
)
def test_describe_error(error: Exception, described: str) -> None:
    assert describe_error(error) == described


def test_explained_load_errors_adds_model_weights_and_fix() -> None:
    cause = ModelLoadError("The folder /w holds nothing.")
    with (
        pytest.raises(ModelLoadError) as raised,
        explained_load_errors("sam2.1-hiera-tiny", "/w", "To fix: set --weights."),
    ):
        raise cause
    assert raised.value.message == (
        "Cannot load sam2.1-hiera-tiny from weights='/w': The folder /w holds nothing. "
        "To fix: set --weights."
    )
    assert raised.value.__cause__ is cause


def test_explained_load_errors_lets_other_errors_through() -> None:
    with pytest.raises(TypeError), explained_load_errors("m", None, "fix"):
        raise TypeError("a bug, not a load error")


def test_explained_load_errors_without_error() -> None:
    with explained_load_errors("m", None, "fix"):
        pass


# JSON.


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, None),
        (b'{"model_type": "sam2"}', {"model_type": "sam2"}),
        (b"[1, 2]", None),
        (b"{not json", None),
        (b"\xff\xfe{", None),
    ],
)
def test_read_json_object(tmp_path: Path, content: bytes | None, expected: object) -> None:
    path = tmp_path / "config.json"
    if content is not None:
        path.write_bytes(content)
    assert read_json_object(path) == expected


def test_read_json_object_of_a_folder(tmp_path: Path) -> None:
    assert read_json_object(tmp_path) is None
