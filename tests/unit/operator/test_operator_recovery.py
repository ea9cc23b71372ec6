"""Issue 14 in the state machine: truthful share status, recovery from peers, refresh (docs/recovery.md)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from operator_testlib import BASE_SPEC, WirePlan, make_ctx, reconcile_wire

from tfe_operator import builders
from tfe_operator.observe import (
    EndpointDeployment,
    JobState,
    Observed,
    ServeDeployment,
    ServeStatus,
    WorkerPod,
    generations,
)
from tfe_operator.reconcile import Ref, Resource, condition, refresh_due
from tfe_operator.spec import SpecError, parse_duration, parse_spec
from tfe_operator.status import Status

T0 = datetime(2025, 1, 1, tzinfo=UTC)
NOW = T0 + timedelta(seconds=90)
HASH = make_ctx().spec.model_hash


def res(spec: dict[str, Any] | None = None, refresh: str = "") -> Resource:
    return Resource(ctx=make_ctx(spec), generation=1, created=T0, refresh_request=refresh)


def pods(ready: int = 3) -> tuple[WorkerPod, ...]:
    return tuple(WorkerPod(index=i, name=f"digits-worker-{i}", uid=f"u{i}", ready=i < ready) for i in range(3))


def status(gen: int = 1, **extra: Any) -> dict[str, Any]:
    st = {
        "phase": "Serving", "shareGeneration": gen, "modelHash": HASH, "sharesStored": True,
        "shareWorkerUIDs": ["u0", "u1", "u2"], "endpoint": "http://digits.ml.svc:8000", "requestsServed": 0,
        "firstServingTime": "2025-01-01T00:01:00Z", "shareGenerationTime": "2025-01-01T00:01:00Z",
        "workers": [{"name": f"server{i}", "publicKey": f"key{i}", "podUID": f"u{i}"} for i in range(3)],
    }
    st.update(extra)
    return st


def obs(gens: dict[int, tuple[int, ...]], serving: int = 1, ready: int = 3, **kw: Any) -> Observed:
    base = Observed(
        worker_pods=pods(ready), statefulset=True, serve=ServeDeployment(generation=serving, ready=True),
        serve_pods=1, client_service=True, endpoint=EndpointDeployment(ready=True), endpoint_pods=1,
        relay_service=True,
        serve_status=ServeStatus(ready=True, requests_served=0, limit_reached=False, share_generation=serving),
        public_keys={i: f"key{i}" for i in range(ready)}, worker_generations=gens,
    )
    return dataclasses.replace(base, **kw)


def job(gen: int, phase: str = "active", kind: str = "recovery", **kw: Any) -> JobState:
    return JobState(name=f"digits-share-g{gen}", generation=gen, model_hash=HASH, phase=phase,  # type: ignore[arg-type]
                    start=T0, end=T0 + timedelta(seconds=12) if phase != "active" else None, kind=kind, **kw)


def cond(plan: WirePlan, type_: str) -> tuple[str, str, str]:
    c = condition(plan.typed, type_)
    assert c is not None
    return str(c.status), str(c.reason), str(c.message)


def jobs_applied(plan: WirePlan) -> list[dict[str, Any]]:
    return [m for m in plan.apply if m["kind"] == "Job"]


def reasons(plan: WirePlan) -> list[str]:
    return [e.reason for e in plan.events]


ALL = {0: (1,), 1: (1,), 2: (1,)}


def test_all_three_hold_the_serving_generation_is_serving() -> None:
    plan = reconcile_wire(res(), status(), obs(ALL), NOW)
    assert plan.status["phase"] == "Serving"
    assert cond(plan, "ModelShared")[:2] == ("True", "Shared")
    assert jobs_applied(plan) == []
    assert [w["generations"] for w in plan.status["workers"]] == [[1], [1], [1]]


def test_one_worker_lost_its_shares_starts_recovery_from_its_peers() -> None:
    plan = reconcile_wire(res(), status(), obs({0: (1,), 1: (), 2: (1,)}), NOW)
    st = plan.status
    assert st["phase"] == "Sharing"  # not Serving while a party cannot serve
    shared = cond(plan, "ModelShared")
    assert shared[:2] == ("False", "SharesMissing")
    assert shared[2].startswith("server1 lacks generation 1; recovering server1 from its peers as generation 2")
    assert cond(plan, "Serving")[:2] == ("False", "SharesMissing")
    assert cond(plan, "Ready")[0] == "False"
    (j,) = jobs_applied(plan)
    assert j["metadata"]["name"] == "digits-share-g2"
    assert j["metadata"]["annotations"]["tfe.dev/share-kind"] == "recovery"
    cmd = j["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:2] == ["tfe-worker", "reshare"]
    assert cmd[cmd.index("--from-generation") + 1] == "1" and cmd[cmd.index("--generation") + 1] == "2"
    assert cmd[cmd.index("--recover") + 1] == "server1"
    assert "--model" not in cmd and not any(v["name"] == "model" for v in j["spec"]["template"]["spec"]["volumes"])
    assert st["resharing"] == {"generation": 2, "from": 1, "kind": "recovery", "attempts": 1, "worker": "server1"}
    assert "RecoveryStarted" in reasons(plan)
    # the serve Deployment stays on generation 1 until generation 2 exists
    assert [m for m in plan.apply if m["kind"] == "Deployment" and m["metadata"]["name"] == "digits-serve"]


def test_recovery_job_done_moves_serving_to_the_new_generation() -> None:
    st = status(resharing={"generation": 2, "from": 1, "kind": "recovery", "attempts": 1, "worker": "server1"})
    plan = reconcile_wire(res(), st, obs({0: (2, 1), 1: (2,), 2: (2, 1)}, jobs=(job(2, "succeeded"),)), NOW)
    new = plan.status
    assert new["shareGeneration"] == 2 and "resharing" not in new
    assert new["shareGenerationTime"] == "2025-01-01T00:01:30Z"
    assert "SharesRecovered" in reasons(plan)
    serve = [m for m in plan.apply if m["kind"] == "Deployment" and m["metadata"]["name"] == "digits-serve"]
    assert serve[0]["spec"]["template"]["metadata"]["labels"]["tfe.dev/share-generation"] == "2"
    assert new["phase"] != "Serving"  # the coordinator still reports generation 1
    assert cond(plan, "ModelShared")[:2] == ("True", "Shared")
    served = obs({0: (2, 1), 1: (2,), 2: (2, 1)}, serving=2)
    assert reconcile_wire(res(), new, served, NOW).status["phase"] == "Serving"


def test_failed_recovery_retries_as_a_new_generation_then_fails() -> None:
    st = status(resharing={"generation": 2, "from": 1, "kind": "recovery", "attempts": 1, "worker": "server1"})
    lost = {0: (1,), 1: (), 2: (1,)}
    plan = reconcile_wire(res(), st, obs(lost, jobs=(job(2, "failed", message="boom"),)), NOW)
    assert Ref("batch/v1", "Job", "digits-share-g2") in plan.delete
    assert plan.status["resharing"]["generation"] == 3 and plan.status["resharing"]["attempts"] == 2
    assert "ReshareJobFailed" in reasons(plan)
    st = status(resharing={"generation": 4, "from": 1, "kind": "recovery", "attempts": 3, "worker": "server1"})
    plan = reconcile_wire(res(), st, obs(lost, jobs=(job(4, "failed", message="boom"),)), NOW)
    assert plan.status["phase"] == "Failed"
    assert "failed 3 times: boom" in plan.status["message"]


def test_two_workers_lost_with_the_model_source_shares_again() -> None:
    plan = reconcile_wire(res(), status(), obs({0: (), 1: (), 2: (1,)}), NOW)
    assert "SharesLost" in reasons(plan)
    (j,) = jobs_applied(plan)
    cmd = j["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:2] == ["tfe-worker", "share"] and "--model" in cmd
    assert plan.status["phase"] == "Sharing"
    assert plan.status["sharesStored"] is False


def test_two_workers_lost_without_the_model_source_is_failed_saying_so() -> None:
    gone = "waiting for ConfigMap 'digits-model' (model source)"
    plan = reconcile_wire(res(), status(), obs({0: (), 1: (1,), 2: ()}, source_missing=gone), NOW)
    st = plan.status
    assert st["phase"] == "Failed"
    assert st["message"] == ("shares lost on server0 and server2: recovery from peers needs two workers that "
                             f"hold generation 1, and the model source is gone ({gone})")
    assert cond(plan, "ModelShared")[:2] == ("False", "SharesLost")
    assert jobs_applied(plan) == []
    assert "failure" not in st  # not sticky: the source coming back shares again
    back = reconcile_wire(res(), st, obs({0: (), 1: (1,), 2: ()}), NOW)
    assert back.status["phase"] == "Sharing" and jobs_applied(back)


def test_a_worker_not_answering_is_not_counted_as_missing() -> None:
    plan = reconcile_wire(res(), status(), obs({0: (1,), 2: (1,)}, ready=2, public_keys={0: "key0"}), NOW)
    assert cond(plan, "ModelShared")[0] == "True"
    assert jobs_applied(plan) == []


def test_new_public_key_is_reported_and_written() -> None:
    o = obs({0: (1,), 1: (), 2: (1,)}, public_keys={0: "key0", 1: "NEWKEY", 2: "key2"})
    plan = reconcile_wire(res(), status(), o, NOW)
    assert plan.status["workers"][1]["publicKey"] == "NEWKEY"
    (ev,) = [e for e in plan.events if e.reason == "WorkerKeyChanged"]
    assert ev.type == "Warning" and ev.message.startswith("server1 has a new public key")
    again = reconcile_wire(res(), plan.status, o, NOW)
    assert "WorkerKeyChanged" not in reasons(again)


def test_refresh_on_annotation_once() -> None:
    plan = reconcile_wire(res(refresh="now"), status(refreshRequest="before"), obs(ALL), NOW)
    (j,) = jobs_applied(plan)
    cmd = j["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--refresh" in cmd and cmd[cmd.index("--generation") + 1] == "2"
    assert plan.status["refreshRequest"] == "now"
    assert plan.status["phase"] == "Serving"  # generation 1 keeps serving meanwhile
    assert reasons(plan)[:2] == ["RefreshRequested", "RefreshStarted"]
    done = reconcile_wire(res(refresh="now"), plan.status, obs({i: (2, 1) for i in range(3)},
                                                          jobs=(job(2, "succeeded", kind="refresh"),)), NOW)
    assert done.status["shareGeneration"] == 2 and "SharesRefreshed" in reasons(done)
    idle = reconcile_wire(res(refresh="now"), done.status, obs({i: (2, 1) for i in range(3)}, serving=2), NOW)
    assert jobs_applied(idle) == []


def test_an_annotation_present_from_the_start_is_no_request() -> None:
    plan = reconcile_wire(res(refresh="x"), status(), obs(ALL), NOW)
    assert plan.status["refreshRequest"] == "x" and jobs_applied(plan) == []
    # a model from before refreshes existed: the first annotation value is a request
    plan = reconcile_wire(res(), status(), obs(ALL), NOW)
    assert plan.status["refreshRequest"] == ""
    assert jobs_applied(reconcile_wire(res(refresh="1"), plan.status, obs(ALL), NOW))


def test_refresh_interval() -> None:
    spec = {**BASE_SPEC, "shares": {"refreshInterval": "1h"}}
    young = status(shareGenerationTime="2025-01-01T00:00:00Z")
    typed = Status.from_dict(young)
    assert refresh_due(res(spec), typed, T0 + timedelta(minutes=59)) is None
    assert refresh_due(res(spec), typed, T0 + timedelta(minutes=60)) == "refreshInterval 3600s elapsed"
    assert refresh_due(res(), typed, T0 + timedelta(days=9)) is None  # off by default
    plan = reconcile_wire(res(spec), young, obs(ALL), T0 + timedelta(hours=2))
    assert jobs_applied(plan) and plan.status["resharing"]["kind"] == "refresh"


def test_spec_refresh_interval_parsing() -> None:
    base = {"model": {"configMap": {"name": "m", "key": "model.h5"}}}
    assert parse_spec(base).shares.refresh_interval_seconds is None
    assert parse_spec({**base, "shares": {"refreshInterval": "24h"}}).shares.refresh_interval_seconds == 86400
    assert parse_duration("7d", "x") == 7 * 86400
    for bad in ("10s", "1w", "", "5", 60):
        with pytest.raises(SpecError):
            parse_spec({**base, "shares": {"refreshInterval": bad}})


def test_generations_document() -> None:
    assert generations({"model": "digits", "generations": [1, 3, 2]}, "digits") == (3, 2, 1)
    assert generations({"model": "other", "generations": [1]}, "digits") is None
    assert generations({"model": "digits", "generations": [True]}, "digits") is None
    assert generations(None, "digits") is None


def test_worker_guard_health_passes_the_generations_path() -> None:
    cfg = builders.guard_config(make_ctx(), "server1")
    assert "/v1/models/digits/generations" in cfg["health"]["paths"]


def test_memory_storage_replaced_worker_is_recovered_from_peers_when_generations_are_reported() -> None:
    spec = {**BASE_SPEC, "workers": {"storage": {"medium": "Memory"}}}
    replaced = tuple(dataclasses.replace(p, uid="NEW") if p.index == 1 else p for p in pods())
    plan = reconcile_wire(res(spec), status(), obs({0: (1,), 1: (), 2: (1,)}, worker_pods=replaced), NOW)
    (j,) = jobs_applied(plan)
    assert j["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["tfe-worker", "reshare"]
    assert plan.status["sharesStored"] is True and "SharesLost" not in reasons(plan)
    # without the workers' reports (an older worker image): shared again from the model source
    plan = reconcile_wire(res(spec), status(), obs({}, worker_pods=replaced), NOW)
    assert "SharesLost" in reasons(plan) and plan.status["sharesStored"] is False


def test_the_handler_reads_every_ready_workers_generations_and_key_through_the_guard() -> None:
    """Proxy mode: GET /v1/models/NAME/generations and /v1/public-key through each worker's guard health port."""
    from test_operator_handlers import FakeApi, ready_pod

    from tfe_operator import handlers
    from tfe_operator.kube import Kube
    from tfe_operator.settings import Settings

    fake = FakeApi()
    handlers.build_registry(handlers.Runtime(settings=Settings(), kube=Kube(fake)))
    for i in range(3):
        fake.objects[f"/api/v1/namespaces/ml/pods/digits-worker-{i}"] = ready_pod(i)
        base = f"/api/v1/namespaces/ml/pods/digits-worker-{i}:5444/proxy/v1"
        fake.proxy[f"{base}/public-key"] = {"name": f"server{i}", "publicKey": f"key{i}"}
        if i != 1:  # server1 answers nothing (e.g. still starting): absent, not "missing"
            fake.proxy[f"{base}/models/digits/generations"] = {"model": "digits", "generations": [1, 2] if i else [2]}
    o = handlers.observe_model(handlers.RUNTIME.kube, res(), Status.from_dict(status()))
    assert o.worker_generations == {0: (2,), 2: (2, 1)}
    assert o.public_keys == {0: "key0", 1: "key1", 2: "key2"}
