"""The operator against a real API server: CRD validation (CEL for real), owned objects,
status from observed state, shutdown/restart, deletion, operator restart idempotence, and,
with the worker image, the whole flow create → Serving → private predictions."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clusterlib import (
    KUBECONFIG,
    KUBECTL,
    WORKER_PYTHON,
    InProcessOperator,
    KubectlError,
    condition,
    em_status,
    get_json,
    kubectl,
    model_configmap,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.cluster

MISSING_IMAGE = "tfe-operator/not-built:0"  # imagePullPolicy Never -> ErrImageNeverPull, fast
OWNED = "configmaps,services,statefulsets,deployments,jobs,networkpolicies"
SERVING_TIMEOUT = 900


def em(name: str, spec: dict[str, Any]) -> str:
    return json.dumps(
        {"apiVersion": "tfe.dev/v1alpha1", "kind": "EncryptedModel", "metadata": {"name": name}, "spec": spec}
    )


def apply(ns: str, name: str, spec: dict[str, Any]) -> None:
    kubectl("apply", "-n", ns, "-f", "-", input=em(name, spec))


def patch_spec(ns: str, name: str, spec: dict[str, Any]) -> None:
    kubectl("patch", "encryptedmodel", name, "-n", ns, "--type=merge", "-p", json.dumps({"spec": spec}))


def owned(ns: str, uid: str) -> dict[str, str]:
    """kind/name -> uid of every object in ns whose controller is the EncryptedModel ``uid``."""
    doc = get_json(OWNED, "-n", ns) or {}
    out = {}
    for o in doc.get("items", []):
        refs = o["metadata"].get("ownerReferences", [])
        if any(r.get("uid") == uid and r.get("controller") for r in refs):
            out[f"{o['kind']}/{o['metadata']['name']}"] = o["metadata"]["uid"]
    return out


def uid_of(ns: str, name: str) -> str:
    return str(get_json("encryptedmodel", name, "-n", ns)["metadata"]["uid"])


BROKEN_WORKERS = {"image": MISSING_IMAGE, "storage": {"medium": "Memory"}}
DUMMY_MODEL = {"configMap": {"name": "model", "key": "model.h5"}}


def dummy_model(ns: str, tmp_path: Path) -> None:
    f = tmp_path / "model.h5"
    f.write_bytes(b"\x89HDF\r\n\x1a\nnot a real model")
    model_configmap(ns, "model", f)


# ------------------------------------------------------------------ API validation (no workers run)

INVALID = [
    ({"model": {}}, "exactly one model source"),
    (
        {"model": {**DUMMY_MODEL, "url": {"url": "https://x.example/m.h5", "sha256": "0" * 64}}},
        "exactly one model source",
    ),
    ({"model": DUMMY_MODEL, "protocol": "Pond"}, 'Unsupported value: "Pond"'),
    ({"model": DUMMY_MODEL, "serving": {"maxBatchSize": 0}}, "should be greater than or equal to 1"),
    (
        {"model": DUMMY_MODEL, "workers": {"external": [{"host": "a", "port": 1}, {"host": "b", "port": 2}]}},
        "exactly three are required",
    ),
    ({"model": {"url": {"url": "ftp://x/m.h5", "sha256": "0" * 64}}}, "url must start with http:// or https://"),
    ({"model": {"pvc": {"claimName": "c", "path": "../etc"}}}, "must not contain '..'"),
    (
        {"model": DUMMY_MODEL, "workers": {"storage": {"medium": "Memory", "storageClassName": "x"}}},
        "storageClassName applies to medium PersistentVolumeClaim only",
    ),
]


def test_invalid_specs_are_refused_with_readable_messages(namespace: str) -> None:
    for spec, message in INVALID:
        with pytest.raises(KubectlError) as e:
            apply(namespace, "bad", spec)
        assert message in e.value.err, (spec, e.value.err)
    with pytest.raises(KubectlError) as e:
        apply(namespace, "Bad.Name", {"model": DUMMY_MODEL})
    assert "DNS-1035" in e.value.err or "must consist of lower case" in e.value.err, e.value.err


def test_defaults_are_applied_by_the_api_server(namespace: str) -> None:
    apply(namespace, "defaults", {"model": DUMMY_MODEL, "shutdown": True})
    spec = get_json("encryptedmodel", "defaults", "-n", namespace)["spec"]
    assert spec["protocol"] == "ABY3"
    assert spec["serving"] == {"maxBatchSize": 32, "maxWaitMs": 5, "endpointReplicas": 1}
    assert spec["workers"] == {
        "spread": "Preferred",
        "storage": {"medium": "PersistentVolumeClaim", "size": "1Gi", "retainPolicy": "Retain"},
    }
    # printer columns
    out = kubectl("get", "em", "-n", namespace)
    assert re.split(r"\s+", out.splitlines()[0].strip()) == ["NAME", "PHASE", "PROTOCOL", "ENDPOINT", "REQUESTS", "AGE"]


# ------------------------------------------------------------------ objects, status, shutdown, delete, restart


def test_owned_objects_worker_problem_and_delete_cleans_up(namespace: str, tmp_path: Path) -> None:
    dummy_model(namespace, tmp_path)
    apply(namespace, "m", {"model": DUMMY_MODEL, "workers": BROKEN_WORKERS})
    uid = uid_of(namespace, "m")
    expected = {
        "ConfigMap/m-tfe-config",
        "ConfigMap/m-mesh",
        "Service/m-workers",
        "StatefulSet/m-worker",
        "NetworkPolicy/m-workers",
        "NetworkPolicy/m-coordinator",
        "NetworkPolicy/m-endpoint",
    }
    wait_for("owned objects", lambda: set(owned(namespace, uid)) == expected, 60)
    cfg = json.loads(get_json("configmap", "m-tfe-config", "-n", namespace)["data"]["tfe.json"])
    # every party reaches server2 at loopback; its guard carries the bytes over mTLS
    assert cfg["players"][2] == {"name": "server2", "tf": "127.0.0.1:4442", "http": "127.0.0.1:8083"}
    # The mesh identities: a CA and one Secret per long-lived identity, owned by the model.
    for name in ("ca", "server0", "server1", "server2", "coordinator", "endpoint"):
        secret = get_json("secret", f"m-mesh-{name}", "-n", namespace)
        assert secret is not None, name
        assert [r["uid"] for r in secret["metadata"]["ownerReferences"]] == [uid]
    mesh = wait_for("status.mesh", lambda: em_status(namespace, "m").get("mesh"), 60)
    assert set(mesh) == {"caNotAfter", "notAfter", "rotation", "caSHA256", "refused"}

    def image_problem() -> dict[str, Any] | None:
        c = condition(em_status(namespace, "m"), "WorkersReady")
        return c if c.get("reason") == "ErrImageNeverPull" else None

    c = wait_for("WorkersReady reason ErrImageNeverPull", image_problem, 120)
    assert c["status"] == "False"
    assert "m-worker-" in c["message"] and "0/3 workers ready" in c["message"]
    st = em_status(namespace, "m")
    assert st["phase"] == "Provisioning"
    assert st["observedGeneration"] == 1
    events = kubectl("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=m")
    assert "WorkerNotReady" in events and "Provisioning" in events

    kubectl("delete", "encryptedmodel", "m", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for("owned objects garbage-collected", lambda: not owned(namespace, uid) or None, 120)
    wait_for("mesh Secrets garbage-collected", lambda: get_json("secret", "m-mesh-ca", "-n", namespace) is None, 120)
    wait_for("worker pods gone", lambda: not (get_json("pods", "-n", namespace) or {}).get("items") or None, 120)


def test_shutdown_and_back(namespace: str, tmp_path: Path) -> None:
    dummy_model(namespace, tmp_path)
    apply(namespace, "m", {"model": DUMMY_MODEL, "workers": BROKEN_WORKERS})
    wait_phase(namespace, "m", "Provisioning", 60)
    patch_spec(namespace, "m", {"shutdown": True})
    st = wait_phase(namespace, "m", "Stopped", 120)
    assert condition(st, "Serving")["reason"] == "ShutdownRequested"
    assert get_json("statefulset", "m-worker", "-n", namespace) is None
    # Config and network policy stay; workers and coordinator are gone.
    assert get_json("configmap", "m-tfe-config", "-n", namespace) is not None
    patch_spec(namespace, "m", {"shutdown": False})
    wait_for("StatefulSet back", lambda: get_json("statefulset", "m-worker", "-n", namespace), 60)
    wait_phase(namespace, "m", "Provisioning", 60)


def test_operator_restart_duplicates_nothing(namespace: str, tmp_path: Path, operator: InProcessOperator) -> None:
    dummy_model(namespace, tmp_path)
    apply(namespace, "m", {"model": DUMMY_MODEL, "workers": BROKEN_WORKERS})
    uid = uid_of(namespace, "m")
    # ConfigMaps m-tfe-config and m-mesh, Service m-workers, StatefulSet m-worker, NetworkPolicies
    # m-workers, m-coordinator and m-endpoint (the workers never become ready: nothing is shared)
    wait_for("seven owned objects", lambda: len(owned(namespace, uid)) == 7, 60)
    ca = get_json("secret", "m-mesh-ca", "-n", namespace)["metadata"]["uid"]
    before = owned(namespace, uid)
    operator.stop()
    operator.start()
    patch_spec(namespace, "m", {"serving": {"maxWaitMs": 7}})
    wait_for("the restarted operator reconciled", lambda: em_status(namespace, "m").get("observedGeneration") == 2, 60)
    assert owned(namespace, uid) == before  # same objects, same uids
    assert get_json("secret", "m-mesh-ca", "-n", namespace)["metadata"]["uid"] == ca  # the same CA
    assert len((get_json("pods", "-n", namespace) or {})["items"]) == 3


def test_liveness_endpoint(operator: InProcessOperator) -> None:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{operator.liveness_port}/healthz", timeout=10) as r:
        assert r.status == 200


@pytest.mark.worker_image
def test_crashing_worker_shows_crashloop_in_workers_ready(namespace: str, tmp_path: Path) -> None:
    """The operator image has no tfe-guard (nor tfe-worker): the guard sidecar (or, on a base
    without iptables, mesh-init before it) exits 127 and crash-loops; the condition names it."""
    from clusterlib import VERSION

    dummy_model(namespace, tmp_path)
    workers = {"image": f"tfe-operator/operator:{VERSION}", "storage": {"medium": "Memory"}}
    apply(namespace, "m", {"model": DUMMY_MODEL, "workers": workers})

    def crashloop() -> dict[str, Any] | None:
        c = condition(em_status(namespace, "m"), "WorkersReady")
        return c if c.get("reason") == "CrashLoopBackOff" else None

    c = wait_for("WorkersReady reason CrashLoopBackOff", crashloop, 180)
    assert c["status"] == "False"
    assert "last exit 127" in c["message"], c["message"]
    assert re.search(r"init container (mesh-init|guard)", c["message"]), c["message"]
    assert "restarts:" in c["message"]
    assert em_status(namespace, "m")["phase"] == "Provisioning"


# ------------------------------------------------------------------ with the worker image


@contextlib.contextmanager
def port_forward(ns: str, target: str, port: int) -> Iterator[int]:
    """kubectl port-forward on loopback; yields the local port; stopped by PID."""
    proc = subprocess.Popen(
        [KUBECTL, "--kubeconfig", str(KUBECONFIG), "port-forward", "-n", ns, target, f":{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert m, f"port-forward said: {line!r}"
        yield int(m.group(1))
    finally:
        proc.terminate()
        proc.wait(10)


PLAINTEXT_SCRIPT = """
import sys, numpy as np, tensorflow as tf
m = tf.keras.models.load_model(sys.argv[1])
np.save(sys.argv[3], m.predict(np.load(sys.argv[2]), verbose=0))
"""


def predict(ns: str, name: str, x: Any) -> Any:
    """Through the client Service (the endpoint pods), with the workers' keys pinned from the
    EncryptedModel's status (the client refuses unpinned keys)."""
    from tfe_client.client import Client

    keys = [w["publicKey"] for w in em_status(ns, name)["workers"]]
    with port_forward(ns, f"svc/{name}", 8000) as port:
        client = Client(f"http://127.0.0.1:{port}", timeout=120, expected_keys=keys)
        try:
            return client.predict(name, x)
        finally:
            client.close()


