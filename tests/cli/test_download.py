"""``imgembed download`` in-process against a loopback stand-in hub (``HF_ENDPOINT``).

The JSON summary on stdout, the offline start line on stderr, plain folders with ``--local-dir``,
and the one-line refusals: an unknown name, ``HF_HUB_OFFLINE`` set, an unreachable hub, a 404
repository, a hub that does not answer in time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_standin import HubStandIn, running_hub
from servers import free_port

from imgembed.cli import main

SAM2_REPO = "facebook/sam2.1-hiera-tiny"
SIGLIP_REPO = "google/siglip2-base-patch16-224"


@pytest.fixture(autouse=True)
def _root_logger() -> Iterator[None]:
    """The root logger as it was before ``main`` configured it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandIn]:
    repos = {
        SAM2_REPO: {
            "config.json": b'{"model_type": "sam2_video"}',
            "model.safetensors": b"w" * 5000,
            "README.md": b"card",
        },
        SIGLIP_REPO: {
            "config.json": b'{"model_type": "siglip"}',
            "model.safetensors": b"s" * 3000,
            "tokenizer.json": b"{}",
            "tokenizer_config.json": b"{}",
            "preprocessor_config.json": b"{}",
        },
    }
    for name in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_HOME", "HF_HUB_ETAG_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    with running_hub(HubStandIn(repos=repos)) as standin:
        monkeypatch.setenv("HF_ENDPOINT", standin.url)
        yield standin


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def error_line(err: str) -> str:
    """The command's own error line (huggingface_hub's progress bars may precede it)."""
    lines = [line for line in err.splitlines() if line.startswith("imgembed: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_download_into_a_cache_prints_the_offline_start(
    hub: HubStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    status, out, err = run_cli(
        capsys, "download", "sam2.1-hiera-tiny", SIGLIP_REPO, "--cache-dir", str(cache)
    )
    assert status == 0, err
    summary = json.loads(out)
    assert [m["name"] for m in summary["models"]] == [
        "sam2.1-hiera-tiny",
        "siglip2-base-patch16-224",
    ]
    sam2 = summary["models"][0]
    assert sam2["repo_id"] == SAM2_REPO
    assert sam2["commit"] == hub.commit(SAM2_REPO)
    assert {(f["path"], f["size"], f["check"]) for f in sam2["files"]} == {
        ("config.json", 28, "git-sha1"),
        ("model.safetensors", 5000, "sha256"),
    }
    assert summary["offline_env"] == {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache.resolve())}
    serve = (
        f"HF_HUB_OFFLINE=1 HF_HUB_CACHE={cache.resolve()} imgembed serve "
        "--model sam2.1-hiera-tiny --model siglip2-base-patch16-224"
    )
    assert summary["serve"] == serve
    assert err.rstrip().endswith(f"start without the hub: {serve}")
    assert "downloaded sam2.1-hiera-tiny (facebook/sam2.1-hiera-tiny at " in err


def test_cache_from_hf_home(
    hub: HubStandIn,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    status, out, err = run_cli(capsys, "download", "sam2.1-hiera-tiny")
    assert status == 0, err
    assert json.loads(out)["offline_env"]["HF_HUB_CACHE"] == str((tmp_path / "home/hub").resolve())


def test_local_dir_writes_one_folder_per_model(
    hub: HubStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "weights"
    status, out, err = run_cli(capsys, "download", "sam2.1-hiera-tiny", "--local-dir", str(target))
    assert status == 0, err
    summary = json.loads(out)
    folder = target.resolve() / "sam2.1-hiera-tiny"
    assert summary["models"][0]["folder"] == str(folder)
    assert (folder / "model.safetensors").read_bytes() == b"w" * 5000
    assert summary["offline_env"] == {}
    assert summary["serve"] == f"imgembed serve --model sam2.1-hiera-tiny --weights {folder}"


def test_unknown_model_fails_in_one_line_before_any_request(
    hub: HubStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(
        capsys, "download", "sam2.1-hiera-tiny", "sam2.1-hiera-huge", "--cache-dir", str(tmp_path)
    )
    assert status == 2
    assert out == ""
    assert error_line(err).startswith(
        "imgembed: error: Unknown model 'sam2.1-hiera-huge': expected a SAM 2 name"
    )
    assert hub.requests == []


def test_offline_mode_is_refused(
    hub: HubStandIn,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    status, _, err = run_cli(capsys, "download", "sam2.1-hiera-tiny", "--cache-dir", str(tmp_path))
    assert status == 2
    assert "HF_HUB_OFFLINE is set; unset it" in error_line(err)
    assert hub.requests == []


def test_unreachable_hub_says_to_set_hf_endpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    status, _, err = run_cli(capsys, "download", "sam2.1-hiera-tiny", "--cache-dir", str(tmp_path))
    assert status == 2
    line = error_line(err)
    assert line.startswith(f"imgembed: error: Cannot reach the hub {endpoint} for '{SAM2_REPO}'")
    assert "Set HF_ENDPOINT to a reachable hub or mirror" in line


def test_missing_repository_fails_in_one_line(
    hub: HubStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    del hub.repos[SAM2_REPO]
    status, _, err = run_cli(capsys, "download", "sam2.1-hiera-tiny", "--cache-dir", str(tmp_path))
    assert status == 2
    assert f"has no repository '{SAM2_REPO}'" in error_line(err)


def test_hub_timeout_from_the_flag(
    hub: HubStandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.faults["api"] = "hang"
    status, _, err = run_cli(
        capsys, "download", "sam2.1-hiera-tiny", "--cache-dir", str(tmp_path), "--timeout", "0.3"
    )
    assert status == 2
    assert "waited at most 0.3 s" in error_line(err)


def test_bad_timeout_variable_is_refused(
    hub: HubStandIn,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "soon")
    status, _, err = run_cli(capsys, "download", "sam2.1-hiera-tiny", "--cache-dir", str(tmp_path))
    assert status == 2
    assert "HF_HUB_ETAG_TIMEOUT='soon' is not a number of seconds" in error_line(err)


def test_cache_dir_and_local_dir_together_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run_cli(
        capsys, "download", "sam2.1-hiera-tiny", "--cache-dir", "a", "--local-dir", "b"
    )
    assert status == 2
    assert "not both" in error_line(err)
