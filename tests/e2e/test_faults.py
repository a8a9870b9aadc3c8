"""Faults: a client that leaves mid-request, a model that raises, SIGTERM with work in flight.

Each ends with the server still answering (or, for SIGTERM, exiting cleanly after finishing).
Bounded and loopback only.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from imagefactory import encode, gradient_rgb
from PIL import Image
from prometheus import metric
from servers import LOOPBACK, TEST_DEVICE, free_port, imgembed_server, in_process_server

from imgembed.engine import Engine
from imgembed.models.sam2_loading import LoadedSam2, load_sam2
from imgembed.server.app import create_app
from imgembed.settings import BatchingSettings, ModelSpec, ServerConfig

pytestmark = pytest.mark.e2e

MODEL = "sam2.1-hiera-tiny"
PNG_B64 = base64.b64encode(encode(Image.fromarray(gradient_rgb()), "PNG")).decode()
WHITE_B64 = base64.b64encode(encode(Image.new("RGB", (40, 30), "white"), "PNG")).decode()
OTHER_B64 = base64.b64encode(encode(Image.fromarray(gradient_rgb()[::-1].copy()), "PNG")).decode()
"""A second image: the same one would wait on the first request's encoder pass, not queue."""


def post(base_url: str, body: dict[str, Any], timeout: float = 300) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/sam2/embed", json=body, timeout=timeout)


def test_work_of_a_client_that_disconnects_is_dropped(tmp_path: Path) -> None:
    env = {"IMGEMBED_MAX_BATCH_SIZE": "1"}
    with imgembed_server(["--weights", "dummy"], env, log_path=tmp_path / "s.log") as server:
        busy = threading.Thread(target=post, args=(server, {"image_b64": PNG_B64}))
        busy.start()
        time.sleep(0.3)
        with pytest.raises(httpx.ReadTimeout):
            post(server, {"image_b64": OTHER_B64}, timeout=0.5)
        busy.join(timeout=300)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = httpx.get(f"{server}/metrics", timeout=10).text
            if metric(text, "imgembed_requests_total", status="499"):
                break
            time.sleep(0.2)
        assert metric(text, "imgembed_requests_total", status="499") == 1
        assert metric(text, "imgembed_dropped_total", model=MODEL) == 1
        assert metric(text, "imgembed_batch_size_count", model=MODEL) == 1
        assert post(server, {"image_b64": PNG_B64}).status_code == 200


def test_v2_work_of_a_client_that_disconnects_is_dropped(tmp_path: Path) -> None:
    env = {"IMGEMBED_MAX_BATCH_SIZE": "1"}

    def infer(image_b64: str, timeout: float) -> httpx.Response:
        body = {
            "inputs": [
                {"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": [image_b64]}
            ]
        }
        return httpx.post(f"{server}/v2/models/sam2_encoder/infer", json=body, timeout=timeout)

    with imgembed_server(["--weights", "dummy"], env, log_path=tmp_path / "s.log") as server:
        busy = threading.Thread(target=post, args=(server, {"image_b64": PNG_B64}))
        busy.start()
        time.sleep(0.3)
        with pytest.raises(httpx.ReadTimeout):
            infer(OTHER_B64, timeout=0.5)
        busy.join(timeout=300)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = httpx.get(f"{server}/metrics", timeout=10).text
            if metric(text, "imgembed_requests_total", status="499"):
                break
            time.sleep(0.2)
        assert metric(text, "imgembed_requests_total", status="499") == 1
        assert metric(text, "imgembed_dropped_total", model=MODEL) == 1
        assert metric(text, "imgembed_batch_size_count", model=MODEL) == 1


class RaisesOnWhiteImages(torch.nn.Module):
    """Wraps a SAM 2 vision encoder and raises for bright inputs, like a bug in a model would."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.inner = backbone

    def forward(self, pixel_values: torch.Tensor, **kwargs: Any) -> Any:
        if bool((pixel_values.mean(dim=(1, 2, 3)) > 1.5).any()):
            raise RuntimeError("simulated model failure on a white image")
        return self.inner(pixel_values, **kwargs)


def faulty_loader(spec: ModelSpec, device: torch.device) -> LoadedSam2:
    loaded = load_sam2(spec.name, spec.weights, spec.meta_config, device=device)
    vision = loaded.model.vision_encoder
    vision.backbone = RaisesOnWhiteImages(vision.backbone)
    return dataclasses.replace(loaded)


def test_a_model_that_raises_fails_only_its_own_request() -> None:
    spec = ModelSpec(
        MODEL, weights="dummy", device="cpu", warmup=False, batching=BatchingSettings(4, 300, 16)
    )
    config = ServerConfig(models=(spec,))
    app = create_app(config, engine=Engine(config, loaders={"sam2": faulty_loader}))
    with in_process_server(app) as server:
        results: dict[str, httpx.Response] = {}
        bodies = {"white": {"image_b64": WHITE_B64}, "normal": {"image_b64": PNG_B64}}
        threads = [
            threading.Thread(
                target=lambda key=key: results.update({key: post(server, bodies[key])})
            )
            for key in bodies
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert results["normal"].status_code == 200
        failed = results["white"]
        assert failed.status_code == 500
        error = failed.json()["error"]
        assert error["code"] == "internal_error"
        assert error["request_id"] in error["message"]
        assert "simulated" not in failed.text
        assert "Traceback" not in failed.text
        assert post(server, {"image_b64": PNG_B64}).status_code == 200


def test_sigterm_finishes_work_in_flight_then_exits(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "imgembed.cli", "serve", "--weights", "dummy"]
    command += ["--host", LOOPBACK, "--port", str(port)]
    log = (tmp_path / "s.log").open("wb")
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **TEST_DEVICE, "IMGEMBED_WARMUP": "false"},
    )
    server = f"http://{LOOPBACK}:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{server}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, (tmp_path / "s.log").read_text()
                time.sleep(0.2)
        outcome: dict[str, httpx.Response] = {}
        in_flight = threading.Thread(
            target=lambda: outcome.update(answer=post(server, {"image_b64": PNG_B64}))
        )
        in_flight.start()
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server}/health", timeout=2)
        in_flight.join(timeout=300)
        assert outcome["answer"].status_code == 200
        # uvicorn re-raises the signal once its graceful shutdown is done.
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        log.flush()
        text = (tmp_path / "s.log").read_text()
        assert "Waiting for application shutdown" in text
        assert "Application shutdown complete" in text
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
