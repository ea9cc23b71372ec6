"""The thin handler glue, against an in-memory fake of the API server."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
import pytest
from operator_testlib import BASE_SPEC, make_ctx

from tfe_operator import handlers, metrics, pki
from tfe_operator.kube import Kube
from tfe_operator.reconcile import Plan, Ref
from tfe_operator.settings import Settings
from tfe_operator.status import Status


class FakeApi:
    """Stores objects by (kind plural path); understands apply/create/delete/get/list."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []
        self.proxy: dict[str, Any] = {}

    def __call__(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str | None = None,
        accept: str = "application/json",
    ) -> tuple[int, bytes]:
        import json

        q = dict(query)
        if "/proxy/" in path:
            doc = self.proxy.get(path)
            return (200, json.dumps(doc).encode()) if doc is not None else (503, b"{}")
        if method == "PATCH":
            self.writes.append(("apply", path))
            self.objects[path] = copy.deepcopy(body)
            return 200, json.dumps(body).encode()
        if method == "POST":
            full = f"{path}/{body['metadata']['name']}"
            if full in self.objects:
                return 409, b'{"reason": "AlreadyExists"}'
            self.writes.append(("create", full))
            self.objects[full] = copy.deepcopy(body)
            return 201, json.dumps(body).encode()
        if method == "DELETE":
            self.writes.append(("delete", path))
            return (200, b"{}") if self.objects.pop(path, None) is not None else (404, b"{}")
        if method == "GET" and path in self.objects:
            return 200, json.dumps(self.objects[path]).encode()
        if method == "GET" and "labelSelector" in q:
            want = dict(term.split("=", 1) for term in q["labelSelector"].split(","))
            items = [
                o
                for p, o in self.objects.items()
                if p.rsplit("/", 1)[0] == path
                and all(o["metadata"].get("labels", {}).get(k) == v for k, v in want.items())
            ]
            return 200, json.dumps({"items": items}).encode()
        return 404, b"{}"


@pytest.fixture
def api() -> FakeApi:
    """The handlers on an explicit registry whose runtime talks to the fake API server and
    records Events (what main.py does with the real client and kopf.event)."""
    fake = FakeApi()
    events: list[tuple[str, str]] = []
    def post(body: kopf.Body, type_: str, reason: str, message: str) -> None:
        events.append((type_, reason))

    runtime = handlers.Runtime(settings=Settings(), kube=Kube(fake), post_event=post)
    handlers.build_registry(runtime)
    fake.events = events  # type: ignore[attr-defined]
    return fake


def body(spec: Mapping[str, Any] | None = None, status: Mapping[str, Any] | None = None) -> kopf.Body:
    return kopf.Body(
        {
            "apiVersion": "tfe.dev/v1alpha1",
            "kind": "EncryptedModel",
            "metadata": {
                "name": "digits",
                "namespace": "ml",
                "uid": "uid-1",
                "generation": 1,
                "creationTimestamp": "2025-01-01T00:00:00Z",
            },
            "spec": dict(spec or BASE_SPEC),
            "status": dict(status or {}),
        }
    )


def run(b: kopf.Body, memo: kopf.Memo) -> kopf.Patch:
    patch = kopf.Patch()
    handlers._reconcile(b, b.meta, b.spec, b.status, patch, memo)
    return patch


