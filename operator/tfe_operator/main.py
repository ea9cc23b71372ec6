"""``tfe-operator``: run the operator (kopf) with /metrics and the liveness endpoint."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import kopf
import prometheus_client

from . import __version__
from .settings import Settings


class JSONFormatter(logging.Formatter):
    """One JSON object per line (TFE_OPERATOR_LOG_FORMAT=json, the chart's logFormat: json)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        k8s = getattr(record, "k8s_ref", None)  # kopf's per-object loggers
        if isinstance(k8s, dict):
            out["object"] = {k: k8s.get(k) for k in ("kind", "namespace", "name") if k8s.get(k)}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


class RoutineSuccessFilter(logging.Filter):
    """Drops kopf's "succeeded" line for the handlers that run all the time without news: the
    resync timer (every second while a model starts, then every tick it skips) and the event
    watcher. Their failures (warnings, errors) and every other handler's lines stay."""

    ROUTINE = frozenset({"Timer 'resync' succeeded.", "Handler 'forget_deleted' succeeded."})

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "kopf.objects" and record.levelno == logging.INFO
                    and record.getMessage() in self.ROUTINE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tfe-operator",
        description="EncryptedModel operator. Settings come from TFE_OPERATOR_* env vars.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for h in logging.getLogger().handlers:
        if settings.log_format == "json":
            h.setFormatter(JSONFormatter())
        if not args.verbose:
            h.addFilter(RoutineSuccessFilter())
    from . import handlers

    registry = handlers.build_registry(handlers.Runtime(settings=settings))
    prometheus_client.start_http_server(settings.metrics_port, addr=settings.metrics_host)
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=f"http://{settings.liveness_host}:{settings.liveness_port}/healthz",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
