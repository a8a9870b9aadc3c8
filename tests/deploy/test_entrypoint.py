"""docker/entrypoint.sh and docker/healthcheck.py, run as the image runs them.

The entry point runs under ``sh`` with a stub ``PATH``: ``imgembed`` and ``python`` are scripts that
print the arguments and the variables they were started with, so each mode's command line and the
baked-weights defaults are checked without the real commands (or a container).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
SHOWN = ("IMGEMBED_CONFIG", "HF_HUB_OFFLINE", "SAM2_CHECKPOINT", "SAM2_MODEL_CFG")
STUB = """#!/bin/sh
echo "ran: $(basename "$0") $*"
{lines}
"""


@pytest.fixture
def stub_path(tmp_path: Path) -> Path:
    """A folder holding stub ``imgembed`` and ``python`` commands."""
    folder = tmp_path / "bin"
    folder.mkdir()
    lines = "\n".join(f'echo "{name}=${{{name}-<unset>}}"' for name in SHOWN)
    for name in ("imgembed", "python"):
        stub = folder / name
        stub.write_text(STUB.format(lines=lines))
        stub.chmod(0o755)
    return folder


def run_entrypoint(
    stub_path: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": f"{stub_path}:/usr/bin:/bin", **env}
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args], env=clean, capture_output=True, text=True, timeout=30
    )


def shown(output: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in output.splitlines() if "=" in line]
    return {key: value for key, value in pairs if key in SHOWN}


def test_http_is_the_default_mode_and_passes_arguments(stub_path: Path) -> None:
    result = run_entrypoint(stub_path, {}, "--model", "sam2.1-hiera-large")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "ran: imgembed serve --model sam2.1-hiera-large"


def test_runpod_mode_starts_the_worker(stub_path: Path) -> None:
    result = run_entrypoint(stub_path, {"IMGEMBED_MODE": "runpod"}, "--test_input", "{}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "ran: python -m imgembed.runpod --test_input {}"


def test_unknown_mode_fails_saying_what_is_expected(stub_path: Path) -> None:
    result = run_entrypoint(stub_path, {"IMGEMBED_MODE": "grpc"})
    assert result.returncode == 64
    assert result.stdout == ""
    assert "IMGEMBED_MODE=grpc is not a mode; expected http" in result.stderr
    assert "or runpod" in result.stderr


@pytest.mark.parametrize("mode", ["http", "runpod"])
def test_baked_weights_are_served_offline_by_default(
    stub_path: Path, tmp_path: Path, mode: str
) -> None:
    baked = tmp_path / "models.toml"
    baked.write_text('[[models]]\nname = "sam2.1-hiera-tiny"\n')
    result = run_entrypoint(stub_path, {"IMGEMBED_MODE": mode, "IMGEMBED_BAKED_CONFIG": str(baked)})
    assert result.returncode == 0, result.stderr
    assert shown(result.stdout) == {
        "IMGEMBED_CONFIG": str(baked),
        "HF_HUB_OFFLINE": "1",
        "SAM2_CHECKPOINT": "<unset>",
        "SAM2_MODEL_CFG": "<unset>",
    }


def test_an_explicit_hub_setting_is_kept(stub_path: Path, tmp_path: Path) -> None:
    baked = tmp_path / "models.toml"
    baked.write_text('[[models]]\nname = "sam2.1-hiera-tiny"\n')
    env = {"IMGEMBED_BAKED_CONFIG": str(baked), "HF_HUB_OFFLINE": "0"}
    assert shown(run_entrypoint(stub_path, env).stdout)["HF_HUB_OFFLINE"] == "0"


@pytest.mark.parametrize(
    "chosen",
    [
        {"SAM2_CHECKPOINT": "/models/sam2_hiera_large.pt", "SAM2_MODEL_CFG": "sam2_hiera_l.yaml"},
        {"SAM2_MODEL_CFG": "sam2_hiera_l.yaml"},
        {"IMGEMBED_MODEL": "siglip2-large-patch16-512"},
        {"IMGEMBED_WEIGHTS": "/models/sam2"},
        {"IMGEMBED_CONFIG": "/etc/imgembed.toml"},
    ],
)
def test_seed_and_model_variables_win_over_baked_weights(
    stub_path: Path, tmp_path: Path, chosen: dict[str, str]
) -> None:
    baked = tmp_path / "models.toml"
    baked.write_text('[[models]]\nname = "sam2.1-hiera-tiny"\n')
    result = run_entrypoint(stub_path, {"IMGEMBED_BAKED_CONFIG": str(baked), **chosen})
    values = shown(result.stdout)
    assert values["IMGEMBED_CONFIG"] == chosen.get("IMGEMBED_CONFIG", "<unset>")
    assert values["HF_HUB_OFFLINE"] == "<unset>"
    for name in ("SAM2_CHECKPOINT", "SAM2_MODEL_CFG"):
        assert values[name] == chosen.get(name, "<unset>")


def test_without_baked_weights_nothing_is_set(stub_path: Path, tmp_path: Path) -> None:
    env = {"IMGEMBED_BAKED_CONFIG": str(tmp_path / "absent.toml")}
    values = shown(run_entrypoint(stub_path, env).stdout)
    assert values["IMGEMBED_CONFIG"] == values["HF_HUB_OFFLINE"] == "<unset>"


@contextmanager
def health_server(status: int) -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = status if self.path == "/health/ready" else 404
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": os.environ["PATH"], **env}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)], env=clean, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_reads_health_ready(status: int, healthy: bool) -> None:
    with health_server(status) as port:
        result = healthcheck({"IMGEMBED_PORT": str(port)})
    assert (result.returncode == 0) is healthy, result.stderr


def test_healthcheck_fails_when_nothing_listens() -> None:
    from servers import free_port

    result = healthcheck({"IMGEMBED_PORT": str(free_port())})
    assert result.returncode == 1
    assert "/health/ready" in result.stderr


def test_healthcheck_passes_in_runpod_mode() -> None:
    from servers import free_port

    result = healthcheck({"IMGEMBED_MODE": "runpod", "IMGEMBED_PORT": str(free_port())})
    assert result.returncode == 0
