"""Logging of every tfe-worker process: text (default) or one JSON object per line.

`tfe-worker --log-format json COMMAND ...` or TFE_LOG_FORMAT=json (the operator sets it in the
pods it makes when its logFormat is json). A JSON line has time, level, logger and message, plus
the fields of an access-log line (httpapp: route, status, latency, request id, rows, generation).
Nothing here adds a value to a line: what a line says is what its caller logged.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            out.update(access)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


def setup(fmt: str | None = None, level: str | None = None) -> None:
    """Configure the root logger once, for the given format (default: $TFE_LOG_FORMAT or text)."""
    fmt = (fmt or os.environ.get("TFE_LOG_FORMAT") or "text").lower()
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level or os.environ.get("TFE_LOG_LEVEL", "INFO"))
