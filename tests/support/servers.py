"""Real servers for end-to-end tests: imgembed in a subprocess, and a loopback image host.

Everything binds 127.0.0.1 and every request goes there.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

LOOPBACK = "127.0.0.1"

TEST_DEVICE = {"IMGEMBED_DEVICE": "cpu"}
"""Where every server and command the tests start runs its models unless a test says otherwise:
the CPU, in float32 (the compute dtype's ``auto`` there). The tests' tolerances are float32's,
against references computed on the CPU; on a GPU machine ``auto`` would pick CUDA in bfloat16 and
fail them. A test of the GPU passes ``IMGEMBED_DEVICE`` itself (tests/gpu does)."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def imgembed_server(
    args: list[str], env: dict[str, str] | None = None, *, log_path: Path, timeout_s: float = 120
) -> Iterator[str]:
    """Runs ``imgembed serve ARGS`` on a free loopback port until the block ends.

    The start-up warm-up pass is off unless ``env`` turns it on (``IMGEMBED_WARMUP``): most tests
    do not need it, and on 2 CPU cores it costs seconds per server. Models run on the CPU unless
    ``env`` sets ``IMGEMBED_DEVICE`` (:data:`TEST_DEVICE`).

    Yields:
        The base URL, once ``/health`` answers 200.
    """
    port = free_port()
    command = [sys.executable, "-m", "imgembed.cli", "serve", "--port", str(port), *args]
    env = {"IMGEMBED_HOST": LOOPBACK, "IMGEMBED_WARMUP": "false", **TEST_DEVICE, **(env or {})}
    with background_server(command, env, port, "/health", log_path, timeout_s) as base_url:
        yield base_url


@contextlib.contextmanager
def runpod_api_server(
    env: dict[str, str], *, log_path: Path, timeout_s: float = 120
) -> Iterator[str]:
    """Runs ``python -m imgembed.runpod --rp_serve_api``: the runpod SDK's local API server,
    whose ``POST /runsync`` mimics RunPod's endpoint. Models run on the CPU unless ``env`` sets
    ``IMGEMBED_DEVICE`` (:data:`TEST_DEVICE`).

    Yields:
        The base URL, once the SDK's server answers.
    """
    port = free_port()
    command = [
        sys.executable, "-m", "imgembed.runpod", "--rp_serve_api",
        "--rp_api_host", LOOPBACK, "--rp_api_port", str(port),
    ]  # fmt: skip
    env = {**TEST_DEVICE, **env}
    with background_server(command, env, port, "/openapi.json", log_path, timeout_s) as base_url:
        yield base_url


@contextlib.contextmanager
def background_server(
    command: list[str],
    env: dict[str, str],
    port: int,
    ready_path: str,
    log_path: Path,
    timeout_s: float,
) -> Iterator[str]:
    """Runs a server process until the block ends; yields its base URL once ``ready_path`` is 200."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
        )
        base_url = f"http://{LOOPBACK}:{port}"
        try:
            _wait_ready(process, base_url + ready_path, timeout_s, log_path)
            yield base_url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(process: subprocess.Popen, url: str, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not healthy after {timeout_s} s:\n{log.read_text()}")


class ImageHost:
    """A loopback HTTP server with routes for URL-fetch tests.

    Routes: ``/image`` (the configured bytes), ``/missing`` (404), ``/loop`` (redirects to itself),
    ``/slow`` (waits ``slow_s`` before answering), ``/huge`` (declares ``huge_bytes`` and streams
    zeros), ``/redirect-to-image`` (one redirect to ``/image``).
    """

    def __init__(self, image: bytes, *, slow_s: float = 3.0, huge_bytes: int = 64 << 20) -> None:
        self.image = image
        self.slow_s = slow_s
        self.huge_bytes = huge_bytes
        self._stop = threading.Event()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                host.route(self)

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://{LOOPBACK}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ImageHost:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def route(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path
        try:
            if path == "/image":
                self._send(request, 200, self.image, "image/png")
            elif path == "/redirect-to-image":
                self._redirect(request, "/image")
            elif path == "/loop":
                self._redirect(request, "/loop")
            elif path == "/slow":
                self._stop.wait(self.slow_s)
                self._send(request, 200, self.image, "image/png")
            elif path == "/huge":
                request.send_response(200)
                request.send_header("Content-Length", str(self.huge_bytes))
                request.end_headers()
                chunk = b"\x00" * 65536
                for _ in range(self.huge_bytes // len(chunk)):
                    if self._stop.is_set():
                        break
                    request.wfile.write(chunk)
            else:
                self._send(request, 404, b"not found", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            return

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, body: bytes, media: str) -> None:
        request.send_response(status)
        request.send_header("Content-Type", media)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    @staticmethod
    def _redirect(request: BaseHTTPRequestHandler, location: str) -> None:
        request.send_response(302)
        request.send_header("Location", location)
        request.send_header("Content-Length", "0")
        request.end_headers()


@contextlib.contextmanager
def in_process_server(app: Any) -> Iterator[str]:
    """Serves an imgembed app with uvicorn on a thread (for engines built in the test), configured
    as ``imgembed serve`` configures it (its header deadline included), until the block ends.

    Yields:
        The base URL, once the server has started.
    """
    import uvicorn

    from imgembed.server.http_server import uvicorn_config

    port = free_port()
    config = uvicorn_config(app, app.state.engine.config, host=LOOPBACK, port=port)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base_url = f"http://{LOOPBACK}:{port}"
    try:
        deadline = time.monotonic() + 120
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("in-process server did not start")
            time.sleep(0.05)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
