"""The pure state machine: phases, conditions, share generations, shutdown, failures."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from operator_testlib import BASE_SPEC, WirePlan, make_ctx, reconcile_wire

from tfe_operator import builders
from tfe_operator import reconcile as reconcile_mod
from tfe_operator.observe import (
    EndpointDeployment,
    JobState,
    Observed,
    Refusal,
    ServeDeployment,
    ServeStatus,
    WorkerPod,
)
from tfe_operator.reconcile import Ref, Resource, condition, keys_to_fetch, reconcile
from tfe_operator.status import Failure, MeshStatus, Sharing, Status

T0 = datetime(2025, 1, 1, tzinfo=UTC)
NOW = T0 + timedelta(seconds=90)


def res(spec: dict[str, Any] | None = None, generation: int = 1) -> Resource:
    return Resource(ctx=make_ctx(spec), generation=generation, created=T0)


def pods(ready: int = 3, uids: tuple[str, ...] = ("u0", "u1", "u2"), **extra: Any) -> tuple[WorkerPod, ...]:
    return tuple(WorkerPod(index=i, name=f"digits-worker-{i}", uid=uids[i], ready=i < ready, **extra) for i in range(3))


def job(gen: int, phase: str = "active", spec: dict[str, Any] | None = None, **kw: Any) -> JobState:
    return JobState(
        name=f"digits-share-g{gen}",
        generation=gen,
        model_hash=make_ctx(spec).spec.model_hash,
        phase=phase,  # type: ignore[arg-type]
        start=T0 + timedelta(seconds=10),
        end=T0 + timedelta(seconds=40) if phase != "active" else None,
        **kw,
    )


def kinds(plan: WirePlan) -> list[tuple[str, str]]:
    return [(m["kind"], m["metadata"]["name"]) for m in plan.apply]


def cond(plan: WirePlan, type_: str) -> tuple[str, str]:
    c = condition(plan.typed, type_)
    assert c is not None
    return str(c.status), str(c.reason)


BASE_KINDS = [
    ("ConfigMap", "digits-tfe-config"),
    ("ConfigMap", "digits-mesh"),
    ("Service", "digits-workers"),
    ("NetworkPolicy", "digits-workers"),
    ("NetworkPolicy", "digits-coordinator"),
    ("NetworkPolicy", "digits-endpoint"),
    ("StatefulSet", "digits-worker"),
]
SERVING_KINDS = [
    ("Deployment", "digits-serve"),
    ("Service", "digits-relay"),
    ("Deployment", "digits-endpoint"),
    ("Service", "digits"),
]
HASH = make_ctx().spec.model_hash


def serving_status(gen: int = 1, **extra: Any) -> dict[str, Any]:
    st = {
        "phase": "Serving",
        "shareGeneration": gen,
        "modelHash": HASH,
        "sharesStored": True,
        "shareWorkerUIDs": ["u0", "u1", "u2"],
        "endpoint": "http://digits.ml.svc:8000",
        "requestsServed": 0,
        "firstServingTime": "2025-01-01T00:01:00Z",
    }
    st.update(extra)
    return st


SERVING_OBS = Observed(
    worker_pods=pods(),
    statefulset=True,
    serve=ServeDeployment(generation=1, ready=True),
    serve_pods=1,
    client_service=True,
    endpoint=EndpointDeployment(ready=True),
    endpoint_pods=1,
    relay_service=True,
    serve_status=ServeStatus(ready=True, requests_served=5, limit_reached=False, share_generation=1),
)


# ------------------------------------------------------------------ create -> Serving


def test_new_model_provisions_workers() -> None:
    plan = reconcile_wire(res(), {}, Observed(), NOW)
    assert kinds(plan) == BASE_KINDS
    assert plan.delete == []
    st = plan.status
    assert st["phase"] == "Provisioning"
    assert st["message"] == "0/3 workers ready"
    assert st["observedGeneration"] == 1
    assert st["shareGeneration"] == 0
    assert "endpoint" not in st
    assert cond(plan, "WorkersReady") == ("False", "Starting")
    assert cond(plan, "ModelShared") == ("False", "WaitingForWorkers")
    assert cond(plan, "Serving") == ("False", "NotShared")
    assert cond(plan, "Ready") == ("False", "Provisioning")
    assert [c["type"] for c in st["conditions"]] == ["WorkersReady", "ModelShared", "Serving", "Ready"]
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "Provisioning")]
    assert st["workers"] == [
        {
            "name": f"server{i}",
            "address": f"digits-worker-{i}.digits-workers.ml.svc:5440",
            "pod": f"digits-worker-{i}",
            "ready": False,
        }
        for i in range(3)
    ]


def test_missing_source_is_pending() -> None:
    obs = Observed(worker_pods=pods(), source_missing="waiting for ConfigMap 'digits-model' (model source)")
    plan = reconcile_wire(res(), {}, obs, NOW)
    assert plan.status["phase"] == "Pending"
    assert plan.status["message"] == "waiting for ConfigMap 'digits-model' (model source)"
    assert cond(plan, "ModelShared") == ("False", "SourceMissing")
    assert kinds(plan) == BASE_KINDS


def test_ready_workers_start_share_job() -> None:
    plan = reconcile_wire(res(), {"phase": "Provisioning"}, Observed(worker_pods=pods(), statefulset=True), NOW)
    assert kinds(plan) == [*BASE_KINDS, ("Job", "digits-share-g1"), *SERVING_KINDS]
    assert plan.apply[len(BASE_KINDS)] == builders.share_job(make_ctx(), 1)
    assert plan.status["phase"] == "Sharing"
    assert plan.status["sharing"] == {"generation": 1, "modelHash": HASH}
    assert cond(plan, "WorkersReady") == ("True", "AllReady")
    assert cond(plan, "ModelShared") == ("False", "Sharing")
    assert [e.reason for e in plan.events] == ["ShareStarted", "Sharing"]


def test_recreated_model_on_retained_volumes_shares_above_their_generations() -> None:
    """A re-created EncryptedModel starts with an empty status; its retained volumes still hold
    generations 2 and 3 of the deleted one (a worker that did not answer reports nothing). Sharing
    as generation 1 would overwrite nothing useful and be pruned as the oldest: it must be 4."""
    obs = Observed(worker_pods=pods(), statefulset=True, worker_generations={0: (3, 2), 1: (2,)})
    plan = reconcile_wire(res(), {}, obs, NOW)
    assert kinds(plan) == [*BASE_KINDS, ("Job", "digits-share-g4"), *SERVING_KINDS]
    assert plan.apply[len(BASE_KINDS)] == builders.share_job(make_ctx(), 4)
    assert plan.status["sharing"] == {"generation": 4, "modelHash": HASH}
    assert plan.events[0].message == "sharing the model as generation 4"
    # and once it succeeded, generation 4 is what the serve Deployment runs
    st = plan.status
    obs = dataclasses.replace(obs, jobs=(job(4, "succeeded"),), worker_generations={i: (4, 3, 2) for i in range(3)})
    plan = reconcile_wire(res(), st, obs, NOW)
    assert plan.status["shareGeneration"] == 4
    dep = next(m for m in plan.apply if m["kind"] == "Deployment" and m["metadata"]["name"] == "digits-serve")
    assert dep["spec"]["template"]["metadata"]["labels"]["tfe.dev/share-generation"] == "4"


def test_share_job_running_is_reapplied_idempotently() -> None:
    st = {"phase": "Sharing", "sharing": {"generation": 1, "modelHash": HASH}}
    obs = Observed(worker_pods=pods(), statefulset=True, jobs=(job(1),))
    plan = reconcile_wire(res(), st, obs, NOW)
    assert kinds(plan) == [*BASE_KINDS, ("Job", "digits-share-g1"), *SERVING_KINDS]
    assert plan.status["phase"] == "Sharing"
    assert plan.events == []


def test_share_success_deploys_serve() -> None:
    st = {"phase": "Sharing", "sharing": {"generation": 1, "modelHash": HASH}}
    obs = Observed(worker_pods=pods(), statefulset=True, jobs=(job(1, "succeeded"),))
    plan = reconcile_wire(res(), st, obs, NOW)
    assert kinds(plan) == [*BASE_KINDS, *SERVING_KINDS]
    s = plan.status
    assert s["shareGeneration"] == 1
    assert s["modelHash"] == HASH
    assert s["sharesStored"] is True
    assert s["shareWorkerUIDs"] == ["u0", "u1", "u2"]
    assert "sharing" not in s
    assert s["endpoint"] == "http://digits.ml.svc:8000"
    assert s["phase"] == "Provisioning"
    assert s["message"] == "serve deployment starting (generation 1)"
    assert cond(plan, "ModelShared") == ("True", "Shared")
    assert cond(plan, "Serving") == ("False", "Starting")
    assert plan.share_durations == [("succeeded", 30.0)]
    assert "ModelShared" in [e.reason for e in plan.events]


def serve_generation(plan: WirePlan) -> str:
    dep = next(m for m in plan.apply if m["kind"] == "Deployment" and m["metadata"]["name"] == "digits-serve")
    return str(dep["spec"]["template"]["metadata"]["labels"]["tfe.dev/share-generation"])


EARLY = ("serve deployment starting beside the share Job; it serves generation 1 once the Job succeeded")


def test_first_share_starts_serve_beside_the_share_job() -> None:
    """A model's first share: the serve Deployment and the endpoint start with the share Job, on
    the generation it writes (their coordinator waits for it), but nothing is Serving, Ready,
    ModelShared or advertised as an endpoint until the Job succeeded and the serve pod is ready."""
    ctx = make_ctx()
    obs = Observed(worker_pods=pods(), statefulset=True)
    first = reconcile_wire(res(), {"phase": "Provisioning"}, obs, NOW)
    assert first.apply == [*builders.base_objects(ctx), builders.share_job(ctx, 1),
                           *builders.serving_objects(ctx, 1, 0)]
    assert first.delete == []
    assert first.share_durations == [] and first.time_to_serving is None
    assert [(e.reason, e.message) for e in first.events] == [
        ("ShareStarted", "sharing the model as generation 1"), ("Sharing", "share job digits-share-g1 running")]
    st = first.status
    assert (st["phase"], st["message"]) == ("Sharing", "share job digits-share-g1 running")
    assert st["sharing"] == {"generation": 1, "modelHash": HASH}
    assert "endpoint" not in st and st["shareGeneration"] == 0 and "sharesStored" not in st
    assert [(c["type"], c["status"], c["reason"], c["message"]) for c in st["conditions"]] == [
        ("WorkersReady", "True", "AllReady", "3/3 workers ready"),
        ("ModelShared", "False", "Sharing", "share job digits-share-g1 running"),
        ("Serving", "False", "Starting", EARLY),
        ("Ready", "False", "Sharing", "share job digits-share-g1 running"),
    ]

    # The Job runs; the serve pod is up and even (hypothetically) ready: still not Serving.
    ready_serve = dataclasses.replace(
        obs, jobs=(job(1),), serve=ServeDeployment(generation=1, ready=True), serve_pods=1, client_service=True,
        endpoint=EndpointDeployment(ready=True), endpoint_pods=1, relay_service=True,
        serve_status=ServeStatus(ready=True, requests_served=0, limit_reached=False, share_generation=1))
    for serve_obs in (dataclasses.replace(obs, jobs=(job(1),), serve=ServeDeployment(generation=1, ready=False),
                                          serve_pods=1), ready_serve):
        running = reconcile_wire(res(), st, serve_obs, NOW)
        assert running.apply == first.apply
        assert running.delete == [] and running.events == []
        assert running.status == st

    # The Job succeeded and the serve pod is ready: Serving in the same round, same slot, no roll.
    done = dataclasses.replace(ready_serve, jobs=(job(1, "succeeded"),))
    plan = reconcile_wire(res(), st, done, NOW)
    assert plan.apply == [*builders.base_objects(ctx), *builders.serving_objects(ctx, 1, 0)]
    assert plan.delete == []
    assert [e.reason for e in plan.events] == ["ModelShared", "Serving"]
    assert plan.time_to_serving == 90.0 and plan.share_durations == [("succeeded", 30.0)]
    s = plan.status
    assert (s["phase"], s["message"]) == ("Serving", "generation 1 at http://digits.ml.svc:8000")
    assert (s["shareGeneration"], s["sharesStored"], s["endpoint"]) == (1, True, "http://digits.ml.svc:8000")
    assert "sharing" not in s
    assert cond(plan, "ModelShared") == ("True", "Shared")
    assert cond(plan, "Serving") == ("True", "Serving")
    assert cond(plan, "Ready") == ("True", "Serving")

    # The Job succeeded but the coordinator is still loading: shared, not yet Serving.
    loading = dataclasses.replace(done, serve=ServeDeployment(generation=1, ready=False),
                                  serve_status=ServeStatus(False, 0, False, None))
    plan = reconcile_wire(res(), st, loading, NOW)
    assert plan.apply == [*builders.base_objects(ctx), *builders.serving_objects(ctx, 1, 0)]
    assert plan.status["phase"] == "Provisioning"
    assert plan.status["message"] == "serve deployment starting (generation 1)"
    assert cond(plan, "ModelShared") == ("True", "Shared")
    assert cond(plan, "Ready") == ("False", "Provisioning")


def test_first_share_failing_removes_the_early_serve_deployment() -> None:
    st = reconcile_wire(res(), {"phase": "Provisioning"}, Observed(worker_pods=pods(), statefulset=True), NOW).status
    obs = Observed(worker_pods=pods(), statefulset=True, serve=ServeDeployment(generation=1, ready=False), serve_pods=1,
                   endpoint=EndpointDeployment(ready=False), endpoint_pods=1, client_service=True, relay_service=True,
                   jobs=(job(1, "failed", exit_code=2, message="unsupported layer 'x'"),))
    plan = reconcile_wire(res(), st, obs, NOW)
    assert plan.apply == builders.base_objects(make_ctx())
    assert plan.delete == [Ref("apps/v1", "Deployment", "digits-serve"),
                           Ref("apps/v1", "Deployment", "digits-endpoint")]
    assert (plan.status["phase"], plan.status["message"]) == ("Failed", "unsupported layer 'x'")
    assert cond(plan, "Serving") == ("False", "NotShared")
    assert "endpoint" not in plan.status


def test_resharing_after_lost_shares_keeps_the_serial_order() -> None:
    """Only a model's first share starts the serve pods early: sharing again after the shares were
    lost (generation 1 was shared before) creates the serve Deployment once the Job succeeded."""
    st = {"phase": "Sharing", "shareGeneration": 1, "modelHash": HASH, "sharesStored": False,
          "sharing": {"generation": 2, "modelHash": HASH}}
    plan = reconcile_wire(res(), st, Observed(worker_pods=pods(), statefulset=True, jobs=(job(2),)), NOW)
    assert plan.apply == [*builders.base_objects(make_ctx()), builders.share_job(make_ctx(), 2)]
    assert cond(plan, "Serving") == ("False", "NotShared")


def test_serve_ready_is_serving() -> None:
    st = serving_status(phase="Provisioning", firstServingTime=None)
    del st["firstServingTime"]
    plan = reconcile_wire(res(), st, SERVING_OBS, NOW)
    s = plan.status
    assert s["phase"] == "Serving"
    assert s["message"] == "generation 1 at http://digits.ml.svc:8000"
    assert s["requestsServed"] == 5
    assert s["firstServingTime"] == "2025-01-01T00:01:30Z"
    assert plan.time_to_serving == 90.0
    assert cond(plan, "Ready") == ("True", "Serving")
    assert cond(plan, "Serving") == ("True", "Serving")
    assert [e.reason for e in plan.events] == ["Serving"]


def test_steady_state_is_quiet_and_stable() -> None:
    first = reconcile_wire(res(), serving_status(), SERVING_OBS, NOW)
    second = reconcile_wire(res(), first.status, SERVING_OBS, NOW + timedelta(seconds=5))
    assert second.status == first.status
    assert second.events == []
    assert second.time_to_serving is None
    assert second.delete == []
    assert kinds(second) == [*BASE_KINDS, *SERVING_KINDS]


def test_serving_waits_for_the_endpoint() -> None:
    """Clients reach the coordinator through the endpoint pods only: a ready coordinator
    behind an endpoint Deployment that is not rolled out (or missing) is not Serving yet."""
    for endpoint in (None, EndpointDeployment(ready=False)):
        obs = dataclasses.replace(SERVING_OBS, endpoint=endpoint)
        plan = reconcile_wire(res(), serving_status(phase="Provisioning"), obs, NOW)
        assert plan.status["phase"] == "Provisioning"
        assert plan.status["message"] == "endpoint deployment starting (generation 1)"
        assert cond(plan, "Serving") == ("False", "Starting")
        assert kinds(plan) == [*BASE_KINDS, *SERVING_KINDS]


def test_external_workers_serve_without_an_endpoint() -> None:
    st = serving_status(modelHash=make_ctx(EXTERNAL).spec.model_hash)
    obs = dataclasses.replace(SERVING_OBS, worker_pods=(), statefulset=False, endpoint=None, relay_service=False)
    plan = reconcile_wire(res(EXTERNAL), st, obs, NOW)
    assert plan.status["phase"] == "Serving"
    assert kinds(plan) == [("ConfigMap", "digits-tfe-config"), ("Deployment", "digits-serve"), ("Service", "digits")]


def test_serve_of_wrong_generation_is_not_serving() -> None:
    obs = dataclasses.replace(SERVING_OBS, serve=ServeDeployment(generation=1, ready=True))
    plan = reconcile_wire(res(), serving_status(gen=2), obs, NOW)
    assert plan.status["phase"] == "Provisioning"
    assert cond(plan, "Serving") == ("False", "Starting")


# ------------------------------------------------------------------ re-share


def test_model_change_reshares_while_old_generation_serves() -> None:
    new_spec = {"model": {"configMap": {"name": "digits-model-v2", "key": "model.h5"}}}
    plan = reconcile_wire(res(new_spec, generation=2), serving_status(), SERVING_OBS, NOW)
    # The old generation keeps serving: the Deployment stays at generation 1.
    dep = next(m for m in plan.apply if m["kind"] == "Deployment")
    assert dep["spec"]["template"]["metadata"]["labels"]["tfe.dev/share-generation"] == "1"
    job_m = next(m for m in plan.apply if m["kind"] == "Job")
    assert job_m["metadata"]["name"] == "digits-share-g2"
    assert plan.status["sharing"]["generation"] == 2
    assert plan.status["phase"] == "Sharing"
    assert plan.status["endpoint"] == "http://digits.ml.svc:8000"
    assert cond(plan, "Serving") == ("True", "Serving")
    assert cond(plan, "ModelShared") == ("False", "Sharing")


def test_reshare_success_rolls_serve_and_drops_old_jobs() -> None:
    new_spec = {"model": {"configMap": {"name": "digits-model-v2", "key": "model.h5"}}}
    h2 = make_ctx(new_spec).spec.model_hash
    st = serving_status(sharing={"generation": 2, "modelHash": h2})
    obs = dataclasses.replace(SERVING_OBS, jobs=(job(1, "succeeded"), job(2, "succeeded", spec=new_spec)))
    plan = reconcile_wire(res(new_spec, generation=2), st, obs, NOW)
    dep = next(m for m in plan.apply if m["kind"] == "Deployment")
    assert dep["spec"]["template"]["metadata"]["labels"]["tfe.dev/share-generation"] == "2"
    # the old generation's Job goes, and its mesh identity with it
    assert plan.delete == [Ref("batch/v1", "Job", "digits-share-g1"), Ref("v1", "Secret", "digits-mesh-share-g1")]
    assert plan.status["shareGeneration"] == 2
    # The serve pod still reports generation 1 until the new one rolled out.
    assert plan.status["phase"] == "Provisioning"


def test_model_changed_during_share_abandons_that_generation() -> None:
    spec3 = {"model": {"configMap": {"name": "v3", "key": "model.h5"}}}
    st = {"phase": "Sharing", "sharing": {"generation": 1, "modelHash": HASH}}
    obs = Observed(worker_pods=pods(), statefulset=True, jobs=(job(1),))
    plan = reconcile_wire(res(spec3, generation=2), st, obs, NOW)
    assert Ref("batch/v1", "Job", "digits-share-g1") in plan.delete
    assert plan.status["sharing"]["generation"] == 2
    assert kinds(plan) == [*BASE_KINDS, ("Job", "digits-share-g2"), *SERVING_KINDS]
    assert serve_generation(plan) == "2"  # the serve pods started early move to the new generation


def test_restart_adopts_existing_job_instead_of_duplicating() -> None:
    """Operator died after creating the Job, before writing status.sharing."""
    obs = Observed(worker_pods=pods(), statefulset=True, jobs=(job(1),))
    plan = reconcile_wire(res(), {"phase": "Provisioning"}, obs, NOW)
    assert plan.status["sharing"] == {"generation": 1, "modelHash": HASH}
    assert [m["metadata"]["name"] for m in plan.apply if m["kind"] == "Job"] == ["digits-share-g1"]
    assert "ShareStarted" not in [e.reason for e in plan.events]


def test_restart_after_success_without_status() -> None:
    obs = Observed(worker_pods=pods(), statefulset=True, jobs=(job(1, "succeeded"),))
    plan = reconcile_wire(res(), {"phase": "Sharing"}, obs, NOW)
    # Adoption only considers non-failed jobs of this model: a succeeded one is adopted.
    assert plan.status["shareGeneration"] == 1
    assert [m["kind"] for m in plan.apply].count("Job") == 0


# ------------------------------------------------------------------ failures


def test_invalid_model_fails_with_the_layer_message() -> None:
    msg = "unsupported layer 'lstm' (LSTM); supported: Dense, Conv2D"
    st = {"phase": "Sharing", "sharing": {"generation": 1, "modelHash": HASH}}
    obs = Observed(worker_pods=pods(), statefulset=True, jobs=(job(1, "failed", exit_code=2, message=msg),))
    plan = reconcile_wire(res(), st, obs, NOW)
    s = plan.status
    assert s["phase"] == "Failed"
    assert s["message"] == msg
    assert s["failure"] == {"generation": 1, "reason": "InvalidModel", "message": msg}
    assert "sharing" not in s
    assert cond(plan, "ModelShared") == ("False", "InvalidModel")
    assert cond(plan, "Ready") == ("False", "Failed")
    assert ("Warning", "Failed", msg) in [(e.type, e.reason, e.message) for e in plan.events]
    assert plan.share_durations == [("failed", 30.0)]
    # Failed stays Failed (no new Job) until the spec changes.
    again = reconcile_wire(res(), s, obs, NOW)
    assert again.status["phase"] == "Failed"
    assert "Job" not in [m["kind"] for m in again.apply]
    assert again.events == []
    # A spec change retries with a fresh generation.
    retry = reconcile_wire(res(generation=2), s, obs, NOW)
    assert "failure" not in retry.status
    assert retry.status["sharing"]["generation"] == 2
    assert retry.status["phase"] == "Sharing"


def test_transient_failure_exhausted_names_exit_code() -> None:
    st = {"phase": "Sharing", "sharing": {"generation": 1, "modelHash": HASH}}
    obs = Observed(
        worker_pods=pods(),
        jobs=(job(1, "failed", exit_code=1, message="connection refused"),),
    )
    plan = reconcile_wire(res(), st, obs, NOW)
    assert plan.status["failure"]["reason"] == "ShareJobFailed"
    assert plan.status["message"] == "share job digits-share-g1 failed (exit 1): connection refused"


def test_reshare_failure_keeps_old_generation_serving() -> None:
    spec2 = {"model": {"configMap": {"name": "bad", "key": "model.h5"}}}
    st = serving_status(sharing={"generation": 2, "modelHash": make_ctx(spec2).spec.model_hash})
    obs = dataclasses.replace(
        SERVING_OBS, jobs=(job(2, "failed", spec=spec2, exit_code=2, message="unsupported layer 'x'"),)
    )
    plan = reconcile_wire(res(spec2, generation=2), st, obs, NOW)
    assert plan.status["phase"] == "Failed"
    assert plan.status["message"] == "unsupported layer 'x' (generation 1 keeps serving)"
    assert cond(plan, "Serving") == ("True", "Serving")
    assert "Deployment" in [m["kind"] for m in plan.apply]


def test_crashing_worker_shows_in_workers_ready() -> None:
    crash = (
        WorkerPod(0, "digits-worker-0", "u0", True),
        WorkerPod(
            1, "digits-worker-1", "u1", False, problem="CrashLoopBackOff",
            detail="back-off 40s; last exit 1: ImportError: no tf_encrypted", restarts=4,
        ),
        WorkerPod(2, "digits-worker-2", "u2", True),
    )  # fmt: skip
    plan = reconcile_wire(res(), {"phase": "Provisioning"}, Observed(worker_pods=crash), NOW)
    c = condition(plan.typed, "WorkersReady")
    assert c is not None
    assert (c.status, c.reason) == ("False", "CrashLoopBackOff")
    assert c.message == (
        "2/3 workers ready; digits-worker-1: CrashLoopBackOff: back-off 40s; "
        "last exit 1: ImportError: no tf_encrypted (restarts: 4)"
    )
    assert ("Warning", "WorkerNotReady") in [(e.type, e.reason) for e in plan.events]
    # Not repeated while the reason stays the same.
    again = reconcile_wire(res(), plan.status, Observed(worker_pods=crash), NOW)
    assert "WorkerNotReady" not in [e.reason for e in again.events]


def test_deleted_worker_pod_with_pvc_keeps_shares() -> None:
    obs = dataclasses.replace(SERVING_OBS, worker_pods=pods(ready=2, uids=("u0", "u1", "NEW")))
    plan = reconcile_wire(res(), serving_status(), obs, NOW)
    assert plan.status["sharesStored"] is True
    assert "Job" not in [m["kind"] for m in plan.apply]
    assert plan.status["phase"] == "Provisioning"  # until the worker is ready again


MEMORY = {**BASE_SPEC, "workers": {"storage": {"medium": "Memory"}}}


def test_deleted_worker_pod_with_memory_storage_reshares() -> None:
    obs = dataclasses.replace(SERVING_OBS, worker_pods=pods(uids=("u0", "u1", "NEW")))
    st = serving_status(modelHash=make_ctx(MEMORY).spec.model_hash)
    plan = reconcile_wire(res(MEMORY), st, obs, NOW)
    assert plan.status["sharesStored"] is False
    assert plan.status["sharing"]["generation"] == 2
    assert ("Warning", "SharesLost") in [(e.type, e.reason) for e in plan.events]
    assert Ref("apps/v1", "Deployment", "digits-serve") in plan.delete
    assert Ref("apps/v1", "Deployment", "digits-endpoint") in plan.delete
    assert "endpoint" not in plan.status


# ------------------------------------------------------------------ shutdown


def test_shutdown_removes_workers_and_coordinator_keeping_shares() -> None:
    spec = {**BASE_SPEC, "shutdown": True}
    obs = dataclasses.replace(SERVING_OBS, jobs=(job(1, "succeeded"),), pvcs=("state-digits-worker-0",))
    plan = reconcile_wire(res(spec, generation=2), serving_status(), obs, NOW)
    assert plan.apply == []
    assert plan.delete == [
        Ref("apps/v1", "Deployment", "digits-endpoint"),
        Ref("apps/v1", "Deployment", "digits-serve"),
        Ref("v1", "Service", "digits"),
        Ref("v1", "Service", "digits-relay"),
        Ref("batch/v1", "Job", "digits-share-g1"),
        Ref("v1", "Secret", "digits-mesh-share-g1"),
        Ref("apps/v1", "StatefulSet", "digits-worker"),
    ]
    s = plan.status
    assert s["phase"] == "ShuttingDown"
    assert s["sharesStored"] is True
    assert "endpoint" not in s
    assert cond(plan, "ModelShared") == ("True", "Stored")
    assert cond(plan, "Serving") == ("False", "ShutdownRequested")
    gone = reconcile_wire(res(spec, generation=2), s, Observed(), NOW)
    assert gone.delete == []
    assert gone.status["phase"] == "Stopped"
    assert gone.status["message"] == "shutdown requested; workers and coordinator removed (shares kept)"
    assert [e.reason for e in gone.events] == ["Stopped"]
    # an endpoint pod still draining: not Stopped yet
    draining = reconcile_wire(res(spec, generation=2), s, Observed(endpoint_pods=1), NOW)
    assert draining.status["phase"] == "ShuttingDown"
    assert draining.delete == [Ref("apps/v1", "Deployment", "digits-endpoint")]


def test_shutdown_with_delete_policy_deletes_volumes() -> None:
    spec = {**BASE_SPEC, "shutdown": True, "workers": {"storage": {"retainPolicy": "Delete"}}}
    obs = Observed(pvcs=("state-digits-worker-0", "state-digits-worker-1"))
    st = serving_status(modelHash=make_ctx(spec).spec.model_hash)
    plan = reconcile_wire(res(spec), st, obs, NOW)
    assert plan.delete == [
        Ref("v1", "PersistentVolumeClaim", "state-digits-worker-0"),
        Ref("v1", "PersistentVolumeClaim", "state-digits-worker-1"),
    ]
    assert plan.status["sharesStored"] is False
    assert plan.status["phase"] == "Stopped"
    assert cond(plan, "ModelShared") == ("False", "SharesDeleted")


def test_restart_from_stored_shares_skips_share_job() -> None:
    stopped = serving_status(phase="Stopped")
    del stopped["endpoint"]
    obs = Observed(worker_pods=pods(uids=("n0", "n1", "n2")), statefulset=True)
    plan = reconcile_wire(res(generation=3), stopped, obs, NOW)
    assert "Job" not in [m["kind"] for m in plan.apply]
    assert kinds(plan) == [*BASE_KINDS, *SERVING_KINDS]
    assert plan.status["phase"] == "Provisioning"
    assert plan.status["shareGeneration"] == 1


def test_restart_after_memory_shutdown_reshares() -> None:
    stopped = {
        "phase": "Stopped",
        "shareGeneration": 1,
        "modelHash": make_ctx(MEMORY).spec.model_hash,
        "sharesStored": False,
    }
    obs = Observed(worker_pods=pods(uids=("n0", "n1", "n2")), statefulset=True)
    plan = reconcile_wire(res(MEMORY, generation=3), stopped, obs, NOW)
    assert plan.status["sharing"]["generation"] == 2
    assert plan.status["phase"] == "Sharing"


def test_max_requests_reached_stops_until_spec_changes() -> None:
    spec = {**BASE_SPEC, "serving": {"maxRequests": 5}}
    obs = dataclasses.replace(
        SERVING_OBS,
        serve_status=ServeStatus(ready=True, requests_served=5, limit_reached=True, share_generation=1),
    )
    st = serving_status(modelHash=make_ctx(spec).spec.model_hash)
    plan = reconcile_wire(res(spec), st, obs, NOW)
    assert plan.status["limitReachedGeneration"] == 1
    assert plan.status["requestsServed"] == 5
    assert plan.status["phase"] == "ShuttingDown"
    assert Ref("apps/v1", "StatefulSet", "digits-worker") in plan.delete
    assert cond(plan, "Serving") == ("False", "MaxRequestsReached")
    assert "MaxRequestsReached" in [e.reason for e in plan.events]
    stopped = reconcile_wire(res(spec), plan.status, Observed(), NOW)
    assert stopped.status["phase"] == "Stopped"
    assert stopped.status["message"].startswith("request limit reached")
    # Any spec change (e.g. a higher limit) brings it back, from the stored shares.
    spec2 = {**BASE_SPEC, "serving": {"maxRequests": 50}}
    back = reconcile_wire(res(spec2, generation=2), stopped.status, Observed(), NOW)
    assert "limitReachedGeneration" not in back.status
    assert back.status["requestsServed"] == 0
    assert back.status["phase"] == "Provisioning"


# ------------------------------------------------------------------ external workers

EXTERNAL = {
    **BASE_SPEC,
    "workers": {"external": [{"host": f"w{i}.example", "port": 4440} for i in range(3)]},
}


def test_external_workers_share_without_spawning() -> None:
    plan = reconcile_wire(res(EXTERNAL), {}, Observed(public_keys={0: "k0"}), NOW)
    assert kinds(plan) == [("ConfigMap", "digits-tfe-config"), ("Job", "digits-share-g1"),
                           ("Deployment", "digits-serve"), ("Service", "digits")]
    assert cond(plan, "WorkersReady") == ("True", "External")
    assert plan.status["workers"][0] == {
        "name": "server0",
        "address": "w0.example:4440",
        "ready": True,
        "publicKey": "k0",
    }


def test_external_shutdown_removes_only_coordinator() -> None:
    spec = {**EXTERNAL, "shutdown": True}
    obs = Observed(serve=ServeDeployment(1, True), serve_pods=1, client_service=True)
    st = serving_status(modelHash=make_ctx(spec).spec.model_hash)
    plan = reconcile_wire(res(spec), st, obs, NOW)
    assert plan.delete == [
        Ref("apps/v1", "Deployment", "digits-serve"),
        Ref("v1", "Service", "digits"),
    ]
    assert plan.status["sharesStored"] is True


# ------------------------------------------------------------------ public keys


def test_public_keys_read_every_round_and_a_new_one_noticed() -> None:
    st = serving_status()
    first = reconcile_wire(res(), st, dataclasses.replace(SERVING_OBS, public_keys={0: "a", 1: "b", 2: "c"}), NOW)
    assert [w["publicKey"] for w in first.status["workers"]] == ["a", "b", "c"]
    # every ready worker, every round: a replaced volume changes the key without a new pod
    assert keys_to_fetch(res(), first.typed, SERVING_OBS) == [0, 1, 2]
    assert keys_to_fetch(res(), first.typed, dataclasses.replace(SERVING_OBS, worker_pods=pods(ready=2))) == [0, 1]
    # a replaced pod, not ready yet: the last key read stays until the new pod's key is read
    gone = dataclasses.replace(SERVING_OBS, worker_pods=pods(ready=2)[:2])
    second = reconcile_wire(res(), first.status, gone, NOW)
    assert second.status["workers"][2]["publicKey"] == "c"
    new_pod = dataclasses.replace(SERVING_OBS, worker_pods=pods(uids=("u0", "u1", "NEW")), public_keys={2: "C2"})
    third = reconcile_wire(res(), second.status, new_pod, NOW)
    assert [w["publicKey"] for w in third.status["workers"]] == ["a", "b", "C2"]
    assert [e.reason for e in third.events if e.reason == "WorkerKeyChanged"] == ["WorkerKeyChanged"]


@pytest.mark.parametrize("phase", ["Serving", "Stopped"])
def test_observed_generation_always_written(phase: str) -> None:
    plan = reconcile_wire(res(generation=7), serving_status(phase=phase), SERVING_OBS, NOW)
    assert plan.status["observedGeneration"] == 7
    assert all(c["observedGeneration"] == 7 for c in plan.status["conditions"])


# ------------------------------------------------------------------ the mesh


MESH_STATUS = {
    "caNotAfter": "2026-01-01T00:00:00Z",
    "notAfter": "2025-04-01T00:00:00Z",
    "rotation": "",
    "caSHA256": "ab" * 32,
}


def test_mesh_status_comes_from_the_pki_plan() -> None:
    r = dataclasses.replace(res(), mesh=MeshStatus.from_dict(MESH_STATUS))
    plan = reconcile_wire(r, serving_status(mesh={"caNotAfter": "old"}), SERVING_OBS, NOW)
    assert plan.status["mesh"] == {**MESH_STATUS, "refused": []}
    # no mesh (external workers): no stale mesh status either
    plan = reconcile_wire(res(), serving_status(mesh=MESH_STATUS), SERVING_OBS, NOW)
    assert "mesh" not in plan.status


def test_external_workers_keep_share_secrets_out_of_deletes() -> None:
    """External workers have no mesh: deleting their Job deletes no identity Secret."""
    spec = {**EXTERNAL, "shutdown": True}
    obs = Observed(jobs=(job(1, "succeeded", spec=spec),))
    plan = reconcile_wire(res(spec), serving_status(modelHash=make_ctx(spec).spec.model_hash), obs, NOW)
    assert plan.delete == [Ref("batch/v1", "Job", "digits-share-g1")]


# ------------------------------------------------------------------ the serve pod's mesh slot


def _slot_of(plan: Any) -> int:
    dep = next(m for m in plan.apply if m["kind"] == "Deployment")
    return {"coordinator": 0, "coordinator-1": 1}[dep["spec"]["template"]["spec"]["hostname"]]


def test_serve_slot_kept_while_the_template_is_unchanged_and_flipped_when_it_changes() -> None:
    from tfe_operator import builders
    from tfe_operator.observe import ServePod

    h1 = builders.serve_template_hash(make_ctx(), 1)
    # First deployment: nothing runs, slot 0.
    assert _slot_of(reconcile_wire(res(), serving_status(), dataclasses.replace(SERVING_OBS, serve=None), NOW)) == 0
    # Running with the same template in slot 1: stays in slot 1 (no needless rollout).
    live = ServeDeployment(generation=1, ready=True, slot=1, template_hash=h1)
    obs = dataclasses.replace(SERVING_OBS, serve=live, serve_pod_slots=(ServePod(1, h1, True),))
    assert _slot_of(reconcile_wire(res(), serving_status(), obs, NOW)) == 1
    # A spec change (same share generation) changes the template: the other slot, so the new
    # coordinator does not share a name with the old one while both run.
    spec = {**BASE_SPEC, "serving": {"maxRequests": 50}}
    plan = reconcile_wire(res(spec, generation=2), serving_status(), obs, NOW)
    assert _slot_of(plan) == 0
    # ...and once applied, it stays there while the old pod still runs.
    h2 = builders.serve_template_hash(make_ctx(spec), 1)
    rolling = dataclasses.replace(
        obs,
        serve=ServeDeployment(generation=1, ready=False, slot=0, template_hash=h2),
        serve_pod_slots=(ServePod(1, h1, True), ServePod(0, h2, False)),
    )
    assert _slot_of(reconcile_wire(res(spec, generation=2), serving_status(), rolling, NOW)) == 0
    # A third template while the second has not come up: the slot the ready (old) pod does
    # not hold, i.e. the one the Deployment is about to scale down.
    spec3 = {**BASE_SPEC, "serving": {"maxRequests": 60}}
    assert _slot_of(reconcile_wire(res(spec3, generation=3), serving_status(), rolling, NOW)) == 0


def _refusal(party: str, identity: str, reason: str, count: int, ago: timedelta) -> Refusal:
    return Refusal(party, "grpc", identity, reason, count, NOW - ago)


def test_refused_identities_are_in_status_with_one_event_per_change() -> None:
    expired = _refusal("server2", "server1", "handshake: certificate has expired (not after X)", 2,
                       timedelta(seconds=5))
    denied = _refusal("server0", "server2", "call /tensorflow.eager.EagerService/CreateContext: no rule admits it",
                      1, timedelta(minutes=3))
    stale = _refusal("server1", "-", "handshake: client presented no certificate", 9, timedelta(hours=2))
    obs = dataclasses.replace(SERVING_OBS, refusals=(denied, stale, expired))
    r = dataclasses.replace(res(), mesh=MeshStatus.from_dict(MESH_STATUS))
    plan = reconcile_wire(r, serving_status(mesh=MESH_STATUS), obs, NOW)
    assert plan.status["mesh"]["refused"] == [
        {"party": "server2", "identity": "server1", "listener": "grpc",
         "reason": "handshake: certificate has expired (not after X)", "count": 2,
         "lastSeen": (NOW - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")},
        {"party": "server0", "identity": "server2", "listener": "grpc",
         "reason": "call /tensorflow.eager.EagerService/CreateContext: no rule admits it", "count": 1,
         "lastSeen": (NOW - timedelta(minutes=3)).strftime("%Y-%m-%dT%H:%M:%SZ")},
    ]  # newest first; older than an hour left out
    warnings = [e for e in plan.events if e.reason == "MeshRefused"]
    assert [e.message for e in warnings] == [
        "server2 refused server1 (grpc): handshake: certificate has expired (not after X)",
        "server0 refused server2 (grpc): call /tensorflow.eager.EagerService/CreateContext: no rule admits it",
    ]
    assert all(e.type == "Warning" for e in warnings)
    # the next reconcile with nothing new posts nothing; a count that grew posts again
    again = reconcile_wire(r, plan.status, obs, NOW)
    assert [e for e in again.events if e.reason == "MeshRefused"] == []
    more = dataclasses.replace(obs, refusals=(denied, dataclasses.replace(expired, count=3)))
    third = reconcile_wire(r, plan.status, more, NOW)
    assert [e.message.split(" (")[0] for e in third.events if e.reason == "MeshRefused"] == ["server2 refused server1"]


def test_refusals_are_capped_in_status() -> None:
    many = tuple(_refusal("server0", f"id{i}", "r", 1, timedelta(seconds=i)) for i in range(25))
    r = dataclasses.replace(res(), mesh=MeshStatus.from_dict(MESH_STATUS))
    plan = reconcile_wire(r, serving_status(), dataclasses.replace(SERVING_OBS, refusals=many), NOW)
    assert [x["identity"] for x in plan.status["mesh"]["refused"]] == [f"id{i}" for i in range(10)]


# ------------------------------------------------------------------ the typed status (issue 13)


def test_reconcile_takes_and_returns_the_typed_status() -> None:
    """reconcile works on the frozen Status whole: the one it is given stays as it was, the one
    it returns is a Status that reads back unchanged from what lands in the object."""
    given = Status.from_dict(serving_status())
    plan = reconcile(res(), given, SERVING_OBS, NOW)
    assert given == Status.from_dict(serving_status())
    assert isinstance(plan.status, Status)
    assert Status.from_dict(plan.status.to_dict()) == plan.status
    assert (plan.status.phase, plan.status.requests_served) == ("Serving", 5)


def test_driving_the_share_job_is_one_typed_step() -> None:
    """_share says what it did in its result (no status key read back by the caller)."""
    sharing = Status(phase="Sharing", sharing=Sharing(generation=1, model_hash=HASH))
    obs = Observed(worker_pods=pods(), jobs=(job(1, "failed", exit_code=2, message="Lambda layers are refused"),))
    step = reconcile_mod._share(res(), sharing, obs, reconcile_mod.Plan(), True)
    assert step.failure == Failure(generation=1, reason="InvalidModel", message="Lambda layers are refused")
    assert (step.status.failure, step.status.sharing) == (step.failure, None)
    assert (step.reason, step.message, step.shared) == ("InvalidModel", "Lambda layers are refused", None)
    obs = dataclasses.replace(obs, jobs=(job(1, "succeeded"),))
    done = reconcile_mod._share(res(), sharing, obs, reconcile_mod.Plan(), True)
    assert (done.reason, done.shared, done.failure) == ("Shared", 1, None)
    assert (done.status.share_generation, done.status.shares_stored, done.status.sharing) == (1, True, None)
    assert done.status.share_worker_uids == ("u0", "u1", "u2")
