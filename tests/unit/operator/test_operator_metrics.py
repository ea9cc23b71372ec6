"""The documented Prometheus series exist and the by-phase gauge is exact."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from tfe_operator import api, metrics


def test_documented_series_are_exported() -> None:
    metrics.RECONCILES.labels(result="success").inc(0)
    metrics.SHARE_JOB_DURATION.labels(result="succeeded").observe(1.0)
    metrics.TIME_TO_SERVING.observe(30.0)
    text = generate_latest().decode()
    for series in (
        'tfe_operator_reconciles_total{result="success"}',
        'tfe_operator_encryptedmodels{phase="Serving"}',
        "tfe_operator_time_to_serving_seconds_bucket",
        'tfe_operator_share_job_duration_seconds_count{result="succeeded"}',
    ):
        assert series in text


def test_phase_tracker_counts_every_phase() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("phases", "test", ["phase"], registry=registry)
    per_model = Gauge("phase", "test", ["namespace", "name", "phase"], registry=registry)
    t = metrics.PhaseTracker(gauge, per_model)
    t.set("a/x", "Serving")
    t.set("a/y", "Serving")
    t.set("a/y", "Stopped")
    t.forget("a/x")
    t.forget("never/seen")
    assert t.counts() == {**dict.fromkeys(api.PHASES, 0), "Stopped": 1}
    assert registry.get_sample_value("phases", {"phase": "Stopped"}) == 1
    assert registry.get_sample_value("phases", {"phase": "Serving"}) == 0


def test_phase_per_model_follows_each_model() -> None:
    registry = CollectorRegistry()
    per_model = Gauge("phase", "test", ["namespace", "name", "phase"], registry=registry)
    t = metrics.PhaseTracker(Gauge("phases", "test", ["phase"], registry=registry), per_model)
    t.set("ml/digits", "Sharing")
    t.set("ml/digits", "Serving")
    t.set("ml/other", "Failed")
    assert registry.get_sample_value("phase", {"namespace": "ml", "name": "digits", "phase": "Serving"}) == 1
    assert registry.get_sample_value("phase", {"namespace": "ml", "name": "digits", "phase": "Sharing"}) is None
    t.forget("ml/other")
    assert registry.get_sample_value("phase", {"namespace": "ml", "name": "other", "phase": "Failed"}) is None