def ready_pod(i: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"digits-worker-{i}",
            "uid": f"p{i}",
            "labels": {"tfe.dev/model": "digits", "app.kubernetes.io/component": "worker"},
        },
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def test_first_reconcile_creates_base_objects_and_status(api: FakeApi) -> None:
    api.objects["/api/v1/namespaces/ml/configmaps/digits-model"] = {"metadata": {"name": "digits-model"}}
    memo = kopf.Memo()
    patch = run(body(), memo)
    secrets = "/api/v1/namespaces/ml/secrets/digits-mesh-"
    # the mesh CA first, then one Secret per long-lived identity, then the objects
    assert [p for op, p in api.writes[:6]] == [
        f"{secrets}ca",
        *(f"{secrets}{i}" for i in ("server0", "server1", "server2", "coordinator", "endpoint")),
    ]
    assert sorted(p for op, p in api.writes[6:]) == sorted(
        [
            "/api/v1/namespaces/ml/configmaps/digits-tfe-config",
            "/api/v1/namespaces/ml/configmaps/digits-mesh",
            "/api/v1/namespaces/ml/services/digits-workers",
            "/apis/networking.k8s.io/v1/namespaces/ml/networkpolicies/digits-workers",
            "/apis/networking.k8s.io/v1/namespaces/ml/networkpolicies/digits-coordinator",
            "/apis/networking.k8s.io/v1/namespaces/ml/networkpolicies/digits-endpoint",
            "/apis/apps/v1/namespaces/ml/statefulsets/digits-worker",
        ]
    )
    assert patch["status"]["phase"] == "Provisioning"
    assert memo["status"].phase == "Provisioning"
    assert api.events == [("Normal", "MeshCertificatesIssued"), ("Normal", "Provisioning")]  # type: ignore[attr-defined]
    assert set(patch["status"]["mesh"]) == {"caNotAfter", "notAfter", "rotation", "caSHA256", "refused"}
    assert metrics.PHASES.counts()["Provisioning"] >= 1


