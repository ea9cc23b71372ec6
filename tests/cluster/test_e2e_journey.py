"""The user journey of issue 5, end to end, the way a user does it: ``helm install`` the
operator from a registry (issue 10: the local OCI registry of ``make cluster-up``, filled by
``make images push``; pull policy Always and an imagePullSecret, so containerd really pulls both
images from it; namespaced RBAC) → ``kubectl apply`` the examples → Serving → the
Python client through the Service's ClusterIP agrees with plaintext Keras → a worker pod
deleted comes back → the operator pod deleted duplicates nothing → /metrics of operator,
endpoint and coordinator → an invalid EncryptedModel is refused → ``helm upgrade`` → ``maxRequests`` reached:
Stopped, workers gone → ``kubectl delete em``: every owned object gone → ``helm uninstall``.

kubectl and helm are the cluster's binaries (.cluster/bin) run as subprocesses. One test, in
order: each step depends on the one before. Every wait reads the API and has a timeout.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clusterlib import (
    KIND,
    KUBECONFIG,
    KUBECTL,
    REGISTRY,
    REPO,
    VERSION,
    WORKER_PYTHON,
    apiserver_cidrs,
    condition,
    create_pull_secret,
    delete_pods,
    dump,
    em_status,
    get_json,
    kubectl,
    registry_digest,
    wait_for,
    wait_phase,
)

pytestmark = [pytest.mark.cluster, pytest.mark.worker_image]

HELM = str(REPO / ".cluster" / "bin" / "helm")
CHART = str(REPO / "charts" / "tfe-operator")
RELEASE = "tfe"
OPERATOR_SELECTOR = f"app.kubernetes.io/name=tfe-operator,app.kubernetes.io/instance={RELEASE}"
MODEL = "digits"
MODEL_SELECTOR = f"tfe.dev/model={MODEL}"
# Every kind the operator makes (all owned by the EncryptedModel).
KINDS = "configmaps,services,statefulsets,deployments,jobs,networkpolicies"
SERVING_TIMEOUT = 900
# The registry the chart pulls from (make e2e: the local one that make cluster-up runs). None
# (TFE_REGISTRY empty, make kind-e2e): the images were loaded into the nodes, pull policy Never.
OPERATOR_REPO = f"{REGISTRY}/tfe-operator/operator" if REGISTRY else "tfe-operator/operator"
WORKER_REPO = f"{REGISTRY}/tfe-operator/worker" if REGISTRY else "tfe-operator/worker"

# The held-out digits of examples/client.py (the split make demo trained without), the
# example model's plaintext Keras outputs on them, with TF 2.9.1 from the worker venv.
PLAINTEXT_SCRIPT = """
import sys
import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
model, out = sys.argv[1], sys.argv[2]
digits = load_digits()
_, x, _, y = train_test_split((digits.data / 16.0).astype(np.float32), digits.target, test_size=0.25, random_state=0)
x, y = x[:100], y[:100]
np.save(out + "/x.npy", x)
np.save(out + "/y.npy", y)
np.save(out + "/plain.npy", tf.keras.models.load_model(model).predict(x, verbose=0))
"""


# ------------------------------------------------------------------ helm, kubectl as a user runs them


def run(argv: list[str], timeout: float, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG)}
    return subprocess.run(argv, input=input, capture_output=True, text=True, env=env, timeout=timeout, check=False)


def helm(*args: str, timeout: float = 300) -> str:
    p = run([HELM, *args], timeout)
    assert p.returncode == 0, f"helm {' '.join(args)} -> {p.returncode}: {p.stderr}"
    return p.stdout


def http_get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        assert r.status == 200, (url, r.status)
        return str(r.read().decode())


def metrics(url: str) -> dict[str, float]:
    """Prometheus text → {'name{labels}': value} (comments dropped)."""
    out = {}
    for line in http_get(url).splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def pulled_from_registry(ns: str, pod: dict[str, Any], repo: str, digest: str) -> None:
    """Every container of the pod runs repo@digest, and the kubelet pulled it (no cache hit)."""
    statuses = [*pod["status"].get("initContainerStatuses", []), *pod["status"].get("containerStatuses", [])]
    assert statuses, pod["status"]
    for c in statuses:
        assert c["imageID"] == f"{repo}@{digest}", (c["name"], c["imageID"])
    name = pod["metadata"]["name"]
    events = (get_json("events", "-n", ns, "--field-selector", f"involvedObject.name={name}") or {}).get("items", [])
    pulled = [e["message"] for e in events if e.get("reason") == "Pulled"]
    assert any(m.startswith("Successfully pulled image") and repo in m for m in pulled), pulled


def pull_refused_without_secret(ns: str, image: str) -> str:
    """A pod of the same image without the imagePullSecret: the registry refuses the pull."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "no-pull-secret", "namespace": ns},
        "spec": {"containers": [{"name": "c", "image": image, "imagePullPolicy": "Always", "command": ["true"]}],
                 "restartPolicy": "Never"},
    }  # fmt: skip
    kubectl("apply", "-f", "-", input=json.dumps(pod))

    def refused() -> str | None:
        p = get_json("pod", "no-pull-secret", "-n", ns) or {}
        for c in p.get("status", {}).get("containerStatuses", []):
            w = c.get("state", {}).get("waiting", {})
            if w.get("reason") in ("ErrImagePull", "ImagePullBackOff") and w.get("message"):
                return str(w["message"])
        return None

    try:
        return wait_for("the pull without a secret refused", refused, 120)
    finally:
        kubectl("delete", "pod", "no-pull-secret", "-n", ns, "--wait=false", check=False)


