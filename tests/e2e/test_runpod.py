"""The seed's RunPod event through the runpod SDK's own local test mode (``--test_input``).

Correctness of the features is checked against Meta's model in ``test_embed_parity_e2e.py``; this
file checks the event and response formats and every refusal.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from imagefactory import encode, gradient_rgb
from PIL import Image
from servers import TEST_DEVICE

import imgembed.runpod as runpod_adapter

pytestmark = pytest.mark.e2e

PNG_B64 = base64.b64encode(encode(Image.fromarray(gradient_rgb()), "PNG")).decode()


def run_local_test(event: dict[str, Any], env: dict[str, str]) -> tuple[int, str]:
    """Runs ``python -m imgembed.runpod --test_input EVENT``; returns exit status and output."""
    completed = subprocess.run(
        [sys.executable, "-m", "imgembed.runpod", "--test_input", json.dumps(event)],
        env={**os.environ, **TEST_DEVICE, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return completed.returncode, completed.stdout + completed.stderr


def job_result_text(output: str) -> str:
    """The job result the SDK logs in local test mode. Its logger keeps the first and last 2048
    characters of a long message around a TRUNCATED line, so the features' base64 is cut;
    ``test_embed_parity_e2e.py`` checks full payloads through the SDK's ``/runsync`` server."""
    return output[output.index("Job result: ") :]


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
    assert "completed successfully" in output
    line = job_result_text(output)
    for fragment in (
        "{'output': {'type': 'map'",
        "'shape': [256, 64, 64]",
        "'dtype': 'float16'",
        "'model': 'sam2.1_hiera_t.yaml'",
        "'orig_size': [48, 64]",
        "'input_size': [1024, 1024]",
        "'resized_size': [1024, 1024]",
        "'pad': [0, 0, 0, 0]",
        "'scale': {'h': 21.333333333333332, 'w': 16.0}",
        "'stride': 16",
        "'device': 'cpu'",
        "'model': 'sam2.1-hiera-tiny'",
        "'encoding': 'npz_base64'",
        "'data': 'UEsDB",  # base64 of a zip archive's signature
        "'arrays': {'embedding': [256, 64, 64]}",
    ):
        assert fragment in line, fragment


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
    for name, value in TEST_DEVICE.items():
        monkeypatch.setenv(name, value)
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
        ({"id": "3", "input": {"action": "embed_everything"}}, "input.action", "unknown action"),
        ({"id": "11", "input": {"action": "segment", "image_b64": PNG_B64}}, "input.points", "no prompt"),
        ({"id": "12", "input": {"action": "segment", "image_b64": PNG_B64, "points": [[1, 1]], "point_labels": [4]}}, "input.point_labels[0]", "must be one of"),
        ({"id": "13", "input": {"action": "segment", "image_b64": PNG_B64, "box": [50, 0, 10, 9]}}, "input.box", "x0 <= x1"),
        ({"id": "14", "input": {"action": "segment", "image_b64": PNG_B64, "points": [[900, 1]]}}, "input.points", "outside"),
        ({"id": "15", "input": {"action": "segment", "image_id": "f" * 32, "points": [[1, 1]]}}, "input.image_id", "send the image again"),
        ({"id": "16", "input": {"action": "segment_everything", "image_b64": PNG_B64, "box_nms_thresh": 5}}, "input.box_nms_thresh", "box_nms_thresh"),
        ({"id": "17", "input": {"action": "segment_everything", "image_b64": PNG_B64, "points_per_side": 0}}, "input.points_per_side", "greater than or equal to 1"),
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


def test_segment_action_through_the_sdk_test_mode() -> None:
    event = {
        "input": {
            "action": "segment",
            "image_b64": PNG_B64,
            "points": [[30, 20]],
            "multimask_output": False,
            "return_low_res_logits": False,
        }
    }
    status, output = run_local_test(event, {"IMGEMBED_WEIGHTS": "dummy", "IMGEMBED_WARMUP": "0"})
    assert status == 0, output
    assert "completed successfully" in output
    result = job_result_text(output)
    for field in ("'image_id'", "'objects'", "'segmentation'", "'counts'", "'score'"):
        assert field in result, result


def test_segment_everything_action(dummy_engine: None) -> None:
    job = {
        "id": "everything-1",
        "input": {
            "action": "segment_everything",
            "image_b64": PNG_B64,
            "points_per_side": 2,
            "pred_iou_thresh": 0,
            "stability_score_thresh": 0,
        },
    }
    result = asyncio.run(runpod_adapter.handler(job))
    assert "error" not in result, result
    assert result["count"] == len(result["masks"]) > 0
    assert result["masks"][0]["segmentation"]["size"] == [48, 64]