def test_full_flow_to_serving_without_duplicates(api: FakeApi) -> None:
    api.objects["/api/v1/namespaces/ml/configmaps/digits-model"] = {"metadata": {"name": "digits-model"}}
    memo = kopf.Memo()
    b = body()
    run(b, memo)
    for i in range(3):
        api.objects[f"/api/v1/namespaces/ml/pods/digits-worker-{i}"] = ready_pod(i)
        # proxy mode: through the guard's plain health port
        api.proxy[f"/api/v1/namespaces/ml/pods/digits-worker-{i}:5444/proxy/v1/public-key"] = {
            "name": f"server{i}",
            "publicKey": f"key{i}",
        }
    run(b, memo)
    job_path = "/apis/batch/v1/namespaces/ml/jobs/digits-share-g1"
    assert ("create", job_path) in api.writes
    # the share Job's identity, issued just before its Job
    share_secret = ("apply", "/api/v1/namespaces/ml/secrets/digits-mesh-share-g1")
    assert api.writes.index(share_secret) < api.writes.index(("create", job_path))
    assert memo["status"].phase == "Sharing"
    assert [w.public_key for w in memo["status"].workers] == ["key0", "key1", "key2"]
    # A second round (e.g. after an operator restart) creates nothing new.
    creates = [w for w in api.writes if w[0] == "create"]
    secret_writes = [w for w in api.writes if "/secrets/" in w[1]]
    run(b, memo)
    run(body(status=memo["status"].to_dict()), kopf.Memo())
    assert [w for w in api.writes if w[0] == "create"] == creates
    # keys are made once, not every reconcile
    assert [w for w in api.writes if "/secrets/" in w[1]] == secret_writes
    # The Job succeeds.
    api.objects[job_path]["status"] = {
        "conditions": [{"type": "Complete", "status": "True"}],
        "startTime": "2025-01-01T00:01:00Z",
        "completionTime": "2025-01-01T00:01:30Z",
    }
    run(b, memo)
    dep_path = "/apis/apps/v1/namespaces/ml/deployments/digits-serve"
    assert ("apply", dep_path) in api.writes
    assert memo["status"].share_generation == 1
    # The serve pod becomes ready and reports its status.
    dep = api.objects[dep_path]
    dep["metadata"]["generation"] = 1
    dep["status"] = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
    api.objects["/api/v1/namespaces/ml/pods/digits-serve-x"] = {
        "metadata": {
            "name": "digits-serve-x",
            "labels": {"tfe.dev/model": "digits", "app.kubernetes.io/component": "serve"},
        },
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    # the coordinator has no client port: its status through the guard's plain health port
    api.proxy["/api/v1/namespaces/ml/pods/digits-serve-x:5444/proxy/v1/status"] = {
        "ready": True,
        "requestsServed": 3,
        "limitReached": False,
        "shareGeneration": 1,
    }
    for path in (
        "/api/v1/namespaces/ml/services/digits-relay",
        "/api/v1/namespaces/ml/services/digits",
    ):
        assert ("apply", path) in api.writes
    # not Serving until the endpoint Deployment is rolled out
    patch = run(b, memo)
    assert patch["status"]["phase"] == "Provisioning"
    assert patch["status"]["message"] == "endpoint deployment starting (generation 1)"
    assert patch["status"]["requestsServed"] == 3
    # (the fake API keeps what was applied last: no status of its own)
    for name in ("digits-serve", "digits-endpoint"):
        d = api.objects[f"/apis/apps/v1/namespaces/ml/deployments/{name}"]
        d["metadata"]["generation"] = 1
        d["status"] = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
    patch = run(b, memo)
    assert patch["status"]["phase"] == "Serving"
    assert patch["status"]["requestsServed"] == 3
    assert memo["status"].endpoint == "http://digits.ml.svc:8000"


def test_invalid_spec_is_failed_without_writes(api: FakeApi) -> None:
    memo = kopf.Memo()
    patch = run(body({"model": {}}), memo)
    assert api.writes == []
    assert patch["status"]["phase"] == "Failed"
    assert patch["status"]["message"].startswith("invalid spec: exactly one model source")


def test_patch_status_removes_vanished_keys() -> None:
    patch = kopf.Patch()
    handlers._patch_status(
        patch,
        body_status={"phase": "Sharing", "sharing": {"generation": 1}, "kopf": {}},
        current={"phase": "Sharing", "failure": {"x": 1}, "sharing": {"generation": 1}},
        new={"phase": "Serving"},
    )
    assert dict(patch["status"]) == {"phase": "Serving", "sharing": None, "failure": None}


def test_execute_continues_after_errors(api: FakeApi) -> None:
    plan = Plan(delete=[Ref("v1", "Service", "gone"), Ref("apps/v1", "Deployment", "x")])
    api.objects["/apis/apps/v1/namespaces/ml/deployments/x"] = {"metadata": {"name": "x"}}
    assert handlers.RUNTIME.kube is not None
    assert handlers.execute(handlers.RUNTIME.kube, "ml", plan) == []
    assert "/apis/apps/v1/namespaces/ml/deployments/x" not in api.objects


def test_memo_status_only_while_the_body_is_stale(api: FakeApi) -> None:
    """Continue from our own last status only if the object did not change since we read it."""
    memo = kopf.Memo()
    memo["status"] = Status(phase="Sharing", share_generation=7)  # the marker: not in the body
    memo["status_rv"] = "5"
    stale = body({"model": {}})
    stale["metadata"]["resourceVersion"] = "5"
    assert run(stale, memo)["status"]["shareGeneration"] == 7
    memo["status"] = Status(phase="Sharing", share_generation=7)
    memo["status_rv"] = "5"
    fresh = body({"model": {}})
    fresh["metadata"]["resourceVersion"] = "6"
    assert "shareGeneration" not in run(fresh, memo)["status"]
    assert memo["status_rv"] == "6"


# ------------------------------------------------------------------ the mesh PKI

SECRETS = "/api/v1/namespaces/ml/secrets"
STS = "/apis/apps/v1/namespaces/ml/statefulsets/digits-worker"


def _mesh_hash(api: FakeApi) -> str:
    return str(api.objects[STS]["spec"]["template"]["metadata"]["annotations"]["tfe.dev/mesh-hash"])


def test_rotation_on_request_and_on_recreate(api: FakeApi) -> None:
    api.objects["/api/v1/namespaces/ml/configmaps/digits-model"] = {"metadata": {"name": "digits-model"}}
    b = body()
    run(b, kopf.Memo())
    ca1 = api.objects[f"{SECRETS}/digits-mesh-ca"]["data"]["ca.crt"]
    leaf1 = api.objects[f"{SECRETS}/digits-mesh-server0"]["data"]["tls.crt"]
    hash1 = _mesh_hash(api)
    run(b, kopf.Memo())
    assert api.objects[f"{SECRETS}/digits-mesh-ca"]["data"]["ca.crt"] == ca1
    assert _mesh_hash(api) == hash1

    # Asked for: a new CA, new leaves, a new pod-template hash (the pods restart).
    b["metadata"]["annotations"] = {"tfe.dev/rotate-mesh": "2025-06-01"}
    patch = run(b, kopf.Memo())
    ca2 = api.objects[f"{SECRETS}/digits-mesh-ca"]["data"]["ca.crt"]
    assert ca2 != ca1
    assert api.objects[f"{SECRETS}/digits-mesh-server0"]["data"]["tls.crt"] != leaf1
    assert api.objects[f"{SECRETS}/digits-mesh-server0"]["data"]["ca.crt"] == ca2
    assert _mesh_hash(api) != hash1
    assert patch["status"]["mesh"]["rotation"] == "2025-06-01"
    hash2 = _mesh_hash(api)
    run(b, kopf.Memo())  # the same request again: nothing new
    assert api.objects[f"{SECRETS}/digits-mesh-ca"]["data"]["ca.crt"] == ca2

    # The EncryptedModel deleted and created again under the same name: a new uid, a new CA.
    b["metadata"]["uid"] = "uid-2"
    run(b, kopf.Memo())
    assert api.objects[f"{SECRETS}/digits-mesh-ca"]["data"]["ca.crt"] != ca2
    assert _mesh_hash(api) != hash2
    owners = api.objects[f"{SECRETS}/digits-mesh-ca"]["metadata"]["ownerReferences"]
    assert [o["uid"] for o in owners] == ["uid-2"]


def test_a_deleted_leaf_is_reissued_alone(api: FakeApi) -> None:
    api.objects["/api/v1/namespaces/ml/configmaps/digits-model"] = {"metadata": {"name": "digits-model"}}
    b = body()
    run(b, kopf.Memo())
    ca = api.objects[f"{SECRETS}/digits-mesh-ca"]["data"]["ca.crt"]
    del api.objects[f"{SECRETS}/digits-mesh-server1"]
    api.writes.clear()
    run(b, kopf.Memo())
    assert [p for _, p in api.writes if "/secrets/" in p] == [f"{SECRETS}/digits-mesh-server1"]
    assert api.objects[f"{SECRETS}/digits-mesh-ca"]["data"]["ca.crt"] == ca


def test_key_material_is_never_logged(api: FakeApi, caplog: pytest.LogCaptureFixture) -> None:
    import base64
    import logging

    caplog.set_level(logging.DEBUG)
    api.objects["/api/v1/namespaces/ml/configmaps/digits-model"] = {"metadata": {"name": "digits-model"}}
    b = body()
    run(b, kopf.Memo())
    b["metadata"]["annotations"] = {"tfe.dev/rotate-mesh": "x"}
    run(b, kopf.Memo())
    key = base64.b64decode(api.objects[f"{SECRETS}/digits-mesh-ca"]["data"]["ca.key"]).decode()
    body_lines = [ln for ln in key.splitlines() if "PRIVATE KEY" not in ln]
    assert "mesh certificates issued" in caplog.text
    assert "PRIVATE KEY" not in caplog.text
    assert not any(ln in caplog.text for ln in body_lines)


def test_external_workers_have_no_mesh(api: FakeApi) -> None:
    spec = {
        "model": {"configMap": {"name": "digits-model", "key": "model.h5"}},
        "workers": {"external": [{"host": f"w{i}.example", "port": 4440} for i in range(3)]},
    }
    api.objects["/api/v1/namespaces/ml/configmaps/digits-model"] = {"metadata": {"name": "digits-model"}}
    patch = run(body(spec), kopf.Memo())
    assert not [p for _, p in api.writes if "/secrets/" in p]
    assert "mesh" not in patch["status"]


def test_the_registry_is_built_from_the_settings_passed_in() -> None:
    """No handler is registered at import (kopf's default registry stays empty of ours); the
    timer's interval is the settings' resync, not the environment's."""
    import dataclasses as dc

    registry = handlers.build_registry(handlers.Runtime(settings=dc.replace(Settings(), resync_seconds=7.5,
                                                                            busy_resync_seconds=0.5)))
    timers = [h for h in registry._spawning.get_all_handlers() if getattr(h, "interval", None) is not None]
    assert [t.interval for t in timers] == [0.5]  # ticks at the busy interval; steady models skip ticks
    registry = handlers.build_registry(handlers.Runtime(settings=dc.replace(Settings(), resync_seconds=0.2)))
    timers = [h for h in registry._spawning.get_all_handlers() if getattr(h, "interval", None) is not None]
    assert [t.interval for t in timers] == [0.2]
    changing = {str(h.id).split("/")[0] for h in registry._changing.get_all_handlers()}
    watching = {str(h.id).split("/")[0] for h in registry._watching.get_all_handlers()}
    assert "changed" in changing and "forget_deleted" in watching
    assert [h.fn for h in registry._activities.get_all_handlers() if "login" in str(h.id)] == [kopf.login_via_client]
    ours = [h for h in kopf.get_default_registry()._changing.get_all_handlers() if "tfe_operator" in repr(h.fn)]
    assert ours == []


def test_a_model_on_its_way_is_read_every_tick_a_steady_one_every_resync_seconds() -> None:
    s = Settings()
    assert (s.resync_seconds, s.busy_resync_seconds) == (5.0, 1.0)
    for phase in ("Pending", "Provisioning", "Sharing", "ShuttingDown", None):
        assert handlers.resync_due(phase, 100.0, 100.9, s, phase_since=90.0)
        # stuck in one phase for BUSY_WINDOW_SECONDS: back to the steady cadence
        since = 100.9 - handlers.BUSY_WINDOW_SECONDS
        assert not handlers.resync_due(phase, 100.0, 100.9, s, phase_since=since)
        assert handlers.resync_due(phase, 100.0, 105.0, s, phase_since=since)
    for phase in ("Serving", "Stopped", "Failed"):
        assert handlers.resync_due(phase, None, 100.0, s)  # never read by this process (e.g. restarted)
        assert not handlers.resync_due(phase, 100.0, 101.0, s, phase_since=100.5)
        assert not handlers.resync_due(phase, 100.0, 104.0, s)
        assert handlers.resync_due(phase, 100.0, 104.98, s)  # the tick that completes 5 s (ticks drift)
        assert handlers.resync_due(phase, 100.0, 106.0, s)


def test_the_resync_tick_skips_a_steady_model_read_recently(monkeypatch: pytest.MonkeyPatch) -> None:
    """The timer handler itself: a Serving model read 1 s ago is not read again; a Sharing one is."""
    import time as _time

    calls: list[str] = []
    monkeypatch.setattr(handlers, "_reconcile", lambda body, meta, *a: calls.append(str(meta["name"])))
    runtime = handlers.Runtime(settings=Settings())
    handlers.build_registry(runtime)
    now = _time.monotonic()
    for name, phase in (("serving", "Serving"), ("sharing", "Sharing")):
        memo = kopf.Memo(last_read=now - 1.0)
        handlers.resync(body=kopf.Body({}), meta=kopf.Meta(kopf.Body({"metadata": {"name": name}})),
                        spec=kopf.Spec(kopf.Body({})), status=kopf.Status(kopf.Body({"status": {"phase": phase}})),
                        patch=kopf.Patch(), memo=memo)
    assert calls == ["sharing"]


def test_a_deleted_models_lock_is_forgotten() -> None:
    runtime = handlers.Runtime(settings=Settings())
    handlers.build_registry(runtime)
    runtime.lock("uid-x")
    handlers.forget_deleted(kopf.RawEvent({"type": "DELETED", "object": {"metadata": {"uid": "uid-x", "name": "m",
                                                                                    "namespace": "ns"}}}))
    assert "uid-x" not in runtime.locks


def test_operator_tls_contexts_of_expired_certificates_are_dropped() -> None:
    """The operator's per-mesh client TLS cache does not grow with every model ever seen: a
    context whose certificate has expired is dropped on the next call."""
    now = dt.datetime(2026, 11, 27, tzinfo=dt.timezone.utc)
    handlers._OPERATOR_TLS.clear()
    a = pki.plan_mesh(make_ctx(), pki.Existing(), "", now)
    b = pki.plan_mesh(make_ctx(), pki.Existing(), "", now)
    assert a.ca is not None and b.ca is not None and a.ca.cert != b.ca.cert
    sa = handlers.operator_tls(a, now)
    assert handlers.operator_tls(a, now) is sa  # cached
    handlers.operator_tls(b, now)
    assert len(handlers._OPERATOR_TLS) == 2
    # past the operator certificate's lifetime: both expired, only the one asked for is back
    later = now + pki.OPERATOR_LIFETIME + dt.timedelta(minutes=1)
    handlers.operator_tls(b, later)
    assert set(handlers._OPERATOR_TLS) == {pki.sha256(b.ca.cert)}
    handlers._OPERATOR_TLS.clear()
