"""The seed's RunPod event through the runpod SDK's own local test mode (``--test_input``).

Correctness of the features is checked against Meta's model in ``test_embed_parity_e2e.py``; this
file checks the event and response formats and every refusal.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from imagefactory import encode, gradient_rgb
from PIL import Image

import imgembed.runpod as runpod_adapter
from imgembed.codecs import decode_npz

pytestmark = pytest.mark.e2e

PNG_B64 = base64.b64encode(encode(Image.fromarray(gradient_rgb()), "PNG")).decode()


def run_local_test(event: dict[str, Any], env: dict[str, str]) -> tuple[int, str]:
    """Runs ``python -m imgembed.runpod --test_input EVENT``; returns exit status and output."""
    completed = subprocess.run(
        [sys.executable, "-m", "imgembed.runpod", "--test_input", json.dumps(event)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return completed.returncode, completed.stdout + completed.stderr


def job_result(output: str) -> dict[str, Any]:
    """The job result the SDK logs in local test mode (a Python literal after 'Job result: ')."""
    line = next(line for line in output.splitlines() if "Job result: " in line)
    return ast.literal_eval(line.split("Job result: ", 1)[1])


def test_seed_event_gives_seed_response_fields() -> None:
    event = {
        "input": {
            "action": "embed_image",
            "image_b64": "data:image/png;base64," + PNG_B64,
            "dtype": "float16",
            "resize_longer_side": 1024,
            "include_high_res": False,
        }
    }
    status, output = run_local_test(event, {"IMGEMBED_WEIGHTS": "dummy"})
    assert status == 0, output
    result = job_result(output)["output"]
    for field in ("type", "encoding", "data", "shape", "dtype", "meta", "device", "model"):
        assert field in result, field
    assert result["type"] == "map"
    assert result["encoding"] == "npz_base64"
    assert result["shape"] == [256, 64, 64]
    assert result["dtype"] == "float16"
    assert result["device"] == "cpu"
    meta = result["meta"]
    assert meta["orig_size"] == [48, 64]
    assert meta["input_size"] == [1024, 1024]
    assert meta["stride"] == 16
    for field in ("resized_size", "pad", "scale", "model"):
        assert field in meta
    arrays = decode_npz(base64.b64decode(result["data"]))
    assert list(arrays) == ["embedding"]
    assert arrays["embedding"].shape == (256, 64, 64)
    assert arrays["embedding"].dtype == np.float16


def test_unknown_action_fails_the_job_with_a_clear_error() -> None:
    status, output = run_local_test(
        {"input": {"action": "paint", "image_b64": PNG_B64}}, {"IMGEMBED_WEIGHTS": "dummy"}
    )
    assert status == 1
    assert "unknown action 'paint'; expected one of embed_image" in output
    assert "Traceback" not in output


@pytest.fixture
def dummy_engine(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("IMGEMBED_WEIGHTS", "dummy")
    monkeypatch.setattr(runpod_adapter, "_engine", None)
    yield
    engine = runpod_adapter._engine
    if engine is not None:
        asyncio.run(engine.close())
    monkeypatch.setattr(runpod_adapter, "_engine", None)


@pytest.mark.parametrize(
    ("job", "field", "phrase"),
    [
        ({"id": "1"}, "input", '"input" is missing'),
        ({"id": "2", "input": "embed"}, "input", "not an object"),
        ({"id": "3", "input": {"action": "segment"}}, "input.action", "unknown action"),
        ({"id": "4", "input": {"action": "embed_image"}}, "input.image_b64", "no image given"),
        ({"id": "5", "input": {"image_b64": "@@"}}, "input.image_b64", "not valid base64"),
        ({"id": "6", "input": {"image_b64": PNG_B64, "dtype": "int8"}}, "input.dtype", "float16"),
        ({"id": "7", "input": {"image_b64": PNG_B64, "encoding": "binary"}}, "input.encoding", "only available over HTTP"),
        ({"id": "8", "input": {"image_b64": PNG_B64, "model": "nope"}}, "input.model", "not served here"),
        ({"id": "9", "input": {"image_b64": PNG_B64, "resize_longer_side": 2048}}, "input.resize_longer_side", "must be 1024"),
        ({"id": "10", "input": {"input_image_url": "http://[::1]:9/x.png"}}, "input.input_image_url", "request forgery"),
    ],
)  # fmt: skip
def test_handler_refusals_name_the_field(
    dummy_engine: None, job: dict[str, Any], field: str, phrase: str
) -> None:
    result = asyncio.run(runpod_adapter.handler(job))
    assert set(result) == {"error", "code", "field"}
    assert result["field"] == field
    assert phrase in result["error"]
