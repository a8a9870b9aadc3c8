"""Pre-fetching hub weights (``imgembed.models.hub_download``) against a loopback stand-in hub.

The stand-in (tests/support/hub_standin.py) answers the routes ``huggingface_hub`` calls, so these
tests run the real transfer code: which files are fetched (exactly the loaders' patterns), the
cache layout an offline start reads, resume after a dropped connection and after a failed run,
and the failures: a 404 repository, a truncated file, a corrupted file, a hub that never answers.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_standin import HubStandIn, running_hub

from imgembed.errors import ModelLoadError, UnknownModelError
from imgembed.models.hub import HubAccess
from imgembed.models.hub_download import (
    download_model,
    list_repo,
    resolve_download_name,
    verify_file,
)
from imgembed.models.sam2_loading import fetch_sam2_hub
from imgembed.models.siglip_loading import fetch_siglip_hub

WEIGHTS = os.urandom(300_000)
SAM2_HF = "facebook/sam2.1-hiera-tiny"
SAM2_META = "facebook/sam2-hiera-large"
SIGLIP = "google/siglip2-base-patch16-224"
SIGLIP_FILES = {
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
}


def _repos() -> dict[str, dict[str, bytes]]:
    extras = {".gitattributes": b"*.pt filter=lfs\n", "README.md": b"# model card\n"}
    return {
        SAM2_HF: {
            "config.json": json.dumps({"model_type": "sam2_video"}).encode(),
            "model.safetensors": WEIGHTS,
            "sam2.1_hiera_tiny.pt": b"meta weights the loader does not read here",
            **extras,
        },
        SAM2_META: {
            "config.json": b"{}",
            "sam2_hiera_large.pt": WEIGHTS,
            "flax_model.msgpack": b"not read",
            **extras,
        },
        SIGLIP: {
            **{name: f"{name} content".encode() for name in SIGLIP_FILES},
            "model.safetensors": WEIGHTS,
            "flax_model.msgpack": b"not read",
            **extras,
        },
    }


@pytest.fixture
def hub() -> Iterator[HubStandIn]:
    with running_hub(HubStandIn(repos=_repos())) as standin:
        yield standin


def access(hub: HubStandIn, cache: Path, timeout_s: float | None = 5.0) -> HubAccess:
    return HubAccess(cache_dir=str(cache), endpoint=hub.url, timeout_s=timeout_s)


def fetched_paths(hub: HubStandIn) -> set[str]:
    """The files the stand-in sent a body for."""
    return {
        r.path.split("/", 5)[5] for r in hub.requests if r.method == "GET" and "/resolve/" in r.path
    }


@pytest.mark.parametrize(
    ("name", "family", "canonical", "repo"),
    [
        ("sam2.1-hiera-tiny", "sam2", "sam2.1-hiera-tiny", SAM2_HF),
        ("facebook/sam2-hiera-large", "sam2", "sam2-hiera-large", SAM2_META),
        ("sam2_hiera_l.yaml", "sam2", "sam2-hiera-large", SAM2_META),
        ("google/siglip2-large-patch16-512", "siglip", "siglip2-large-patch16-512", None),
    ],
)
def test_names_resolve_to_family_and_repository(
    name: str, family: str, canonical: str, repo: str | None
) -> None:
    resolved = resolve_download_name(name)
    assert resolved[:2] == (family, canonical)
    assert resolved[2] == (repo or "google/siglip2-large-patch16-512")


def test_unknown_name_lists_both_families() -> None:
    with pytest.raises(UnknownModelError) as caught:
        resolve_download_name("sam3-hiera-tiny")
    assert "expected a SAM 2 name (sam2-hiera-tiny" in caught.value.message
    assert "SigLIP 2 name (siglip2-base-patch16-224" in caught.value.message


def test_sam2_transformers_repo_fetches_config_and_safetensors_only(
    hub: HubStandIn, tmp_path: Path
) -> None:
    model = download_model("sam2.1-hiera-tiny", access(hub, tmp_path))
    commit = hub.commit(SAM2_HF)
    assert (model.family, model.repo_id, model.commit) == ("sam2", SAM2_HF, commit)
    assert (
        model.folder
        == tmp_path.resolve() / "models--facebook--sam2.1-hiera-tiny/snapshots" / commit
    )
    assert model.cache_dir == tmp_path.resolve()
    assert fetched_paths(hub) == {"config.json", "model.safetensors"}
    checks = {f.path: (f.size, f.algorithm) for f in model.files}
    assert checks == {
        "config.json": (len(_repos()[SAM2_HF]["config.json"]), "git-sha1"),
        "model.safetensors": (len(WEIGHTS), "sha256"),
    }
    # What an offline start reads: refs/main names the commit, the loader's fetch finds it all.
    ref = tmp_path / "models--facebook--sam2.1-hiera-tiny/refs/main"
    assert ref.read_text() == commit
    offline = HubAccess(cache_dir=str(tmp_path), offline=True)
    assert fetch_sam2_hub(SAM2_HF, offline) == model.folder


def test_sam2_meta_repo_fetches_config_and_the_checkpoint(hub: HubStandIn, tmp_path: Path) -> None:
    model = download_model("sam2_hiera_l.yaml", access(hub, tmp_path))
    assert model.name == "sam2-hiera-large"
    assert fetched_paths(hub) == {"config.json", "sam2_hiera_large.pt"}
    assert {f.path for f in model.files} == {"config.json", "sam2_hiera_large.pt"}


def test_siglip_repo_fetches_weights_tokenizer_and_processor(
    hub: HubStandIn, tmp_path: Path
) -> None:
    model = download_model(SIGLIP, access(hub, tmp_path))
    assert model.family == "siglip"
    assert fetched_paths(hub) == SIGLIP_FILES
    offline = HubAccess(cache_dir=str(tmp_path), offline=True)
    assert fetch_siglip_hub(SIGLIP, offline) == model.folder


def test_local_dir_gets_plain_files(hub: HubStandIn, tmp_path: Path) -> None:
    target = tmp_path / "models" / "sam2.1-hiera-tiny"
    model = download_model("sam2.1-hiera-tiny", access(hub, tmp_path / "cache"), local_dir=target)
    assert model.folder == target
    assert model.cache_dir is None
    assert (target / "model.safetensors").read_bytes() == WEIGHTS
    assert not (target / "model.safetensors").is_symlink()
    assert {f.path for f in model.files} == {"config.json", "model.safetensors"}


def test_second_run_fetches_nothing(hub: HubStandIn, tmp_path: Path) -> None:
    download_model("sam2.1-hiera-tiny", access(hub, tmp_path))
    gets = len(hub.file_gets("model.safetensors"))
    again = download_model("sam2.1-hiera-tiny", access(hub, tmp_path))
    assert len(hub.file_gets("model.safetensors")) == gets == 1
    assert {f.path for f in again.files} == {"config.json", "model.safetensors"}


def test_dropped_connection_resumes_with_a_range_request(
    hub: HubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """huggingface_hub writes whole chunks (10 MiB by default), so a connection dropped mid-file
    resumes from the last whole chunk; 64 KiB chunks make that visible on a 300 kB file."""
    monkeypatch.setattr("huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    hub.faults["model.safetensors"] = "drop_once"
    model = download_model("sam2.1-hiera-tiny", access(hub, tmp_path))
    gets = hub.file_gets("model.safetensors")
    resumed_at = 2 * 64 * 1024  # the whole chunks before the drop at 150 000 bytes
    assert [g.range for g in gets] == [None, f"bytes={resumed_at}-"]
    assert (model.folder / "model.safetensors").read_bytes() == WEIGHTS
    assert {f.algorithm for f in model.files if f.path == "model.safetensors"} == {"sha256"}


def test_failed_run_is_completed_by_the_next_without_refetching(
    hub: HubStandIn, tmp_path: Path
) -> None:
    hub.faults["model.safetensors"] = "short"
    with pytest.raises(ModelLoadError):
        download_model("sam2.1-hiera-tiny", access(hub, tmp_path))
    del hub.faults["model.safetensors"]
    download_model("sam2.1-hiera-tiny", access(hub, tmp_path))
    assert len(hub.file_gets("config.json")) == 1  # kept from the failed run
    assert len(hub.file_gets("model.safetensors")) == 2


def test_truncated_file_fails_its_size_check_in_one_line(hub: HubStandIn, tmp_path: Path) -> None:
    hub.faults["model.safetensors"] = "short"
    with pytest.raises(ModelLoadError) as caught:
        download_model("sam2.1-hiera-tiny", access(hub, tmp_path))
    message = caught.value.message
    assert f"file should be of size {len(WEIGHTS)} but has size {len(WEIGHTS) // 2}" in message
    assert "\n" not in message
    blobs = tmp_path / "models--facebook--sam2.1-hiera-tiny/blobs"
    assert not [p for p in blobs.iterdir() if p.stat().st_size == len(WEIGHTS) // 2]


def test_corrupted_file_fails_its_hash_check(hub: HubStandIn, tmp_path: Path) -> None:
    hub.faults["model.safetensors"] = "corrupt"
    with pytest.raises(ModelLoadError) as caught:
        download_model("sam2.1-hiera-tiny", access(hub, tmp_path))
    message = caught.value.message
    assert "model.safetensors has sha256" in message
    assert "but the hub lists" in message
    assert "run imgembed download again" in message


def test_verify_file_size_mismatch_says_both_sizes(tmp_path: Path) -> None:
    from imgembed.models.hub_download import HubFile

    path = tmp_path / "w.bin"
    path.write_bytes(b"1234")
    with pytest.raises(ModelLoadError, match=r"w\.bin is 4 bytes but the hub lists 5"):
        verify_file(path, HubFile("w.bin", 5, None, None))
    assert verify_file(path, HubFile("w.bin", 4, None, None)).algorithm == "size"


def test_missing_repository_is_a_404_in_one_line(hub: HubStandIn, tmp_path: Path) -> None:
    del hub.repos[SAM2_HF]
    with pytest.raises(ModelLoadError) as caught:
        download_model("sam2.1-hiera-tiny", access(hub, tmp_path))
    message = caught.value.message
    assert f"The hub {hub.url} has no repository '{SAM2_HF}'" in message
    assert "HF_TOKEN" in message
    assert "\n" not in message


def test_hub_that_never_answers_times_out(hub: HubStandIn, tmp_path: Path) -> None:
    hub.faults["api"] = "hang"
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as caught:
        list_repo(SAM2_HF, access(hub, tmp_path, timeout_s=0.5))
    assert time.monotonic() - started < 5
    assert "waited at most 0.5 s" in caught.value.message
    assert "HF_ENDPOINT" in caught.value.message


def test_unreachable_hub_names_what_to_set(tmp_path: Path) -> None:
    from servers import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ModelLoadError) as caught:
        download_model("sam2.1-hiera-tiny", HubAccess(cache_dir=str(tmp_path), endpoint=endpoint))
    assert caught.value.message.startswith(f"Cannot reach the hub {endpoint}")
    assert "Set HF_ENDPOINT to a reachable hub or mirror" in caught.value.message
