"""State that survives pods (issue 8 item 6), on the cluster with the worker image:

- maxRequests is counted across serve-pod replacements: the count lives on the workers' disks,
  so a serve pod deleted mid-way is replaced by one that serves only what is left of the limit;
- a re-created EncryptedModel whose retained volumes hold older generations shares above them,
  serves its new generation (right predictions), and the workers' pruning keeps it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from clusterlib import (
    WORKER_PYTHON,
    condition,
    em_status,
    get_json,
    kubectl,
    model_configmap,
    wait_for,
    wait_phase,
)
from test_operator_cluster import SERVING_TIMEOUT, apply, patch_spec, plaintext, pod_uids, predict, uid_of

pytestmark = [pytest.mark.cluster, pytest.mark.worker_image]

ROLL_SCRIPT = """
import sys, numpy as np, tensorflow as tf
m = tf.keras.models.load_model(sys.argv[1])
k = int(sys.argv[3])
last = m.layers[-1]
w, b = last.get_weights()
last.set_weights([np.roll(w, k, axis=1), np.roll(b, k)])  # class c of the original is class c+k here
m.save(sys.argv[2])
"""


def rolled(models: Path, k: int, tmp_path: Path) -> Path:
    """The digits MLP with its output classes rotated by k: each variant predicts differently."""
    out = tmp_path / f"digits-roll{k}.h5"
    subprocess.run([str(WORKER_PYTHON), "-c", ROLL_SCRIPT, str(models / "digits.h5"), str(out), str(k)],
                   check=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return out


def serve_pod(ns: str, model: str) -> str | None:
    sel = f"tfe.dev/model={model},app.kubernetes.io/component=serve"
    items = (get_json("pods", "-n", ns, "-l", sel) or {}).get("items", [])
    ready = [p for p in items if p["metadata"].get("deletionTimestamp") is None
             and any(c.get("ready") for c in p.get("status", {}).get("containerStatuses", []))]
    return str(ready[0]["metadata"]["name"]) if len(ready) == 1 else None


def test_max_requests_count_survives_serve_pod_replacement(namespace: str, models: Path) -> None:
    import numpy as np

    model_configmap(namespace, "digits-model", models / "digits.h5")
    apply(namespace, "capped", {
        "model": {"configMap": {"name": "digits-model", "key": "model.h5"}},
        "serving": {"maxRequests": 4},
        "workers": {"storage": {"medium": "Memory"}},
    })
    wait_phase(namespace, "capped", "Serving", SERVING_TIMEOUT)
    x = np.random.default_rng(2).random((1, 64), dtype=np.float32)
    for _ in range(2):
        assert np.asarray(predict(namespace, "capped", x)).shape == (1, 10)
    wait_for("requestsServed 2", lambda: em_status(namespace, "capped").get("requestsServed") == 2, 60)

    # mid-way: the serve pod is deleted; its replacement reads the count from the workers
    old = wait_for("one ready serve pod", lambda: serve_pod(namespace, "capped"), 120)
    old_uids = pod_uids(namespace, "capped", "serve")
    kubectl("delete", "pod", old, "-n", namespace, "--wait=false")
    wait_for("a new serve pod ready", lambda: (serve_pod(namespace, "capped") or "") not in ("", old)
             and not (pod_uids(namespace, "capped", "serve") & old_uids), 600)
    st = wait_phase(namespace, "capped", "Serving", SERVING_TIMEOUT)
    assert st["requestsServed"] == 2, st  # not reset by the replacement
    logs = kubectl("logs", "-n", namespace, serve_pod(namespace, "capped") or "", "--all-containers")
    assert "2 successful prediction(s) recorded in count scope" in logs, logs[-2000:]

    # only what is left of the limit: two more reach it (a reset count would keep serving)
    for _ in range(2):
        assert np.asarray(predict(namespace, "capped", x)).shape == (1, 10)
    st = wait_phase(namespace, "capped", "Stopped", 300)
    assert st["requestsServed"] == 4
    assert condition(st, "Serving")["reason"] == "MaxRequestsReached"


def worker_generations(ns: str, model: str) -> list[list[int]] | None:
    ws = em_status(ns, model).get("workers") or []
    gens = [w.get("generations") for w in ws]
    return [list(g) for g in gens] if len(gens) == 3 and all(g is not None for g in gens) else None


def test_recreated_model_on_retained_volumes_serves_its_new_generation(
    namespace: str, models: Path, tmp_path: Path
) -> None:
    import numpy as np

    x = np.random.default_rng(3).random((16, 64), dtype=np.float32)
    variants = {k: rolled(models, k, tmp_path) for k in (1, 2, 3, 5)}
    for k, path in variants.items():
        model_configmap(namespace, f"digits-roll{k}", path)

    def source(k: int) -> dict[str, Any]:
        return {"configMap": {"name": f"digits-roll{k}", "key": "model.h5"}}

    # the first EncryptedModel: generations 1, 2, 3 (the workers keep the newest two: 3 and 2)
    apply(namespace, "g", {"model": source(1), "workers": {"storage": {"size": "64Mi", "retainPolicy": "Retain"}}})
    wait_phase(namespace, "g", "Serving", SERVING_TIMEOUT)
    first_uid = uid_of(namespace, "g")
    for gen, k in ((2, 2), (3, 3)):
        patch_spec(namespace, "g", {"model": source(k)})
        wait_for(f"generation {gen} shared", lambda gen=gen: em_status(namespace, "g").get("shareGeneration") == gen,
                 SERVING_TIMEOUT)
        wait_phase(namespace, "g", "Serving", SERVING_TIMEOUT)
    wait_for("the workers hold generations 3 and 2", lambda: worker_generations(namespace, "g") == [[3, 2]] * 3, 120)

    # deleted; its volumes stay (Retain); re-created under the same name with another model
    kubectl("delete", "encryptedmodel", "g", "-n", namespace, "--timeout=180s")
    wait_for("the old pods gone", lambda: not pod_uids(namespace, "g", "worker") or None, 300)
    assert len((get_json("pvc", "-n", namespace) or {})["items"]) == 3
    apply(namespace, "g", {"model": source(5), "workers": {"storage": {"size": "64Mi", "retainPolicy": "Retain"}}})
    assert uid_of(namespace, "g") != first_uid
    st = wait_phase(namespace, "g", "Serving", SERVING_TIMEOUT)
    assert st["shareGeneration"] == 4, st  # above the retained 3 and 2, not 1
    # the workers pruned (generation 2 gone) and kept the new generation
    wait_for("the workers pruned to generations 4 and 3",
             lambda: worker_generations(namespace, "g") == [[4, 3]] * 3, 180)
    want = plaintext(variants[5], x, tmp_path)
    got = np.asarray(predict(namespace, "g", x))
    assert got.shape == (16, 10)
    assert np.mean(np.argmax(got, axis=1) == np.argmax(want, axis=1)) >= 0.9
    old = plaintext(variants[3], x, tmp_path)  # what the retained generation 3 would answer
    assert np.mean(np.argmax(got, axis=1) == np.argmax(old, axis=1)) <= 0.1
    assert em_status(namespace, "g")["shareGeneration"] == 4