def cluster_ip(ns: str, service: str) -> str:
    ip = str(get_json("service", service, "-n", ns)["spec"]["clusterIP"])
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", ip), ip
    return ip


def pods(ns: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (get_json("pods", "-n", ns, "-l", selector) or {}).get("items", [])
    return items


def pod_ready(p: dict[str, Any]) -> bool:
    if p["metadata"].get("deletionTimestamp"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in p.get("status", {}).get("conditions", [])
    )


def operator_pod(ns: str, not_uid: str | None = None) -> dict[str, Any] | None:
    """The one ready operator pod (other than ``not_uid``), once no other one is left."""
    ps = pods(ns, OPERATOR_SELECTOR)
    if len(ps) == 1 and pod_ready(ps[0]) and ps[0]["metadata"]["uid"] != not_uid:
        return ps[0]
    return None


def objects(ns: str) -> dict[str, str]:
    """kind/name -> uid of every object of the operator's kinds in the namespace."""
    doc = get_json(KINDS, "-n", ns) or {}
    return {f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["uid"] for o in doc.get("items", [])}


def owned(ns: str, uid: str) -> dict[str, str]:
    """kind/name -> uid of the objects whose controller is the EncryptedModel ``uid``."""
    doc = get_json(KINDS, "-n", ns) or {}
    out = {}
    for o in doc.get("items", []):
        if any(r.get("uid") == uid and r.get("controller") for r in o["metadata"].get("ownerReferences", [])):
            out[f"{o['kind']}/{o['metadata']['name']}"] = o["metadata"]["uid"]
    return out


def model_pods(ns: str) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods(ns, MODEL_SELECTOR)}


def operator_reconciles(ns: str) -> float:
    ip = cluster_ip(ns, f"{RELEASE}-tfe-operator-metrics")
    return metrics(f"http://{ip}:8080/metrics").get('tfe_operator_reconciles_total{result="success"}', 0.0)


def wait_operator_reconciled(ns: str, not_uid: str | None, timeout: float = 180) -> dict[str, Any]:
    """A (new) operator pod is ready and has reconciled the model a few times since it started."""
    pod = wait_for("a ready operator pod", lambda: operator_pod(ns, not_uid), timeout)

    def reconciled() -> bool:
        try:
            return operator_reconciles(ns) >= 3
        except OSError:  # the metrics Service may not route to the new pod yet
            return False

    wait_for("the operator pod reconciled (tfe_operator_reconciles_total)", reconciled, timeout)
    return pod


# ------------------------------------------------------------------ the namespace of the journey


