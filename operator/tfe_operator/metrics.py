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
MODEL_PHASE = Gauge(
    "tfe_operator_encryptedmodel_phase",
    "1 for each EncryptedModel's current phase (the dashboard's phase per model).",
    ["namespace", "name", "phase"],
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

    def __init__(self, gauge: Gauge = MODELS, per_model: Gauge | None = MODEL_PHASE) -> None:
        self._gauge = gauge
        self._per_model = per_model
        self._phases: dict[str, str] = {}
        self._lock = threading.Lock()
        self._publish()

    def set(self, key: str, phase: str) -> None:
        with self._lock:
            old = self._phases.get(key)
            self._phases[key] = phase
            if old is not None and old != phase:
                self._drop(key, old)
            if self._per_model is not None:
                ns, _, name = key.partition("/")
                self._per_model.labels(namespace=ns, name=name, phase=phase).set(1)
            self._publish()

    def forget(self, key: str) -> None:
        with self._lock:
            old = self._phases.pop(key, None)
            if old is not None:
                self._drop(key, old)
            self._publish()

    def _drop(self, key: str, phase: str) -> None:
        if self._per_model is None:
            return
        ns, _, name = key.partition("/")
        try:
            self._per_model.remove(ns, name, phase)
        except KeyError:
            pass

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(api.PHASES, 0)
        for phase in self._phases.values():
            out[phase] = out.get(phase, 0) + 1
        return out

    def _publish(self) -> None:
        for phase, n in self.counts().items():
            self._gauge.labels(phase=phase).set(n)


PHASES = PhaseTracker()
