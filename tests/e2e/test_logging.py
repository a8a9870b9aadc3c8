"""Structured request logs: one JSON line per request, with the id the client got back."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from servers import imgembed_server

pytestmark = pytest.mark.e2e


def test_json_access_log_line_per_request(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with imgembed_server(
        ["--weights", "dummy"], {"IMGEMBED_LOG_FORMAT": "json"}, log_path=log
    ) as base_url:
        response = httpx.post(f"{base_url}/v1/sam2/embed", json={}, timeout=30)
        request_id = response.headers["x-request-id"]
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [entry for entry in entries if entry.get("request_id") == request_id]
    assert len(access) == 1, entries[-5:]
    assert access[0]["status"] == 400
    assert access[0]["method"] == "POST"
    assert access[0]["route"] == "/v1/sam2/embed"
    assert access[0]["duration_ms"] > 0
    assert any("UNTRAINED" in entry["message"] for entry in entries)