def pod_uids(ns: str, model: str, component: str) -> set[str]:
    sel = f"tfe.dev/model={model},app.kubernetes.io/component={component}"
    return {p["metadata"]["uid"] for p in (get_json("pods", "-n", ns, "-l", sel) or {}).get("items", [])}


def serve_template(ns: str, model: str) -> dict[str, Any]:
    return dict(get_json("deployment", f"{model}-serve", "-n", ns)["spec"]["template"]["spec"])


def check_endpoint_split(ns: str, model: str) -> None:
    """Issue 9 item 4 on the cluster: clients reach a pod of its own that holds the endpoint
    identity (no TF, no mesh-init); the coordinator serves no client port, only its relay."""
    svc = get_json("service", model, "-n", ns)
    assert svc["spec"]["selector"] == {"tfe.dev/model": model, "app.kubernetes.io/component": "endpoint"}
    serve = serve_template(ns, model)
    (container,) = serve["containers"]
    assert "--relay-only" in container["command"] and "--port" not in container["command"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]  # /metrics only
    assert serve["terminationGracePeriodSeconds"] >= 135
    ep = get_json("deployment", f"{model}-endpoint", "-n", ns)
    pod = ep["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["guard"]
    assert pod["containers"][0]["command"][:2] == ["tfe-worker", "endpoint"]
    assert pod["terminationGracePeriodSeconds"] >= 135
    assert {v["name"]: v.get("secret", {}).get("secretName") for v in pod["volumes"]}["mesh-pki"] == (
        f"{model}-mesh-endpoint"
    )
    assert pod_uids(ns, model, "endpoint"), "no endpoint pod"
    cfg = json.loads(get_json("configmap", f"{model}-mesh", "-n", ns)["data"]["endpoint.json"])
    assert cfg["identity"] == "endpoint" and cfg["inbound"] == []
    assert [o["dial"] for o in cfg["outbound"]] == [f"tcp:{model}-relay.{ns}.svc:5443"]


def plaintext(model: Path, x: Any, tmp_path: Path) -> Any:
    import numpy as np

    np.save(tmp_path / "x.npy", x)
    subprocess.run(
        [str(WORKER_PYTHON), "-c", PLAINTEXT_SCRIPT, str(model), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        check=True,
        timeout=300,
    )
    return np.load(tmp_path / "y.npy")


@pytest.mark.worker_image
def test_create_to_serving_worker_restart_shutdown_restore_delete(
    namespace: str, models: Path, tmp_path: Path, operator: InProcessOperator
) -> None:
    import numpy as np

    model_configmap(namespace, "digits-model", models / "digits.h5")
    t0 = time.monotonic()
    apply(namespace, "digits", {"model": {"configMap": {"name": "digits-model", "key": "model.h5"}}})
    uid = uid_of(namespace, "digits")
    st = wait_phase(namespace, "digits", "Serving", SERVING_TIMEOUT)
    print(f"\ncreate -> Serving: {time.monotonic() - t0:.1f}s")
    assert st["endpoint"] == f"http://digits.{namespace}.svc:8000"
    assert st["shareGeneration"] == 1
    assert [w["name"] for w in st["workers"]] == ["server0", "server1", "server2"]
    assert all(w.get("publicKey") and w["ready"] for w in st["workers"])
    assert {c["type"]: c["status"] for c in st["conditions"]} == {
        "WorkersReady": "True",
        "ModelShared": "True",
        "Serving": "True",
        "Ready": "True",
    }
    check_endpoint_split(namespace, "digits")

    rng = np.random.default_rng(0)
    x = rng.random((4, 64), dtype=np.float32)
    want = plaintext(models / "digits.h5", x, tmp_path)
    got = predict(namespace, "digits", x)
    assert np.asarray(got).shape == (4, 10)
    assert (np.argmax(got, axis=1) == np.argmax(want, axis=1)).all()
    wait_for("requestsServed counted", lambda: em_status(namespace, "digits").get("requestsServed", 0) >= 1, 60)

    # A deleted worker comes back (its shares are on its volume) and serving resumes.
    kubectl("delete", "pod", "digits-worker-1", "-n", namespace, "--wait=false")
    wait_for(
        "worker-1 replaced",
        lambda: em_status(namespace, "digits").get("phase") != "Serving" or None,
        60,
        interval=0.5,
    )
    st = wait_phase(namespace, "digits", "Serving", SERVING_TIMEOUT)
    assert st["shareGeneration"] == 1  # no re-share
    assert np.asarray(predict(namespace, "digits", x)).shape == (4, 10)

    # Operator restart: nothing duplicated.
    before = owned(namespace, uid)
    endpoint_pods = pod_uids(namespace, "digits", "endpoint")
    operator.stop()
    operator.start()
    patch_spec(namespace, "digits", {"serving": {"maxWaitMs": 6}})
    wait_for("restarted operator reconciled", lambda: em_status(namespace, "digits").get("observedGeneration") == 2, 60)
    assert owned(namespace, uid) == before  # same objects, same uids
    jobs = (get_json("jobs", "-n", namespace) or {})["items"]
    assert [j["metadata"]["name"] for j in jobs] == ["digits-share-g1"]
    # The serve pod rolls (its command changed) into the other coordinator slot; the endpoint
    # pods reach whichever coordinator is ready through digits-relay and are left alone.
    wait_for(
        "the serve Deployment rolled",
        lambda: "--max-wait-ms 6" in " ".join(serve_template(namespace, "digits")["containers"][0]["command"]),
        60,
    )
    wait_for("the old serve pod gone", lambda: len(pod_uids(namespace, "digits", "serve")) == 1, 240)
    wait_phase(namespace, "digits", "Serving", SERVING_TIMEOUT)
    assert pod_uids(namespace, "digits", "endpoint") == endpoint_pods
    assert np.asarray(predict(namespace, "digits", x)).shape == (4, 10)

    # Shutdown keeps the shares (Retain); back from the stored shares without a share Job.
    patch_spec(namespace, "digits", {"shutdown": True})
    st = wait_phase(namespace, "digits", "Stopped", 180)
    assert "endpoint" not in st
    assert len((get_json("pvc", "-n", namespace) or {})["items"]) == 3
    patch_spec(namespace, "digits", {"shutdown": False})
    st = wait_phase(namespace, "digits", "Serving", SERVING_TIMEOUT)
    assert st["shareGeneration"] == 1
    assert [j["metadata"]["name"] for j in (get_json("jobs", "-n", namespace) or {})["items"]] == []
    assert np.asarray(predict(namespace, "digits", x)).shape == (4, 10)

    kubectl("delete", "encryptedmodel", "digits", "-n", namespace, "--timeout=120s")
    wait_for("owned objects gone", lambda: not owned(namespace, uid) or None, 180)


@pytest.mark.worker_image
def test_unsupported_layer_fails_with_the_layer_name(namespace: str, models: Path) -> None:
    model_configmap(namespace, "lstm-model", models / "lstm.h5")
    apply(
        namespace,
        "lstm",
        {
            "model": {"configMap": {"name": "lstm-model", "key": "model.h5"}},
            "workers": {"storage": {"medium": "Memory"}},
        },
    )
    st = wait_phase(namespace, "lstm", "Failed", SERVING_TIMEOUT)
    assert "lstm" in st["message"].lower(), st["message"]
    assert condition(st, "ModelShared")["reason"] == "InvalidModel"
    assert condition(st, "Ready")["status"] == "False"
    events = kubectl("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=lstm")
    assert "Failed" in events


@pytest.mark.worker_image
def test_max_requests_tears_down(namespace: str, models: Path) -> None:
    import numpy as np

    model_configmap(namespace, "digits-model", models / "digits.h5")
    apply(
        namespace,
        "limited",
        {
            "model": {"configMap": {"name": "digits-model", "key": "model.h5"}},
            "serving": {"maxRequests": 2},
            "workers": {"storage": {"medium": "Memory"}},
        },
    )
    wait_phase(namespace, "limited", "Serving", SERVING_TIMEOUT)
    x = np.random.default_rng(1).random((1, 64), dtype=np.float32)
    for _ in range(2):
        predict(namespace, "limited", x)
    st = wait_phase(namespace, "limited", "Stopped", 300)
    assert st["requestsServed"] == 2
    assert condition(st, "Serving")["reason"] == "MaxRequestsReached"
    assert get_json("statefulset", "limited-worker", "-n", namespace) is None
    assert get_json("deployment", "limited-serve", "-n", namespace) is None
    assert get_json("deployment", "limited-endpoint", "-n", namespace) is None


# ------------------------------------------------------------------ the chart, operator in its image


@pytest.fixture
def chart_namespace(request: pytest.FixtureRequest, cluster: str) -> Iterator[str]:
    """A namespace outside the in-process operator's tfe-e2e-* pattern, for a helm release."""
    import uuid

    from clusterlib import dump

    ns = f"tfe-chart-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    yield ns
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        dump(ns)
    kubectl("delete", "encryptedmodels", "--all", "-n", ns, "--timeout=90s", check=False)  # operator still up
    helm("uninstall", "tfe", "-n", ns, "--wait", "--timeout", "60s", check=False)
    kubectl("delete", "namespace", ns, "--wait=false", check=False)


def helm(*args: str, check: bool = True) -> str:
    from clusterlib import REPO

    proc = subprocess.run(
        [str(REPO / ".cluster" / "bin" / "helm"), "--kubeconfig", str(KUBECONFIG), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} -> {proc.returncode}: {proc.stderr}")
    return proc.stdout


@pytest.mark.worker_image
def test_chart_installs_an_operator_that_serves_a_model(chart_namespace: str, models: Path) -> None:
    """The operator in its image, as Helm installs it (namespaced RBAC, direct HTTP to the
    pods): a model reaches Serving with the workers' public keys, and /metrics has the series."""
    from clusterlib import REPO

    ns = chart_namespace
    helm(
        "install", "tfe", str(REPO / "charts" / "tfe-operator"), "-n", ns,
        "--set", "rbac.clusterWide=false",
        "--set", "image.pullPolicy=Never",
        "--set", "workerImage.pullPolicy=Never",
        "--set", "resyncSeconds=2",
        "--wait", "--timeout", "180s",
    )  # fmt: skip
    model_configmap(ns, "digits-model", models / "digits.h5")
    apply(
        ns,
        "digits",
        {
            "model": {"configMap": {"name": "digits-model", "key": "model.h5"}},
            "workers": {"storage": {"medium": "Memory"}},
        },
    )
    st = wait_phase(ns, "digits", "Serving", SERVING_TIMEOUT)
    assert all(w.get("publicKey") for w in st["workers"]), st["workers"]
    (pod,) = get_json("pods", "-n", ns, "-l", "app.kubernetes.io/name=tfe-operator")["items"]
    name = pod["metadata"]["name"]
    metrics = kubectl("get", "--raw", f"/api/v1/namespaces/{ns}/pods/{name}:8080/proxy/metrics")
    assert 'tfe_operator_encryptedmodels{phase="Serving"} 1.0' in metrics
    assert "tfe_operator_time_to_serving_seconds_count 1.0" in metrics
    assert 'tfe_operator_share_job_duration_seconds_count{result="succeeded"} 1.0' in metrics
    assert 'tfe_operator_reconciles_total{result="success"}' in metrics
    assert kubectl("get", "--raw", f"/api/v1/namespaces/{ns}/pods/{name}:8081/proxy/healthz") is not None
    kubectl("delete", "encryptedmodel", "digits", "-n", ns, "--timeout=60s")
    wait_for("owned objects gone", lambda: get_json("statefulset", "digits-worker", "-n", ns) is None, 120)
