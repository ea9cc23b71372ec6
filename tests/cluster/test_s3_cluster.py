"""model.s3 on the cluster (issue 10 item 4): an S3-compatible server (gofakes3, built from its
Go module, pulled from the local registry of ``make cluster-up``: ``make images push
REGISTRY=127.0.0.1:5000`` puts it there; on kind, TFE_REGISTRY empty, ``make kind-load`` loads
it into the nodes) runs as a pod; the model is uploaded through a
port-forward; the share Job downloads it with credentials from a Secret.

wrong sha256 → Failed, the message naming both digests; the right one → Serving, and private
predictions agree with plaintext Keras.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from clusterlib import (
    REGISTRY,
    REPO,
    condition,
    create_pull_secret,
    em_status,
    get_json,
    kubectl,
    registry_digest,
    wait_phase,
)
from test_operator_cluster import apply, plaintext, port_forward, predict

pytestmark = [pytest.mark.cluster, pytest.mark.worker_image]

_VERSIONS = (REPO / "hack" / "cluster" / "versions.sh").read_text()
GOFAKES3_VERSION = _VERSIONS.split("GOFAKES3_VERSION=${GOFAKES3_VERSION:-", 1)[1].split("}", 1)[0]
S3_IMAGE = f"{REGISTRY + '/' if REGISTRY else ''}tfe-operator/gofakes3:{GOFAKES3_VERSION}"
BUCKET = "models"
SERVING_TIMEOUT = 900


def s3_server_manifests(ns: str) -> str:
    labels = {"app": "s3"}
    pod_spec: dict[str, object] = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "gofakes3",
                "image": S3_IMAGE,
                "imagePullPolicy": "IfNotPresent" if REGISTRY else "Never",  # kind: make kind-load
                "args": ["-backend", "memory", "-host", ":9000", "-initialbucket", BUCKET],
                "ports": [{"name": "s3", "containerPort": 9000}],
                "readinessProbe": {"tcpSocket": {"port": 9000}, "periodSeconds": 1},
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
            }
        ],
    }
    if REGISTRY:
        pod_spec["imagePullSecrets"] = [{"name": "regcred"}]
    docs = [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "s3", "namespace": ns, "labels": labels},
         "spec": pod_spec},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s3", "namespace": ns},
         "spec": {"selector": labels, "ports": [{"name": "s3", "port": 9000, "targetPort": 9000}]}},
    ]  # fmt: skip
    return "\n---\n".join(json.dumps(d) for d in docs)


@pytest.fixture
def s3_store(namespace: str) -> Iterator[int]:
    """The S3 server pod; yields a loopback port forwarded to its Service."""
    if REGISTRY:
        repo, _, tag = S3_IMAGE.rpartition(":")
        registry_digest(repo, tag)  # pushed by make images push REGISTRY=127.0.0.1:5000
        create_pull_secret(namespace, "regcred")
    elif not any(
        name in (S3_IMAGE, f"docker.io/{S3_IMAGE}")
        for node in get_json("nodes")["items"]
        for image in node["status"].get("images", [])
        for name in image.get("names", [])
    ):
        pytest.skip(f"TFE_REGISTRY is empty and {S3_IMAGE} is on no node (make images, then make kind-load)")
    kubectl("apply", "-f", "-", input=s3_server_manifests(namespace))
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "pod/s3", "--timeout=180s", timeout=200)
    with port_forward(namespace, "svc/s3", 9000) as port:
        yield port


def test_s3_model_wrong_digest_fails_then_serving(namespace: str, s3_store: int, models: Path, tmp_path: Path) -> None:
    import numpy as np

    data = (models / "digits.h5").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    put = urllib.request.Request(f"http://127.0.0.1:{s3_store}/{BUCKET}/team/digits.h5", data=data, method="PUT")
    with urllib.request.urlopen(put, timeout=60) as r:
        assert r.status == 200
    kubectl("create", "secret", "generic", "s3-creds", "-n", namespace, "--from-literal=AWS_ACCESS_KEY_ID=tfe-e2e",
            "--from-literal=AWS_SECRET_ACCESS_KEY=tfe-e2e-secret")  # fmt: skip
    source = {
        "bucket": BUCKET,
        "key": "team/digits.h5",
        "endpoint": f"http://s3.{namespace}.svc:9000",
        "credentialsSecretRef": {"name": "s3-creds"},
    }

    # 1. a wrong digest: Failed, the message names both digests; the weights are never shared
    wrong = "0" * 64
    apply(namespace, "s3wrong", {"model": {"s3": {**source, "sha256": wrong}},
                                 "workers": {"storage": {"medium": "Memory"}}})  # fmt: skip
    st = wait_phase(namespace, "s3wrong", "Failed", SERVING_TIMEOUT)
    assert digest in st["message"] and wrong in st["message"], st["message"]
    assert condition(st, "ModelShared")["reason"] == "InvalidModel", st["conditions"]
    kubectl("delete", "encryptedmodel", "s3wrong", "-n", namespace, "--timeout=120s")

    # 2. the right digest: Serving, and the private predictions agree with plaintext Keras
    apply(namespace, "s3digits", {"model": {"s3": {**source, "sha256": digest}},
                                  "workers": {"storage": {"medium": "Memory"}}})  # fmt: skip
    st = wait_phase(namespace, "s3digits", "Serving", SERVING_TIMEOUT)
    assert st["shareGeneration"] == 1
    job = get_json("job", "s3digits-share-g1", "-n", namespace)
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}}} in env  # fmt: skip
    x = np.random.default_rng(0).random((8, 64), dtype=np.float32)
    private = np.asarray(predict(namespace, "s3digits", x))
    plain = plaintext(models / "digits.h5", x, tmp_path)
    assert private.shape == plain.shape == (8, 10)
    assert (private.argmax(1) == plain.argmax(1)).all(), (private.argmax(1), plain.argmax(1))
    # the share job logged neither the credentials nor the signature
    logs = kubectl("logs", "-n", namespace, "job/s3digits-share-g1", "-c", "share", check=False)
    assert "tfe-e2e-secret" not in logs and "Signature=" not in logs
    assert em_status(namespace, "s3digits")["phase"] == "Serving"


def test_configmap_model_past_the_apply_annotation_limit(namespace: str, tmp_path: Path) -> None:
    """What the README says about models over ~190 KB in a ConfigMap: a client-side ``kubectl
    apply`` fails on the last-applied annotation; server-side apply and ``kubectl create`` work."""
    from clusterlib import KubectlError

    model = tmp_path / "model.h5"
    model.write_bytes(os.urandom(600_000))
    manifest = kubectl("create", "configmap", "big", "-n", namespace, f"--from-file=model.h5={model}",
                       "--dry-run=client", "-o", "yaml")  # fmt: skip
    with pytest.raises(KubectlError) as e:
        kubectl("apply", "-f", "-", input=manifest)
    assert "Too long" in e.value.err and "262144" in e.value.err, e.value.err
    kubectl("apply", "--server-side", "-f", "-", input=manifest)
    kubectl("create", "configmap", "big2", "-n", namespace, f"--from-file=model.h5={model}")
    for name in ("big", "big2"):
        cm = get_json("configmap", name, "-n", namespace)
        assert len(cm["binaryData"]["model.h5"]) >= 800_000, name  # base64 of 600 kB
        assert "kubectl.kubernetes.io/last-applied-configuration" not in cm["metadata"].get("annotations", {})
