"""The real imgembed HTTP server in a subprocess on loopback, and requests against it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from imgembed.codecs import BINARY_HEADER_LENGTH

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def serve_command(model: str, weights: Path, port: int, device: str = "cpu") -> list[str]:
    """The command line that starts the server on ``device`` (``cpu`` or ``cuda``)."""
    return [
        sys.executable,
        "-m",
        "imgembed.cli",
        "serve",
        "--model",
        model,
        "--weights",
        str(weights),
        "--device",
        device,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
    ]


@dataclass(frozen=True)
class Server:
    """A running server: where it listens, and its process id (to account its CPU time)."""

    url: str
    pid: int


@contextlib.contextmanager
def running_server(
    model: str,
    weights: Path,
    *,
    threads: int,
    log_path: Path,
    timeout_s: float = 180,
    env: dict[str, str] | None = None,
    device: str = "cpu",
) -> Iterator[Server]:
    """Runs ``imgembed serve`` until the block ends.

    Args:
        model: Model name.
        weights: Weights file.
        threads: ``OMP_NUM_THREADS`` for the server, so it uses the threads the reference uses.
        log_path: Where the server's output goes.
        timeout_s: How long to wait for ``/health``.
        env: Variables added to this process's own for the server.
        device: The server's ``--device``.

    Yields:
        The server, once ``/health`` answers 200.
    """
    port = free_port()
    env = {**os.environ, **(env or {}), "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    base_url = f"http://{LOOPBACK}:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            serve_command(model, weights, port, device),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_healthy(process, base_url, timeout_s, log_path)
            yield Server(url=base_url, pid=process.pid)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_healthy(process: subprocess.Popen, base_url: str, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(trust_env=False, timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"{base_url}/health").status_code == 200:
                    return
            time.sleep(0.2)
    raise RuntimeError(f"server not healthy after {timeout_s} s:\n{log.read_text()}")


def embed_request(
    client: httpx.Client, base_url: str, image_b64: str, *, encoding: str, dtype: str
) -> dict[str, Any]:
    """One ``POST /v1/sam2/embed`` with a JSON ``image_b64`` body, read to the last byte.

    Returns:
        The server's ``timings_ms`` stages, ``wall`` (milliseconds from sending the request to
        holding the whole response body, before parsing it) and ``response_bytes``.
    """
    body = json.dumps({"image_b64": image_b64, "dtype": dtype, "encoding": encoding}).encode()
    started = time.perf_counter()
    response = client.post(
        f"{base_url}/v1/sam2/embed", content=body, headers={"content-type": "application/json"}
    )
    wall_ms = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    if encoding == "binary":
        header = json.loads(response.content[: int(response.headers[BINARY_HEADER_LENGTH])])
    else:
        header = response.json()
    return {**header["timings_ms"], "wall": wall_ms, "response_bytes": len(response.content)}
