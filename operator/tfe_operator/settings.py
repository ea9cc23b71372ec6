"""Typed operator settings, read once from the environment (TFE_OPERATOR_*)."""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from . import __version__

HttpMode = Literal["auto", "direct", "proxy"]


def _parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"bad label selector term {part!r} (want key=value)")
        labels[key.strip()] = value.strip()
    return labels


def _parse_list(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _parse_cidrs(text: str) -> tuple[str, ...]:
    cidrs = _parse_list(text)
    for c in cidrs:
        what = f"TFE_OPERATOR_HEALTH_SOURCE_CIDRS: {c!r} is not a CIDR"
        if "/" not in c:
            raise ValueError(f"{what} (want e.g. 172.18.0.2/32)")
        try:
            ipaddress.ip_network(c, strict=False)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
    return cidrs


def _log_format(v: str) -> str:
    if v not in ("text", "json"):
        raise ValueError(f"TFE_OPERATOR_LOG_FORMAT={v!r}: want text or json")
    return v


@dataclass(frozen=True)
class Settings:
    """Everything the operator can be told. Defaults suit an in-cluster install."""

    # Namespaces to watch; empty = cluster-wide.
    namespaces: tuple[str, ...] = ()
    # Default image for workers, the share Job and the serve pod.
    worker_image: str = f"tfe-operator/worker:{__version__}"
    image_pull_policy: str = "IfNotPresent"
    # imagePullSecrets (Secret names) of every pod the operator makes, unless the model has its own.
    image_pull_secrets: tuple[str, ...] = ()
    # How often each EncryptedModel's observed state is read (seconds).
    resync_seconds: float = 5.0
    # How often while a model is on its way (not Serving, Stopped or Failed): each step of a
    # start (workers ready -> share Job -> serve ready) waits at most this long to be noticed.
    busy_resync_seconds: float = 1.0
    # Share Job: retries for transient errors and a deadline.
    share_backoff_limit: int = 3
    share_deadline_seconds: int = 3600
    # How the operator reaches worker/serve HTTP ports: direct (cluster DNS), proxy (through
    # the API server: for an operator running outside the cluster), auto (proxy when not
    # in a pod).
    http_mode: HttpMode = "auto"
    http_timeout_seconds: float = 3.0
    # Labels of the operator's own pods: the worker NetworkPolicy admits them to port 8081
    # (public keys). Empty = the operator needs no pod-network access (proxy mode).
    operator_pod_labels: Mapping[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/name": "tfe-operator"}
    )
    # CIDRs (NetworkPolicy ipBlock) admitted to the guard's plain health port (5444) of workers,
    # share Job and serve pod, next to the operator's pods: where an operator running outside the
    # cluster connects from in proxy mode, i.e. the API server's node addresses (its pod proxy
    # dials from there). Empty = only the operator's pods (an in-cluster install needs nothing).
    health_source_cidrs: tuple[str, ...] = ()
    # kopf watch timeouts (seconds): without them a watch can go silent forever.
    watch_server_timeout: int = 60
    watch_client_timeout: int = 90
    watch_connect_timeout: int = 10
    # Listen addresses: Prometheus /metrics and kopf's liveness /healthz.
    # Log lines of the operator and of the worker, serve and endpoint pods: text or json.
    log_format: str = "text"
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 8080
    liveness_host: str = "0.0.0.0"
    liveness_port: int = 8081

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        d = cls()

        def get(name: str) -> str | None:
            return e.get(f"TFE_OPERATOR_{name}")

        def num(name: str, default: float) -> float:
            v = get(name)
            return default if v is None or v == "" else float(v)

        def seconds(name: str, default: float) -> float:
            v = num(name, default)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"TFE_OPERATOR_{name}={v!r}: want a number of seconds > 0")
            return v

        def integer(name: str, default: int) -> int:
            v = get(name)
            return default if v is None or v == "" else int(v)

        mode = get("HTTP_MODE") or d.http_mode
        if mode not in ("auto", "direct", "proxy"):
            raise ValueError(f"TFE_OPERATOR_HTTP_MODE={mode!r}: want auto, direct or proxy")
        labels_env = get("POD_LABELS")
        return cls(
            namespaces=_parse_list(get("NAMESPACES") or ""),
            worker_image=get("WORKER_IMAGE") or d.worker_image,
            image_pull_policy=get("IMAGE_PULL_POLICY") or d.image_pull_policy,
            image_pull_secrets=_parse_list(get("IMAGE_PULL_SECRETS") or ""),
            resync_seconds=seconds("RESYNC_SECONDS", d.resync_seconds),
            busy_resync_seconds=seconds("BUSY_RESYNC_SECONDS", d.busy_resync_seconds),
            share_backoff_limit=integer("SHARE_BACKOFF_LIMIT", d.share_backoff_limit),
            share_deadline_seconds=integer("SHARE_DEADLINE_SECONDS", d.share_deadline_seconds),
            http_mode=mode,  # type: ignore[arg-type]  # checked above
            http_timeout_seconds=num("HTTP_TIMEOUT_SECONDS", d.http_timeout_seconds),
            operator_pod_labels=(
                dict(d.operator_pod_labels) if labels_env is None else _parse_labels(labels_env)
            ),
            health_source_cidrs=_parse_cidrs(get("HEALTH_SOURCE_CIDRS") or ""),
            watch_server_timeout=integer("WATCH_SERVER_TIMEOUT", d.watch_server_timeout),
            watch_client_timeout=integer("WATCH_CLIENT_TIMEOUT", d.watch_client_timeout),
            watch_connect_timeout=integer("WATCH_CONNECT_TIMEOUT", d.watch_connect_timeout),
            log_format=_log_format(get("LOG_FORMAT") or d.log_format),
            metrics_host=get("METRICS_HOST") or d.metrics_host,
            metrics_port=integer("METRICS_PORT", d.metrics_port),
            liveness_host=get("LIVENESS_HOST") or d.liveness_host,
            liveness_port=integer("LIVENESS_PORT", d.liveness_port),
        )
