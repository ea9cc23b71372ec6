"""``tfe-operator``: run the operator (kopf) with /metrics and the liveness endpoint."""

from __future__ import annotations

import argparse
import logging
import sys

import kopf
import prometheus_client

from . import __version__
from .settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tfe-operator",
        description="EncryptedModel operator. Settings come from TFE_OPERATOR_* env vars.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = Settings.from_env()
    from . import handlers  # noqa: F401  # registers the handlers

    prometheus_client.start_http_server(settings.metrics_port, addr=settings.metrics_host)
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=f"http://{settings.liveness_host}:{settings.liveness_port}/healthz",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
