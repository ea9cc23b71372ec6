"""Parsing observed API objects into typed observations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tfe_operator import observe


def pod(name: str, ready: bool = True, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}"},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            **status,
        },
    }


def test_ready_worker() -> None:
    assert observe.worker_pod(pod("m-worker-2")) == observe.WorkerPod(
        index=2, name="m-worker-2", uid="uid-m-worker-2", ready=True
    )


def test_crashloop_worker_reason_and_last_message() -> None:
    p = pod(
        "m-worker-1",
        ready=False,
        containerStatuses=[
            {
                "restartCount": 5,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s"}},
                "lastState": {
                    "terminated": {
                        "exitCode": 1,
                        "message": "Traceback...\nImportError: no module named tf_encrypted\n",
                    }
                },
            }
        ],
    )
    assert observe.worker_pod(p) == observe.WorkerPod(
        index=1,
        name="m-worker-1",
        uid="uid-m-worker-1",
        ready=False,
        problem="CrashLoopBackOff",
        detail="back-off 1m20s; last exit 1: ImportError: no module named tf_encrypted",
        restarts=5,
    )


def test_crashlooping_init_container_is_named() -> None:
    """mesh-init (iptables) or the guard failing keeps the player from starting: say which."""
    p = pod(
        "m-worker-0",
        ready=False,
        initContainerStatuses=[
            {
                "name": "mesh-init",
                "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {"terminated": {"exitCode": 127, "message": "sh: 1: iptables-nft: not found\n"}},
            }
        ],
        containerStatuses=[{"name": "player", "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}],
    )
    assert observe.worker_pod(p) == observe.WorkerPod(
        index=0,
        name="m-worker-0",
        uid="uid-m-worker-0",
        ready=False,
        problem="CrashLoopBackOff",
        detail="init container mesh-init; back-off 40s; last exit 127: sh: 1: iptables-nft: not found",
        restarts=3,
    )


def test_serve_pods_and_deployment_slots() -> None:
    dep = {
        "metadata": {"generation": 2},
        "spec": {
            "replicas": 1,
            "template": {
                "metadata": {
                    "labels": {"tfe.dev/share-generation": "3"},
                    "annotations": {"tfe.dev/serve-hash": "h2"},
                },
                "spec": {"hostname": "coordinator-1"},
            },
        },
        "status": {},
    }
    assert observe.serve_deployment(dep) == observe.ServeDeployment(
        generation=3, ready=False, slot=1, template_hash="h2"
    )
    pods = [
        {
            "metadata": {"annotations": {"tfe.dev/serve-hash": "h1"}},
            "spec": {"hostname": "coordinator"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        },
        {"metadata": {"annotations": {"tfe.dev/serve-hash": "h2"}}, "spec": {"hostname": "coordinator-1"}},
        {"metadata": {"deletionTimestamp": "x"}, "spec": {"hostname": "coordinator"}},
        {"metadata": {}, "spec": {}},
    ]
    assert observe.serve_pods(pods) == (
        observe.ServePod(0, "h1", True),
        observe.ServePod(1, "h2", False),
        observe.ServePod(None, "", False),
    )


def test_unschedulable_worker() -> None:
    p = pod(
        "m-worker-0",
        ready=False,
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 node(s) didn't match pod anti-affinity rules.",
            }
        ],
    )
    w = observe.worker_pod(p)
    assert w is not None
    assert w.problem == "Unschedulable"
    assert "anti-affinity" in w.detail


def test_terminating_and_foreign_pods_are_ignored() -> None:
    terminating = pod("m-worker-0")
    terminating["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert observe.worker_pod(terminating) is None
    assert observe.worker_pod(pod("m-worker-7")) is None
    assert observe.worker_pod(pod("nonsense")) is None
    pods = observe.worker_pods([pod("m-worker-2"), pod("m-worker-0"), terminating])
    assert [p.index for p in pods] == [2, 0][::-1]


def job(conditions: list[dict[str, Any]], **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "m-share-g3",
            "labels": {"tfe.dev/share-generation": "3"},
            "annotations": {"tfe.dev/model-hash": "h"},
        },
        "status": {"conditions": conditions, "startTime": "2025-01-01T00:00:00Z", **status},
    }


def test_job_active_and_succeeded() -> None:
    active = observe.job_state(job([]))
    assert active == observe.JobState(
        name="m-share-g3",
        generation=3,
        model_hash="h",
        phase="active",
        start=datetime(2025, 1, 1, tzinfo=UTC),
    )
    done = observe.job_state(job([{"type": "Complete", "status": "True"}], completionTime="2025-01-01T00:00:42Z"))
    assert done is not None
    assert done.phase == "succeeded"
    assert done.end == datetime(2025, 1, 1, 0, 0, 42, tzinfo=UTC)


def test_job_failed_exit_2_uses_termination_message() -> None:
    failed = [
        {
            "type": "Failed",
            "status": "True",
            "reason": "PodFailurePolicy",
            "message": "Container share for pod ns/m-share-g3-x failed with exit code 2",
            "lastTransitionTime": "2025-01-01T00:00:20Z",
        }
    ]
    pods = [
        {
            "status": {
                "containerStatuses": [
                    {
                        "state": {
                            "terminated": {
                                "exitCode": 2,
                                "message": "loading...\nunsupported layer 'lstm' (LSTM); supported: Dense, Conv2D\n",
                            }
                        }
                    }
                ]
            }
        }
    ]
    s = observe.job_state(job(failed), pods)
    assert s is not None
    assert (s.phase, s.exit_code) == ("failed", 2)
    assert s.message == "unsupported layer 'lstm' (LSTM); supported: Dense, Conv2D"
    assert s.end == datetime(2025, 1, 1, 0, 0, 20, tzinfo=UTC)


def test_job_failed_without_pods_keeps_condition_message() -> None:
    failed = [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "too slow"}]
    s = observe.job_state(job(failed))
    assert s is not None
    assert (s.phase, s.exit_code, s.message) == ("failed", None, "too slow")


def test_job_without_generation_label_is_ignored() -> None:
    assert observe.job_state({"metadata": {"name": "x", "labels": {}}}) is None


def test_serve_deployment_rollout() -> None:
    dep = {
        "metadata": {"generation": 4},
        "spec": {
            "replicas": 1,
            "template": {"metadata": {"labels": {"tfe.dev/share-generation": "2"}}},
        },
        "status": {"observedGeneration": 4, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
    }
    assert observe.serve_deployment(dep) == observe.ServeDeployment(generation=2, ready=True)
    rolling = {**dep, "status": {**dep["status"], "replicas": 2}}
    assert observe.serve_deployment(rolling).ready is False
    stale = {**dep, "status": {**dep["status"], "observedGeneration": 3}}
    assert observe.serve_deployment(stale).ready is False


def test_serve_status_and_public_key_documents() -> None:
    doc = {
        "ready": True,
        "requestsServed": 12,
        "maxRequests": 100,
        "limitReached": False,
        "shareGeneration": 2,
        "model": "m",
    }
    assert observe.serve_status(doc) == observe.ServeStatus(True, 12, False, 2)
    assert observe.serve_status("nope") is None
    assert observe.public_key({"name": "server1", "publicKey": "QUJD"}, 1) == "QUJD"
    assert observe.public_key({"name": "server0", "publicKey": "QUJD"}, 1) is None
    assert observe.public_key({"name": "server1"}, 1) is None


def serve_pod(name: str, gen: str, ready: bool, phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"tfe.dev/share-generation": gen}},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_pick_serve_pod() -> None:
    old_ready = serve_pod("old", "1", True)
    new_warming = serve_pod("new", "2", False)
    assert observe.pick_serve_pod([new_warming, old_ready]) is old_ready
    new_ready = serve_pod("new", "2", True)
    assert observe.pick_serve_pod([old_ready, new_ready]) is new_ready
    # After its request limit a serve pod is unready but still reports its status.
    limited = serve_pod("x", "1", False)
    assert observe.pick_serve_pod([limited]) is limited
    assert observe.pick_serve_pod([serve_pod("p", "1", False, phase="Pending")]) is None
    gone = serve_pod("g", "1", True)
    gone["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert observe.pick_serve_pod([gone]) is None


def test_refusals_parse_the_guards_answer_and_ignore_anything_else() -> None:
    doc = {"identity": "server1", "refusals": [
        {"listener": "grpc", "identity": "share-g3", "reason": "handshake: certificate has expired (not after Y)",
         "count": 4, "firstSeen": "2026-11-26T23:00:00.123456789Z", "lastSeen": "2026-11-26T23:01:02.5Z"}]}
    (r,) = observe.refusals(doc, "server1")
    assert r == observe.Refusal("server1", "grpc", "share-g3", "handshake: certificate has expired (not after Y)",
                                4, datetime(2026, 11, 26, 23, 1, 2, 500000, tzinfo=UTC))
    assert observe.refusals(doc, "server2") == ()  # another party answered
    assert observe.refusals({"identity": "server1", "refusals": [{"count": True}]}, "server1") == ()
    assert observe.refusals("<html>", "server1") == ()
