"""Prometheus metrics on the operator's /metrics."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

from . import api

RECONCILES = Counter(
    "tfe_operator_reconciles",
    "Reconciles of EncryptedModels, by result (success, error, invalid).",
    ["result"],
)
MODELS = Gauge(
    "tfe_operator_encryptedmodels",
    "EncryptedModels by phase.",
    ["phase"],
)
TIME_TO_SERVING = Histogram(
    "tfe_operator_time_to_serving_seconds",
    "Seconds from an EncryptedModel's creation to its first phase Serving.",
    buckets=(10, 20, 30, 60, 90, 120, 180, 300, 600, 1200, 1800, 3600),
)
SHARE_JOB_DURATION = Histogram(
    "tfe_operator_share_job_duration_seconds",
    "Duration of share Jobs, by result (succeeded, failed).",
    ["result"],
    buckets=(5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600),
)


class PhaseTracker:
    """Phase of each known EncryptedModel; keeps the by-phase gauge exact."""

    def __init__(self, gauge: Gauge = MODELS) -> None:
        self._gauge = gauge
        self._phases: dict[str, str] = {}
        self._lock = threading.Lock()
        self._publish()

    def set(self, key: str, phase: str) -> None:
        with self._lock:
            self._phases[key] = phase
            self._publish()

    def forget(self, key: str) -> None:
        with self._lock:
            self._phases.pop(key, None)
            self._publish()

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(api.PHASES, 0)
        for phase in self._phases.values():
            out[phase] = out.get(phase, 0) + 1
        return out

    def _publish(self) -> None:
        for phase, n in self.counts().items():
            self._gauge.labels(phase=phase).set(n)


PHASES = PhaseTracker()
