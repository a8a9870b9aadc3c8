"""Log formats: JSON lines keep the access log's fields."""

from __future__ import annotations

import json
import logging

import pytest

from imgembed.logs import JsonFormatter, configure_logging


def test_json_lines_carry_message_level_and_extras() -> None:
    record = logging.makeLogRecord(
        {"name": "imgembed.x", "levelname": "INFO", "msg": "POST %s %d", "args": ("/v1", 200)}
    )
    record.request_id = "abc"
    record.status = 200
    record.payload = {"not": "scalar"}
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "POST /v1 200"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "imgembed.x"
    assert entry["request_id"] == "abc"
    assert entry["status"] == 200
    assert entry["payload"] == "{'not': 'scalar'}"
    assert entry["time"].endswith("+00:00")


def test_exceptions_are_one_json_field() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "failed", (), exc_info=__import__("sys").exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "RuntimeError: boom" in json.loads(line)["exception"]


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text or json"):
        configure_logging("INFO", "xml")  # type: ignore[arg-type]
