"""Log set-up for the command-line shells: readable text, or one JSON object per line.

Library modules only call ``logging.getLogger(__name__)``; this module is called once by ``cli`` and
the RunPod entry point. With ``json``, every record becomes one line such as::

    {"time": "2026-11-23T21:30:00.123Z", "level": "INFO", "logger": "imgembed.server.middleware",
     "message": "POST /v1/sam2/segment 200 81.2ms", "request_id": "5f1c...", "method": "POST",
     "path": "/v1/sam2/segment", "status": 200, "duration_ms": 81.2, "model": "sam2.1-hiera-tiny"}

Fields a caller passes with ``extra=`` (request id, route, status, timings) are kept as JSON fields.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_STANDARD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_FIELDS and not key.startswith("_"):
                entry[key] = value if isinstance(value, int | float | str | bool) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Sends records at ``level`` and above to stderr in ``log_format``.

    Raises:
        ValueError: ``level`` is not a logging level name or ``log_format`` is unknown.
    """
    if log_format not in ("text", "json"):
        raise ValueError(f"log format must be text or json, got {log_format!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
