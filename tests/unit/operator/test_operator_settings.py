"""Typed settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from tfe_operator import __version__
from tfe_operator.settings import Settings

REPO = Path(__file__).resolve().parents[3]


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert s.worker_image == f"tfe-operator/worker:{__version__}"
    assert s.namespaces == ()
    assert s.operator_pod_labels == {"app.kubernetes.io/name": "tfe-operator"}
    assert s.health_source_cidrs == ()  # the production policies admit only the operator's pods
    assert s.watch_server_timeout > 0 and s.watch_client_timeout > s.watch_server_timeout


def test_version_matches_repo() -> None:
    assert __version__ == (REPO / "VERSION").read_text().strip()


def test_from_env() -> None:
    s = Settings.from_env(
        {
            "TFE_OPERATOR_NAMESPACES": "a, b,",
            "TFE_OPERATOR_WORKER_IMAGE": "w:2",
            "TFE_OPERATOR_RESYNC_SECONDS": "1.5",
            "TFE_OPERATOR_BUSY_RESYNC_SECONDS": "0.5",
            "TFE_OPERATOR_HTTP_MODE": "proxy",
            "TFE_OPERATOR_POD_LABELS": "app=op, tier=ctl",
            "TFE_OPERATOR_METRICS_PORT": "9100",
            "TFE_OPERATOR_WATCH_SERVER_TIMEOUT": "30",
            "TFE_OPERATOR_HEALTH_SOURCE_CIDRS": "172.18.0.2/32, fd00::/64,",
        }
    )
    assert s.namespaces == ("a", "b")
    assert s.worker_image == "w:2"
    assert s.resync_seconds == 1.5 and s.busy_resync_seconds == 0.5
    assert s.http_mode == "proxy"
    assert s.operator_pod_labels == {"app": "op", "tier": "ctl"}
    assert s.metrics_port == 9100
    assert s.watch_server_timeout == 30
    assert s.health_source_cidrs == ("172.18.0.2/32", "fd00::/64")


def test_empty_pod_labels_mean_none() -> None:
    assert Settings.from_env({"TFE_OPERATOR_POD_LABELS": ""}).operator_pod_labels == {}


@pytest.mark.parametrize(
    "env",
    [
        {"TFE_OPERATOR_HTTP_MODE": "carrier-pigeon"},
        {"TFE_OPERATOR_POD_LABELS": "novalue"},
        {"TFE_OPERATOR_HEALTH_SOURCE_CIDRS": "172.18.0.2"},  # an address is not a CIDR
        {"TFE_OPERATOR_HEALTH_SOURCE_CIDRS": "172.18.0.0/33"},
        {"TFE_OPERATOR_HEALTH_SOURCE_CIDRS": "apiserver/32"},
        {"TFE_OPERATOR_BUSY_RESYNC_SECONDS": "0"},  # a timer that never sleeps
        {"TFE_OPERATOR_RESYNC_SECONDS": "-1"},
        {"TFE_OPERATOR_BUSY_RESYNC_SECONDS": "nan"},
    ],
)
def test_bad_values_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Settings.from_env(env)