@pytest.fixture
def journey_ns(request: pytest.FixtureRequest, cluster: str) -> Iterator[str]:
    """A fresh namespace, outside the in-process operator's ``tfe-e2e-*``; the release lives here."""
    ns = f"tfe-journey-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    yield ns
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        dump(ns)
        print(run([HELM, "status", RELEASE, "-n", ns], 60).stdout)
    # The operator removes its finalizer: delete the models while it runs, then the release.
    kubectl("delete", "encryptedmodels", "--all", "-n", ns, "--timeout=120s", check=False)
    run([HELM, "uninstall", RELEASE, "-n", ns, "--wait", "--timeout", "120s"], 180)
    for em in (get_json("encryptedmodels", "-n", ns) or {}).get("items", []):
        kubectl("patch", "em", em["metadata"]["name"], "-n", ns, "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}', check=False)  # fmt: skip
    kubectl("delete", "namespace", ns, "--wait=false", check=False)


# ------------------------------------------------------------------ the journey


def test_user_journey(
    journey_ns: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], record_property: Any
) -> None:
    import numpy as np

    from tfe_client import Client, RemoteError

    def say(msg: str) -> None:
        """Measurements go to the terminal even when the test passes."""
        with capsys.disabled():
            print(f"\n    [journey] {msg}", end="", flush=True)

    ns = journey_ns
    t_module = time.monotonic()

    # 1. helm install from the registry: the operator in its image, namespaced RBAC, watching
    # this namespace. Pull policy Always: the kubelet asks the registry for every container.
    pull: list[str] = ["--set", "image.pullPolicy=Never", "--set", "workerImage.pullPolicy=Never"]
    if REGISTRY:
        operator_digest = registry_digest(OPERATOR_REPO, VERSION)
        worker_digest = registry_digest(WORKER_REPO, VERSION)
        create_pull_secret(ns, "regcred")  # the registry's real credentials: a pull needs them
        pull = [
            "--set", "image.pullPolicy=Always", "--set", "image.pullSecrets[0].name=regcred",
            "--set", "workerImage.pullPolicy=Always", "--set", "workerImage.pullSecrets[0].name=regcred",
        ]  # fmt: skip
    helm(
        "install", RELEASE, CHART, "-n", ns,
        "--set", f"image.repository={OPERATOR_REPO}",
        "--set", f"image.tag={VERSION}",
        "--set", f"workerImage.repository={WORKER_REPO}",
        *pull,
        "--set", "rbac.clusterWide=false",
        "--set", f"watchNamespaces={{{ns}}}",
        # kind enforces NetworkPolicy: step 7 reads the serve pod's health port (5444) through
        # the API server's pod proxy, which connects from the control-plane node
        *(["--set", f"healthSourceCIDRs={{{','.join(apiserver_cidrs())}}}"] if KIND else []),
        "--wait", "--timeout", "180s",
    )  # fmt: skip
    dep = get_json("deployment", f"{RELEASE}-tfe-operator", "-n", ns)
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{OPERATOR_REPO}:{VERSION}"
    assert dep["spec"]["template"]["spec"].get("imagePullSecrets") == ([{"name": "regcred"}] if REGISTRY else None)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TFE_OPERATOR_NAMESPACES"] == ns
    assert get_json("role", f"{RELEASE}-tfe-operator", "-n", ns) is not None, "namespaced RBAC: a Role"
    assert get_json("clusterrole", f"{RELEASE}-tfe-operator") is None, "namespaced RBAC: no ClusterRole for models"
    op = wait_for("the operator pod ready", lambda: operator_pod(ns), 120)
    if REGISTRY:
        pulled_from_registry(ns, op, OPERATOR_REPO, operator_digest)
        refusal = pull_refused_without_secret(ns, f"{OPERATOR_REPO}:{VERSION}")
        assert "401" in refusal or "unauthorized" in refusal.lower(), refusal

    # 2. kubectl apply the examples (on kind, with 3 worker nodes: workers.spread Required).
    example = (REPO / "examples" / "digits-encryptedmodel.yaml").read_text()
    if KIND:
        assert "    spread: Preferred\n" in example
        example = example.replace("    spread: Preferred\n", "    spread: Required\n")
    t0 = time.monotonic()
    p = run(
        [KUBECTL, "apply", "-n", ns, "-f", str(REPO / "examples" / "digits-model.yaml"), "-f", "-"],
        120,
        input=example,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "configmap/digits-model created" in p.stdout, p.stdout
    assert "encryptedmodel.tfe.dev/digits created" in p.stdout, p.stdout
    em_uid = str(get_json("encryptedmodel", MODEL, "-n", ns)["metadata"]["uid"])

    # 3. Serving.
    st = wait_phase(ns, MODEL, "Serving", SERVING_TIMEOUT)
    to_serving = time.monotonic() - t0
    say(f"kubectl apply -> phase Serving: {to_serving:.1f}s")
    record_property("time_to_serving_s", round(to_serving, 1))
    assert st["endpoint"] == f"http://{MODEL}.{ns}.svc:8000"
    assert st["shareGeneration"] == 1
    assert {c["type"]: c["status"] for c in st["conditions"]} == {
        "WorkersReady": "True",
        "ModelShared": "True",
        "Serving": "True",
        "Ready": "True",
    }
    keys = [w["publicKey"] for w in st["workers"]]
    assert len(keys) == 3 and all(keys), st["workers"]
    if KIND:  # spread Required: the three parties on three nodes
        nodes = {p["spec"]["nodeName"] for p in pods(ns, f"{MODEL_SELECTOR},app.kubernetes.io/component=worker")}
        assert len(nodes) == 3, nodes
    if REGISTRY:  # every pod of the model pulled the worker image from the registry with the secret
        for pod in pods(ns, MODEL_SELECTOR):
            assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}], pod["metadata"]["name"]
            if pod["status"].get("phase") == "Running":
                pulled_from_registry(ns, pod, WORKER_REPO, worker_digest)
        say(f"pods pulled from {REGISTRY}: operator {operator_digest[:19]}, worker {worker_digest[:19]}")
    row = kubectl("get", "em", MODEL, "-n", ns).splitlines()[1].split()
    assert row[:3] == [MODEL, "Serving", "ABY3"], row

    # 4. The client through the Service's ClusterIP: 100 held-out digits vs plaintext Keras.
    cm = get_json("configmap", "digits-model", "-n", ns)
    model_file = tmp_path / "model.h5"
    model_file.write_bytes(base64.b64decode(cm["binaryData"]["model.h5"]))
    subprocess.run(
        [str(WORKER_PYTHON), "-c", PLAINTEXT_SCRIPT, str(model_file), str(tmp_path)],
        check=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    x, y, plain = (np.load(tmp_path / f"{n}.npy") for n in ("x", "y", "plain"))
    assert x.shape == (100, 64) and plain.shape == (100, 10)
    endpoint = f"http://{cluster_ip(ns, MODEL)}:8000"

    def private(keys: list[str]) -> Any:
        client = Client(endpoint, timeout=120, expected_keys=keys)
        try:
            return np.concatenate([client.predict_proba(MODEL, x[i : i + 10]) for i in range(0, 100, 10)])
        finally:
            client.close()

    def check_agreement(probs: Any, when: str) -> None:
        agree = float(np.mean(probs.argmax(1) == plain.argmax(1)))
        acc = float(np.mean(probs.argmax(1) == y))
        dev = float(np.abs(probs - plain).max())
        say(f"{when}: agreement with plaintext {agree:.2%}, private accuracy {acc:.2f}, max |Δp| {dev:.4f}")
        assert probs.shape == (100, 10)
        assert agree >= 0.99, f"{when}: private and plaintext predictions agree on only {agree:.2%}"
        assert acc >= 0.9, f"{when}: private accuracy {acc:.2f}"

    t = time.monotonic()
    check_agreement(private(keys), "first 100 private predictions")
    say(f"100 private predictions (10 requests of 10): {time.monotonic() - t:.2f}s")

    # The operator's /metrics (through its metrics Service) after the first Serving.
    op_metrics_url = f"http://{cluster_ip(ns, f'{RELEASE}-tfe-operator-metrics')}:8080/metrics"
    m = metrics(op_metrics_url)
    assert m.get('tfe_operator_encryptedmodels{phase="Serving"}') == 1.0, m
    assert m.get("tfe_operator_time_to_serving_seconds_count") == 1.0, m
    assert m.get('tfe_operator_share_job_duration_seconds_count{result="succeeded"}') == 1.0, m
    assert m.get('tfe_operator_reconciles_total{result="success"}', 0) > 0, m
    say(f"operator's time_to_serving_seconds: {m['tfe_operator_time_to_serving_seconds_sum']:.1f}s")

    # 5. Delete one worker pod: it comes back (same key, its shares on its volume), serving resumes.
    old = get_json("pod", f"{MODEL}-worker-1", "-n", ns)["metadata"]["uid"]
    delete_pods(ns, f"{MODEL}-worker-1")

    def worker_back() -> bool:
        p = get_json("pod", f"{MODEL}-worker-1", "-n", ns)
        return bool(p and p["metadata"]["uid"] != old and pod_ready(p))

    t = time.monotonic()
    wait_for("worker-1 recreated and ready", worker_back, 300)

    def serving_all_ready() -> dict[str, Any] | None:
        s = em_status(ns, MODEL)
        ok = s.get("phase") == "Serving" and all(w.get("ready") for w in s.get("workers", []))
        return s if ok else None

    st = wait_for("phase Serving with 3/3 workers ready", serving_all_ready, SERVING_TIMEOUT)
    assert st["shareGeneration"] == 1, "a worker restart must not re-share the model"
    assert [w["publicKey"] for w in st["workers"]] == keys, "the worker's key is kept on its volume"
    errors: list[str] = []

    def predicts_again() -> list[Any] | None:
        try:
            return [private(keys)]  # a list: wait_for tests truthiness, an array has none
        except (RemoteError, OSError) as e:  # e.g. 503 while the coordinator reconnects
            errors.append(repr(e))
            return None

    (probs,) = wait_for("predictions succeed again", predicts_again, 300, interval=3)
    check_agreement(probs, "after worker restart")
    say(f"worker-1 deleted -> predictions again: {time.monotonic() - t:.1f}s (failed attempts: {errors})")

    # 6. Delete the operator pod: a new one, and nothing duplicated or replaced.
    before, before_pods = objects(ns), model_pods(ns)
    assert set(owned(ns, em_uid)) == {
        "ConfigMap/digits-tfe-config",
        "ConfigMap/digits-mesh",
        "Service/digits-workers",
        "StatefulSet/digits-worker",
        "Job/digits-share-g1",
        "Deployment/digits-serve",
        "Deployment/digits-endpoint",
        "Service/digits",
        "Service/digits-relay",
        "NetworkPolicy/digits-workers",
        "NetworkPolicy/digits-coordinator",
        "NetworkPolicy/digits-endpoint",
    }, owned(ns, em_uid)
    delete_pods(ns, op["metadata"]["name"])
    op = wait_operator_reconciled(ns, not_uid=op["metadata"]["uid"])
    assert objects(ns) == before, "the restarted operator duplicated or replaced objects"
    assert model_pods(ns) == before_pods, "the restarted operator replaced pods"
    assert em_status(ns, MODEL)["phase"] == "Serving"

    # 7. /metrics: the new operator pod, the endpoint (through the Service: its own series) and
    # the coordinator (no client port: through its guard's plain health port, via the API
    # server) have the documented series.
    m = metrics(op_metrics_url)
    assert m.get('tfe_operator_encryptedmodels{phase="Serving"}') == 1.0, m
    assert m.get('tfe_operator_encryptedmodels{phase="Failed"}') == 0.0, m
    assert m.get('tfe_operator_reconciles_total{result="success"}', 0) >= 3, m
    text = http_get(op_metrics_url)
    for name in ("tfe_operator_time_to_serving_seconds", "tfe_operator_share_job_duration_seconds"):
        assert f"# TYPE {name} histogram" in text, name
    # the endpoint's /metrics is on its metrics port (9090), not on the client port
    with pytest.raises(urllib.error.HTTPError) as not_here:
        http_get(f"{endpoint}/metrics")
    assert not_here.value.code == 404
    ep_pod = next(p for p in pods(ns, f"{MODEL_SELECTOR},app.kubernetes.io/component=endpoint") if pod_ready(p))
    m = metrics(f"http://{ep_pod['status']['podIP']}:9090/metrics")
    assert m.get('tfe_serve_requests_total{result="ok"}', 0) >= 20, m
    assert m.get("tfe_serve_request_seconds_count", 0) >= 20, m
    assert "tfe_serve_inflight" in m, m
    assert "tfe_serve_requests_served" not in m, "the endpoint runs no coordinator"
    (serve_pod,) = [p for p in pods(ns, f"{MODEL_SELECTOR},app.kubernetes.io/component=serve") if pod_ready(p)]
    raw = kubectl("get", "--raw", f"/api/v1/namespaces/{ns}/pods/{serve_pod['metadata']['name']}:5444/proxy/metrics")
    m = {
        k: float(v)
        for line in raw.splitlines()
        if line and not line.startswith("#")
        for k, _, v in [line.rpartition(" ")]
    }
    assert m.get('tfe_serve_requests_total{result="ok"}', 0) >= 20, m  # counted at its relay too
    assert m.get("tfe_serve_requests_served", 0) >= 20, m
    assert m.get('tfe_serve_stage_seconds_count{stage="graph"}', 0) >= 1, m
    assert m.get('tfe_serve_stage_seconds_count{stage="ingress"}', 0) >= 1, m
    assert m.get('tfe_serve_stage_seconds_count{stage="egress"}', 0) >= 1, m
    assert m.get("tfe_serve_request_seconds_count", 0) >= 20, m
    assert m.get("tfe_serve_batch_rows_count", 0) >= 1, m
    assert m.get("tfe_serve_ready") == 1.0, m
    assert m.get("tfe_serve_share_generation") == 1.0, m
    assert "tfe_serve_reconnects_total" in m and "tfe_serve_queue_depth" in m, m

    # 8. An invalid EncryptedModel is refused by kubectl apply, with a readable message.
    bad: list[tuple[dict[str, Any], str]] = [
        (
            {"model": {"configMap": {"name": "digits-model", "key": "model.h5"},
                       "url": {"url": "https://example.com/m.h5", "sha256": "0" * 64}}},
            "exactly one model source",
        ),
        ({"model": {"configMap": {"name": "digits-model", "key": "model.h5"}}, "protocol": "Foo"},
         'Unsupported value: "Foo"'),
    ]  # fmt: skip
    for spec, message in bad:
        doc = {"apiVersion": "tfe.dev/v1alpha1", "kind": "EncryptedModel", "metadata": {"name": "bad"}, "spec": spec}
        p = run([KUBECTL, "apply", "-n", ns, "-f", "-"], 60, input=json.dumps(doc))
        say(f"kubectl apply (invalid) -> {p.returncode}: {p.stderr.strip()}")
        assert p.returncode != 0, p.stdout
        assert message in p.stderr, p.stderr
        assert 'The EncryptedModel "bad" is invalid' in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
    assert get_json("encryptedmodel", "bad", "-n", ns) is None

    # 9. helm upgrade (a changed value): a new operator pod, the model keeps Serving.
    helm(
        "upgrade", RELEASE, CHART, "-n", ns, "--reuse-values",
        "--set", "resources.requests.memory=160Mi",
        "--wait", "--timeout", "180s",
    )  # fmt: skip
    history = json.loads(helm("history", RELEASE, "-n", ns, "-o", "json"))
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "deployed")], history
    op = wait_operator_reconciled(ns, not_uid=op["metadata"]["uid"])
    assert op["spec"]["containers"][0]["resources"]["requests"]["memory"] == "160Mi"
    assert op["spec"]["containers"][0]["image"] == f"{OPERATOR_REPO}:{VERSION}"
    assert em_status(ns, MODEL)["phase"] == "Serving"
    assert model_pods(ns) == before_pods, "helm upgrade replaced the model's pods"
    check_agreement(private(keys), "after helm upgrade")

    # 10. maxRequests: the limit reached tears the workers down (phase Stopped).
    served = wait_for(
        "status.requestsServed caught up with the endpoint",
        lambda: (
            (n := em_status(ns, MODEL).get("requestsServed", 0))
            == json.loads(http_get(f"{endpoint}/v1/status"))["requestsServed"]
            and n
        ),
        60,
    )
    limit = int(served) + 3
    patch = json.dumps({"spec": {"serving": {"maxRequests": limit}}})
    kubectl("patch", "em", MODEL, "-n", ns, "--type=merge", "-p", patch)

    # The operator rolls the serve Deployment (the limit is in its command); wait until only the
    # new serve pod is behind the Service.
    def rolled() -> dict[str, Any] | None:
        d = get_json("deployment", f"{MODEL}-serve", "-n", ns)
        if d is None:
            return None
        command = " ".join(d["spec"]["template"]["spec"]["containers"][0]["command"])
        s = d.get("status", {})
        if (
            f"--max-requests {limit} " not in command
            or s.get("observedGeneration") != d["metadata"]["generation"]
            or s.get("updatedReplicas") != 1
        ):
            return None
        serve = pods(ns, f"{MODEL_SELECTOR},app.kubernetes.io/component=serve")
        if len(serve) != 1 or not pod_ready(serve[0]):
            return None
        try:
            status: dict[str, Any] = json.loads(http_get(f"{endpoint}/v1/status"))
        except OSError:  # the Service's endpoints are moving to the new pod
            return None
        return status if status.get("maxRequests") == limit and status.get("ready") else None

    status = wait_for("the serve pod with maxRequests", rolled, 300)
    # Enough predictions for the endpoint to reach its limit: 3 if it kept counting, more if
    # the new serve pod restarted its count.
    remaining = limit - int(status["requestsServed"])
    say(f"requestsServed {served}, maxRequests {limit}; the new serve pod has served {status['requestsServed']}: "
          f"sending {remaining} prediction(s)")  # fmt: skip
    client = Client(endpoint, timeout=120, expected_keys=keys)
    for i in range(remaining):
        assert client.predict(MODEL, x[i : i + 1]).shape == (1, 10)
    with pytest.raises(RemoteError) as refused:
        client.predict(MODEL, x[:1])
    client.close()
    assert refused.value.status == 503 and refused.value.code == "limit_reached", refused.value
    st = wait_phase(ns, MODEL, "Stopped", 300)
    assert condition(st, "Serving")["reason"] == "MaxRequestsReached"
    assert st["requestsServed"] == limit
    wait_for("worker and serve pods gone", lambda: not [
        p for p in pods(ns, MODEL_SELECTOR) if p["metadata"]["labels"].get("app.kubernetes.io/component") != "share"
    ], 180)  # fmt: skip
    assert get_json("statefulset", f"{MODEL}-worker", "-n", ns) is None
    assert get_json("deployment", f"{MODEL}-serve", "-n", ns) is None
    assert get_json("deployment", f"{MODEL}-endpoint", "-n", ns) is None

    # 11. kubectl delete em: every owned object gone.
    p = run([KUBECTL, "delete", "em", MODEL, "-n", ns, "--timeout=120s"], 180)
    assert p.returncode == 0, p.stderr
    wait_for("owned objects gone", lambda: not owned(ns, em_uid), 180)
    wait_for("the model's pods gone", lambda: not pods(ns, MODEL_SELECTOR), 180)
    assert get_json("encryptedmodel", MODEL, "-n", ns) is None
    left = sorted(k for k in objects(ns) if k not in before or MODEL in k.split("/")[1])
    assert left == ["ConfigMap/digits-model"], left  # the user's own model ConfigMap stays
    pvcs = [p["metadata"]["name"] for p in (get_json("pvc", "-n", ns) or {}).get("items", [])]
    say(f"PVCs kept after delete (retainPolicy Retain, not owned): {pvcs}")

    # 12. helm uninstall.
    helm("uninstall", RELEASE, "-n", ns, "--wait", "--timeout", "120s")
    assert json.loads(helm("list", "-n", ns, "-o", "json")) == []
    wait_for("the operator pod gone", lambda: not pods(ns, OPERATOR_SELECTOR), 120)
    sel = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=tfe-operator"
    left_ns = get_json("deployments,services,serviceaccounts,roles,rolebindings", "-n", ns, "-l", sel)
    assert left_ns is not None and left_ns["items"] == [], left_ns
    assert get_json("clusterrole", f"{RELEASE}-tfe-operator-discovery") is None
    assert get_json("crd", "encryptedmodels.tfe.dev") is not None, "helm keeps the CRD"
    say(f"journey: {time.monotonic() - t_module:.0f}s")
