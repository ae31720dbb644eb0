"""Structured logs for every toolkit process: one JSON object per line on stderr.

Fields go in ``extra={"fields": {...}}`` (ids, codes, sizes, timings; never payloads or
secrets); the formatter merges them into the line. Any other ``extra`` key is not written.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

__all__ = ["JsonLineFormatter", "configure_json_logging", "fields"]


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event and the fields passed as extra."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        return json.dumps(entry, default=str)


def configure_json_logging(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Send every logger's records to ``stream`` (stderr) as JSON lines, at ``level``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def fields(**values: Any) -> dict[str, Any]:
    """``extra=fields(port=..., code=...)``: the one shape the formatter reads."""
    return {"fields": values}
