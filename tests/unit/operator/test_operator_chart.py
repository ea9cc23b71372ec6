"""charts/tfe-operator: lint, rendering, RBAC that covers what the operator does, CRD in crds/.

Needs a helm binary (TFE_HELM, .cluster/bin/helm from make cluster-up, or helm on PATH)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_testlib import CRD_PATH, REPO, make_ctx

from tfe_operator import api, builders
from tfe_operator.kube import RESOURCES
from tfe_operator.settings import Settings

CHART = REPO / "charts" / "tfe-operator"


def _helm() -> str | None:
    for candidate in (os.environ.get("TFE_HELM"), str(REPO / ".cluster" / "bin" / "helm"), shutil.which("helm")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


HELM = _helm()
pytestmark = pytest.mark.skipif(HELM is None, reason="no helm binary (make cluster-up provides .cluster/bin/helm)")


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=60, check=False)


def render(*sets: str, include_crds: bool = False) -> list[dict[str, Any]]:
    args = ["template", "rel", str(CHART), "--namespace", "ops"]
    if include_crds:
        args.append("--include-crds")
    for s in sets:
        args += ["--set", s]
    proc = helm(*args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_lint_strict() -> None:
    proc = helm("lint", "--strict", str(CHART))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_chart_version_follows_repo() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == (REPO / "VERSION").read_text().strip()


def test_default_render() -> None:
    docs = render()
    assert sorted(d["kind"] for d in docs) == [
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ServiceAccount",
    ]
    (dep,) = by_kind(docs, "Deployment")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    assert c["image"] == "tfe-operator/operator:0.1.0"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert c["resources"]["requests"]
    env = {e["name"]: e["value"] for e in c["env"]}
    settings = Settings.from_env(env)  # every variable parses
    assert settings.namespaces == ()
    assert settings.worker_image == "tfe-operator/worker:0.1.0"
    # The worker NetworkPolicy admits the operator's pods by these labels.
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert settings.operator_pod_labels and all(labels.get(k) == v for k, v in settings.operator_pod_labels.items())
    assert settings.health_source_cidrs == ()  # by default the policies admit no address
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": settings.metrics_port, "healthz": settings.liveness_port}
    (svc,) = by_kind(docs, "Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


def test_health_source_cidrs_reach_the_operator() -> None:
    docs = render("healthSourceCIDRs={172.18.0.2/32,172.18.0.3/32}")
    (dep,) = by_kind(docs, "Deployment")
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert Settings.from_env(env).health_source_cidrs == ("172.18.0.2/32", "172.18.0.3/32")


def test_health_source_cidrs_schema_refuses_an_address() -> None:
    proc = helm("template", "rel", str(CHART), "--set", "healthSourceCIDRs={172.18.0.2}")
    assert proc.returncode != 0 and "healthSourceCIDRs" in proc.stderr


def _rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def required_rules() -> set[tuple[str, str, str]]:
    """What the operator does, derived from its builders and reads."""
    ctx = make_ctx()
    need: set[tuple[str, str, str]] = set()
    written = [*builders.base_objects(ctx), *builders.serving_objects(ctx, 1), builders.share_job(ctx, 1)]
    for m in written:
        group = m["apiVersion"].rpartition("/")[0]
        plural = RESOURCES[(m["apiVersion"], m["kind"])][1]
        need |= {(group, plural, v) for v in ("get", "list", "watch", "create", "patch", "delete")}
    need |= {(api.GROUP, api.PLURAL, v) for v in ("get", "list", "watch", "patch")}
    need |= {(api.GROUP, f"{api.PLURAL}/status", "patch")}
    need |= {("", "pods", "list"), ("", "pods/proxy", "get"), ("", "secrets", "get")}
    # the mesh PKI: applied (create/patch), deleted with share Jobs; read by name only
    need |= {("", "secrets", v) for v in ("get", "create", "patch", "delete")}
    need |= {("", "persistentvolumeclaims", v) for v in ("get", "list", "delete")}
    need |= {("", "events", "create")}
    return need


def test_cluster_wide_rbac_covers_the_operator() -> None:
    docs = render()
    roles = {r["metadata"]["name"]: r for r in by_kind(docs, "ClusterRole")}
    missing = required_rules() - _rules(roles["rel-tfe-operator"])
    assert not missing
    assert ("", "namespaces", "list") in _rules(roles["rel-tfe-operator-discovery"])
    # Least privilege: no wildcards, no secrets listing.
    granted = _rules(roles["rel-tfe-operator"])
    assert not any("*" in t for r in granted for t in r)
    assert ("", "secrets", "list") not in granted
    assert ("", "secrets", "watch") not in granted


def test_namespaced_rbac() -> None:
    docs = render("rbac.clusterWide=false", "watchNamespaces={ml,team-b}")
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "team-b"]
    assert all(not (required_rules() - _rules(r)) for r in roles)
    assert [r["metadata"]["name"] for r in by_kind(docs, "ClusterRole")] == ["rel-tfe-operator-discovery"]
    (dep,) = by_kind(docs, "Deployment")
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TFE_OPERATOR_NAMESPACES"] == "ml,team-b"
    default_ns = render("rbac.clusterWide=false")
    assert [r["metadata"]["namespace"] for r in by_kind(default_ns, "Role")] == ["ops"]


def test_crd_is_the_single_source() -> None:
    docs = render(include_crds=True)
    (crd,) = by_kind(docs, "CustomResourceDefinition")
    assert crd == yaml.safe_load(CRD_PATH.read_text())
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == [CRD_PATH.name]


@pytest.mark.parametrize(
    "bad",
    ["httpMode=carrier", "resyncSeconds=0", "image.pullPolicy=Sometimes", "metrics.port=0", "unknownKey=1"],
)
def test_values_schema_refuses(bad: str) -> None:
    proc = helm("template", "rel", str(CHART), "--set", bad)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr or "schema" in proc.stderr


def test_service_monitor_optional() -> None:
    assert not by_kind(render(), "ServiceMonitor")
    (sm,) = by_kind(render("metrics.serviceMonitor.enabled=true"), "ServiceMonitor")
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "interval": "30s"}]


def test_pod_monitor_optional_scrapes_the_models_metrics_port() -> None:
    assert not by_kind(render(), "PodMonitor")
    (pm,) = by_kind(render("metrics.podMonitor.enabled=true", "metrics.podMonitor.labels.release=prom"), "PodMonitor")
    assert pm["metadata"]["labels"]["release"] == "prom"
    spec = pm["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    assert spec["selector"]["matchLabels"] == {"app.kubernetes.io/name": "encryptedmodel",
                                              "app.kubernetes.io/managed-by": "tfe-operator"}
    assert spec["selector"]["matchExpressions"] == [
        {"key": "app.kubernetes.io/component", "operator": "In", "values": ["worker", "serve", "endpoint"]}]
    (ep,) = spec["podMetricsEndpoints"]
    assert (ep["port"], ep["path"], ep["interval"]) == ("metrics", "/metrics", "30s")
    assert {r["targetLabel"] for r in ep["relabelings"]} == {"model", "component", "namespace", "pod"}
    # the pods it selects: labels and the port name of what the operator builds
    ctx = make_ctx()
    for pod in (builders.worker_statefulset(ctx), builders.serve_deployment(ctx, 1), builders.endpoint_deployment(ctx)):
        tmpl = pod["spec"]["template"]
        assert spec["selector"]["matchLabels"].items() <= tmpl["metadata"]["labels"].items()
        assert tmpl["metadata"]["labels"]["app.kubernetes.io/component"] in ("worker", "serve", "endpoint")
        ports = {p["name"]: p["containerPort"] for c in tmpl["spec"]["containers"] for p in c.get("ports", [])}
        assert ports["metrics"] == api.PORT_METRICS
    namespaced = by_kind(render("metrics.podMonitor.enabled=true", "rbac.clusterWide=false",
                                "watchNamespaces={a,b}"), "PodMonitor")
    assert namespaced[0]["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}


def _defined_metric_names() -> set[str]:
    """Every Prometheus series the code defines (Counter/Gauge/Histogram first argument)."""
    import re

    names: set[str] = set()
    sources = [*(REPO / "worker-image" / "tfe_worker").glob("*.py"), *(REPO / "operator" / "tfe_operator").glob("*.py")]
    for src in sources:
        names |= set(re.findall(r'(?:Counter|Gauge|Histogram)\(\s*"(tfe_[a-z0-9_]+)"', src.read_text()))
    return names


def test_dashboard_ships_in_the_chart_and_uses_metrics_that_exist() -> None:
    import json
    import re

    assert not [d for d in by_kind(render(), "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    (cm,) = by_kind(render("metrics.dashboard.enabled=true"), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["tfe-operator.json"])
    assert dash == json.loads((CHART / "dashboards" / "tfe-operator.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"\b(tfe_[a-z0-9_]+)", e)}
    defined = _defined_metric_names()
    counters = {f"{n}_total" for n in defined}
    assert used and not (used - defined - counters), f"dashboard uses undefined series: {used - defined - counters}"
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for what in ("p50", "stage", "queue depth", "batch", "reconnects", "phase per model"):
        assert what in titles, what
    assert {"tfe_serve_stage_seconds", "tfe_serve_queue_depth", "tfe_serve_batch_rows", "tfe_serve_reconnects_total",
            "tfe_operator_encryptedmodel_phase", "tfe_serve_request_seconds"} <= used


def test_log_format_value() -> None:
    (dep,) = by_kind(render("logFormat=json"), "Deployment")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TFE_OPERATOR_LOG_FORMAT"] == "json"
    assert Settings.from_env({"TFE_OPERATOR_LOG_FORMAT": "json"}).log_format == "json"
    proc = helm("template", "rel", str(CHART), "--set", "logFormat=xml")
    assert proc.returncode != 0
