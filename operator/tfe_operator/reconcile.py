"""The EncryptedModel state machine, as one pure function.

``reconcile(resource, status, observed, now)`` returns a ``Plan``: the manifests to apply,
the objects to delete, the complete new status (a typed, frozen ``status.Status``: reconcile
reads and builds no status dict; the handler converts at the edge with ``Status.from_dict`` and
``to_dict``), the Events to post and the metric samples.
The handler does the I/O (observe, apply, delete, patch status); everything that decides
lives here and is unit-tested without a cluster.

Phases: Pending → Provisioning → Sharing → Serving → ShuttingDown → Stopped | Failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from . import api, builders
from .builders import Context, Manifest
from .observe import JobState, Observed, Refusal, WorkerPod
from .status import (
    Condition,
    Failure,
    MeshRefusal,
    MeshStatus,
    Resharing,
    Sharing,
    Status,
    WorkerStatus,
)

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Resource:
    """The CR as the state machine needs it."""

    ctx: Context
    generation: int
    created: datetime | None
    # status.mesh from pki.plan_mesh, without `refused` (None: no mesh, e.g. external workers)
    mesh: MeshStatus | None = None
    # the tfe.dev/refresh-shares annotation ("" when absent): a new value asks for a refresh
    refresh_request: str = ""


@dataclass(frozen=True)
class Ref:
    api_version: str
    kind: str
    name: str


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass
class Plan:
    apply: list[Manifest] = field(default_factory=list)
    delete: list[Ref] = field(default_factory=list)
    status: Status = field(default_factory=Status)
    events: list[Event] = field(default_factory=list)
    share_durations: list[tuple[str, float]] = field(default_factory=list)
    time_to_serving: float | None = None


# status.mesh.refused: what the parties' guards refused in the last hour, newest first.
REFUSALS_WINDOW = timedelta(hours=1)
MAX_STATUS_REFUSALS = 10


def mesh_refusals(
    observed: Sequence[Refusal], previous: Sequence[MeshRefusal], now: datetime
) -> tuple[tuple[MeshRefusal, ...], list[Event]]:
    """status.mesh.refused from what the guards report, and a Warning Event for each refusal
    that is new or has happened again since the last status (so each appears once per change)."""
    recent = [
        r for r in observed if r.last_seen is not None and now - r.last_seen <= REFUSALS_WINDOW
    ]
    recent.sort(key=lambda r: (r.last_seen, r.party, r.identity), reverse=True)
    before = {
        (str(p.party), str(p.listener), str(p.identity), str(p.reason)): p.count for p in previous
    }
    rows: list[MeshRefusal] = []
    events: list[Event] = []
    for r in recent[:MAX_STATUS_REFUSALS]:
        assert r.last_seen is not None
        rows.append(
            MeshRefusal(
                party=r.party,
                identity=r.identity,
                listener=r.listener,
                reason=r.reason,
                count=r.count,
                last_seen=_ts(r.last_seen),
            )
        )
        if before.get((r.party, r.listener, r.identity, r.reason)) != r.count:
            who = "a caller without a certificate" if r.identity == "-" else r.identity
            message = f"{r.party} refused {who} ({r.listener}): {r.reason}"
            events.append(Event("Warning", "MeshRefused", message))
    return tuple(rows), events


def _ts(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Condition] | None,
    type_: str,
    ok: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int,
) -> tuple[Condition, ...]:
    """Upsert a condition; lastTransitionTime changes only when its status does."""
    status = "True" if ok else "False"
    out: list[Condition] = []
    found = False
    for c in conditions or ():
        if c.type != type_:
            out.append(c)
            continue
        found = True
        changed = c.status != status
        since = c.last_transition_time
        out.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=_ts(now) if changed or since is None else since,
                observed_generation=generation,
            )
        )
    if not found:
        out.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=_ts(now),
                observed_generation=generation,
            )
        )
    order = {t: i for i, t in enumerate(api.CONDITION_TYPES)}
    return tuple(sorted(out, key=lambda c: order.get(str(c.type), 99)))


def condition(status: Status, type_: str) -> Condition | None:
    for c in status.conditions or ():
        if c.type == type_:
            return c
    return None


# ---------------------------------------------------------------- workers


@dataclass(frozen=True)
class WorkersAssessment:
    ready: bool
    reason: str
    message: str


def assess_workers(res: Resource, obs: Observed) -> WorkersAssessment:
    if res.ctx.spec.external:
        return WorkersAssessment(
            True, "External", "three external workers (not run by the operator)"
        )
    pods = {p.index: p for p in obs.worker_pods}
    ready = sum(1 for p in pods.values() if p.ready)
    if ready == 3:
        return WorkersAssessment(True, "AllReady", "3/3 workers ready")
    for p in sorted(pods.values(), key=lambda p: p.index):
        if p.problem:
            msg = f"{p.name}: {p.problem}"
            if p.detail:
                msg += f": {p.detail}"
            if p.restarts:
                msg += f" (restarts: {p.restarts})"
            return WorkersAssessment(False, p.problem, f"{ready}/3 workers ready; {msg}")
    return WorkersAssessment(False, "Starting", f"{ready}/3 workers ready")


def keys_to_fetch(res: Resource, status: Status, obs: Observed) -> list[int]:
    """Workers whose public key the handler should (re)fetch this round."""
    old = dict(enumerate(status.workers or ()))
    if res.ctx.spec.external:
        return [i for i in range(3) if not (old.get(i) or WorkerStatus()).public_key]
    # Every ready worker, every round: a worker whose volume was replaced has a new key even
    # when its pod did not change (docs/recovery.md); the status must never pin a stale one.
    return [p.index for p in obs.worker_pods if p.ready]


def workers_status(res: Resource, status: Status, obs: Observed) -> tuple[WorkerStatus, ...]:
    ctx = res.ctx
    old = dict(enumerate(status.workers or ()))
    pods = {p.index: p for p in obs.worker_pods}
    out = []
    for i, player in enumerate(builders.players(ctx)):
        o = old.get(i) or WorkerStatus()
        pod: str | None = None
        pod_uid: str | None = None
        if ctx.spec.external:
            ready = True
            key = obs.public_keys.get(i) or o.public_key
        else:
            p = pods.get(i)
            pod = builders.worker_pod_name(ctx.name, i)
            ready = bool(p and p.ready)
            # The last key read from this worker: kept while a replaced pod is not ready yet, so
            # that a new key is noticed (WorkerKeyChanged) when it is read.
            key = obs.public_keys.get(i) or o.public_key
            if p is not None:
                pod_uid = p.uid
        gens = obs.worker_generations.get(i)
        if gens is None and o.pod_uid == pod_uid:
            gens = o.generations
        out.append(
            WorkerStatus(
                name=player["name"],
                pod=pod,
                pod_uid=pod_uid,
                address=builders.worker_address(ctx, i),
                ready=ready,
                public_key=key or None,
                generations=tuple(gens) if gens is not None else None,
            )
        )
    return tuple(out)


def key_changes(status: Status, workers: Sequence[WorkerStatus]) -> list[Event]:
    """WorkerKeyChanged for each worker whose public key differs from the one in the status."""
    old = dict(enumerate(status.workers or ()))
    events = []
    for i, w in enumerate(workers):
        before = (old.get(i) or WorkerStatus()).public_key
        after = w.public_key
        if before and after and before != after:
            events.append(Event(
                "Warning", "WorkerKeyChanged",
                f"{w.name} has a new public key (its volume was replaced?): "
                f"status.workers[{i}].publicKey updated; clients pinned to the old key are "
                "refused until they re-pin from the status",
            ))  # fmt: skip
    return events


@dataclass(frozen=True)
class SharesAssessment:
    """Which observed workers hold the serving generation (one that did not answer: neither)."""

    holders: tuple[int, ...]
    missing: tuple[int, ...]

    def names(self, idx: Sequence[int]) -> str:
        names = [f"server{i}" for i in idx]
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def assess_shares(generation: int, obs: Observed) -> SharesAssessment:
    if generation <= 0:
        return SharesAssessment((), ())
    gens = obs.worker_generations
    return SharesAssessment(
        tuple(i for i in sorted(gens) if generation in gens[i]),
        tuple(i for i in sorted(gens) if generation not in gens[i]),
    )


def refresh_due(res: Resource, status: Status, now: datetime) -> str | None:
    """Why a proactive refresh should start now (the annotation or the interval), or None."""
    seen = status.refresh_request
    if seen is not None and res.refresh_request and res.refresh_request != seen:
        return f"requested ({api.ANNOTATION_REFRESH_SHARES}={res.refresh_request})"
    interval = res.ctx.spec.shares.refresh_interval_seconds
    made = _parse_ts(status.share_generation_time)
    if interval and made is not None and (now - made).total_seconds() >= interval:
        return f"refreshInterval {interval}s elapsed"
    return None


def _parse_ts(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def serve_slot(ctx: Context, generation: int, obs: Observed) -> int:
    """The mesh coordinator slot of the serve pod template to apply (docs/operator.md).

    Unchanged template: keep its slot. A new template (any change: generation, spec, mesh
    certificates, operator version): the slot that no running pod of another template holds,
    so that the rollout's old and new coordinators are distinct parties. With nothing running: 0.
    """
    if ctx.spec.external:
        return 0
    want = builders.serve_template_hash(ctx, generation)
    live = obs.serve
    if live is not None and live.slot is not None and live.template_hash == want:
        return live.slot
    n = len(builders.COORDINATOR_PARTIES)
    others = [
        (p.slot, p.ready)
        for p in obs.serve_pod_slots
        if p.template_hash != want and p.slot is not None
    ]
    for held in ({s for s, ready in others if ready}, {s for s, _ in others}):
        if len(held) == 1:
            return (held.pop() + 1) % n
    if live is not None and live.slot is not None and not others:
        return (live.slot + 1) % n
    return 0


# ---------------------------------------------------------------- the state machine


def _job_for(obs: Observed, generation: int) -> JobState | None:
    for j in obs.jobs:
        if j.generation == generation:
            return j
    return None


def _duration(job: JobState) -> float | None:
    if job.start is None or job.end is None:
        return None
    return max(0.0, (job.end - job.start).total_seconds())


def _shares_survive(res: Resource, status: Status, pods: Sequence[WorkerPod]) -> bool:
    """Memory storage: shares die with the pod. The pods that hold them must still exist."""
    if res.ctx.spec.external or res.ctx.spec.workers.storage.medium != "Memory":
        return True
    held = list(status.share_worker_uids or ())
    current = {p.uid for p in pods}
    return len(held) == 3 and all(uid in current for uid in held)


def reconcile(res: Resource, status: Status, obs: Observed, now: datetime) -> Plan:
    ctx = res.ctx
    spec = ctx.spec
    plan = Plan()
    old = new = status  # frozen: each step below makes a new Status (dataclasses.replace)
    events = plan.events

    # Feed from the serve pod.
    ss = obs.serve_status
    if ss is not None:
        new = replace(new, requests_served=ss.requests_served)
    limit_gen = new.limit_reached_generation
    if limit_gen is not None and limit_gen != res.generation:
        # Any spec change after the limit brings the model back.
        new = replace(new, limit_reached_generation=None, requests_served=0)
        limit_gen = None
    if (
        limit_gen is None
        and ss is not None
        and ss.limit_reached
        and spec.serving.max_requests is not None
        and not spec.shutdown
    ):
        new = replace(new, limit_reached_generation=res.generation)
        limit_gen = res.generation
        events.append(
            Event(
                "Normal",
                "MaxRequestsReached",
                f"served {ss.requests_served} of {spec.serving.max_requests} requests; "
                "tearing the workers down",
            )
        )

    failure = new.failure
    if failure is not None and failure.generation != res.generation:
        new = replace(new, failure=None)
        failure = None

    if spec.shutdown or limit_gen is not None:
        new = _stop(res, new, obs, plan, now, limit_gen is not None)
    else:
        new = _run(res, new, obs, plan, now, failure)

    # Bookkeeping common to every path.
    if res.mesh is not None:
        previous = (old.mesh.refused if old.mesh is not None else None) or ()
        refused, refusal_events = mesh_refusals(obs.refusals, previous, now)
        new = replace(new, mesh=replace(res.mesh, refused=refused))
        plan.events += refusal_events
    else:
        new = replace(new, mesh=None)
    # A share Job's identity goes with its Job.
    job_gens = {j.name: j.generation for j in obs.jobs}
    deletes: list[Ref] = []
    for ref in plan.delete:
        deletes.append(ref)
        if ref.kind == "Job" and ref.name in job_gens and not spec.external:
            secret = builders.share_secret_name(ctx.name, job_gens[ref.name])
            deletes.append(Ref("v1", "Secret", secret))
    plan.delete = deletes
    workers = workers_status(res, new, obs)
    new = replace(new, observed_generation=res.generation, workers=workers)
    plan.events.extend(key_changes(old, workers))
    if new.phase == "Serving" and not old.first_serving_time:
        new = replace(new, first_serving_time=_ts(now))
        if res.created is not None:
            plan.time_to_serving = max(0.0, (now - res.created).total_seconds())
    serving = new.phase == "Serving"
    message = "" if new.message is None else new.message
    ready = set_condition(
        new.conditions, "Ready", serving, "Serving" if serving else str(new.phase), message, now,
        res.generation,
    )  # fmt: skip
    new = replace(new, conditions=ready)
    if old.phase != new.phase:
        events.append(
            Event("Warning" if new.phase == "Failed" else "Normal", str(new.phase), message)
        )
    old_workers = condition(old, "WorkersReady")
    new_workers = condition(new, "WorkersReady")
    if (
        new_workers is not None
        and new_workers.status == "False"
        and new_workers.reason not in ("Starting", "Stopped")
        and (old_workers.reason if old_workers is not None else None) != new_workers.reason
    ):
        events.append(Event("Warning", "WorkerNotReady", new_workers.message or ""))
    plan.status = new
    return plan


def _stop(
    res: Resource, new: Status, obs: Observed, plan: Plan, now: datetime, limit: bool
) -> Status:
    ctx = res.ctx
    spec = ctx.spec
    m = ctx.name
    now_reason = "MaxRequestsReached" if limit else "ShutdownRequested"
    # Endpoint and coordinators first, then the workers.
    if obs.endpoint is not None or obs.endpoint_pods:
        plan.delete.append(Ref("apps/v1", "Deployment", builders.endpoint_deployment_name(m)))
    if obs.serve is not None or obs.serve_pods:
        plan.delete.append(Ref("apps/v1", "Deployment", builders.serve_deployment_name(m)))
    if obs.client_service:
        plan.delete.append(Ref("v1", "Service", builders.client_service_name(m)))
    if obs.relay_service:
        plan.delete.append(Ref("v1", "Service", builders.relay_service_name(m)))
    for job in obs.jobs:
        plan.delete.append(Ref("batch/v1", "Job", job.name))
    new = replace(new, sharing=None)
    if not spec.external:
        if obs.statefulset:
            plan.delete.append(Ref("apps/v1", "StatefulSet", builders.statefulset_name(m)))
        storage = spec.workers.storage
        if storage.medium == "Memory":
            if new.shares_stored:
                plan.events.append(
                    Event("Normal", "SharesDeleted", "memory storage: shares end with the workers")
                )
            new = replace(new, shares_stored=False)
        elif storage.retain_policy == "Delete":
            if new.shares_stored:
                plan.events.append(
                    Event("Normal", "SharesDeleted", "retainPolicy Delete: worker volumes deleted")
                )
            new = replace(new, shares_stored=False)
            for pvc in obs.pvcs:
                plan.delete.append(Ref("v1", "PersistentVolumeClaim", pvc))
    remaining = len(obs.worker_pods) + obs.serve_pods + obs.endpoint_pods
    stopped = remaining == 0 and obs.serve is None and obs.endpoint is None and not obs.statefulset
    what = "request limit reached" if limit else "shutdown requested"
    kept = "shares kept" if new.shares_stored else "no shares kept"
    message = (
        f"{what}; workers and coordinator removed ({kept})"
        if stopped
        else f"{what}; removing workers and coordinator"
    )
    g = res.generation
    conds = set_condition(new.conditions, "WorkersReady", False, "Stopped", what, now, g)
    if new.shares_stored and new.share_generation:
        conds = set_condition(
            conds, "ModelShared", True, "Stored",
            f"generation {new.share_generation} stored on the worker volumes", now, g,
        )  # fmt: skip
    else:
        conds = set_condition(conds, "ModelShared", False, "SharesDeleted", kept, now, g)
    conds = set_condition(conds, "Serving", False, now_reason, what, now, g)
    return replace(
        new,
        phase="Stopped" if stopped else "ShuttingDown",
        message=message,
        endpoint=None,
        conditions=conds,
    )


def _run(
    res: Resource,
    new: Status,
    obs: Observed,
    plan: Plan,
    now: datetime,
    failure: Failure | None,
) -> Status:
    ctx = res.ctx
    spec = ctx.spec
    m = ctx.name
    g = res.generation
    model_hash = spec.model_hash
    plan.apply.extend(builders.base_objects(ctx))

    workers = assess_workers(res, obs)
    conds = set_condition(
        new.conditions, "WorkersReady", workers.ready, workers.reason,
        workers.message, now, g,
    )  # fmt: skip

    # Are the stored shares still there?
    shares_valid = bool(new.shares_stored) and (new.share_generation or 0) > 0
    # Memory storage, workers that report their generations: a replaced worker is recovered from
    # its peers below like a lost volume; without those reports, share again from the source.
    reported = bool(obs.worker_generations)
    if shares_valid and not reported and not _shares_survive(res, new, obs.worker_pods):
        shares_valid = False
        new = replace(new, shares_stored=False)
        plan.events.append(
            Event(
                "Warning",
                "SharesLost",
                "a worker with memory storage was replaced: its shares are gone; sharing again",
            )
        )
    serving_gen = (new.share_generation or 0) if shares_valid else 0
    need_share = not (shares_valid and new.model_hash == model_hash)
    if new.share_generation_time is None and serving_gen > 0:
        # a refresh interval counts from here
        new = replace(new, share_generation_time=_ts(now))
    if new.refresh_request is None:
        # The annotation's value when this model is first seen is no request; a later change is.
        new = replace(new, refresh_request=res.refresh_request)

    # Do the workers still hold what is served? (docs/recovery.md)
    shares = assess_shares(serving_gen, obs)
    lost: str | None = None  # two or more lost and no model source: Failed with this
    reshare_msg: str | None = None
    if serving_gen > 0 and not need_share and failure is None:
        if len(shares.missing) >= 2:
            what = (
                f"shares lost on {shares.names(shares.missing)}: recovery from peers needs two "
                f"workers that hold generation {serving_gen}"
            )
            new = _drop_reshare(new, obs, plan)
            if obs.source_missing is None:
                plan.events.append(
                    Event("Warning", "SharesLost", f"{what}; sharing the model again")
                )
                new = replace(new, shares_stored=False)
                need_share = True
                serving_gen = 0
            else:
                lost = f"{what}, and the model source is gone ({obs.source_missing})"
        elif len(shares.missing) == 1 and len(shares.holders) == 2 and workers.ready:
            step = _reshare(res, new, obs, plan, now,
                            builders.Reshare(serving_gen, shares.missing[0]))  # fmt: skip
            new, reshare_msg, failure = step.status, step.message, step.failure
            if step.shared is not None:
                serving_gen = step.shared
                shares = assess_shares(serving_gen, obs)
        elif not shares.missing and workers.ready and len(shares.holders) == 3:
            r = new.resharing
            refreshing = r is not None and r.kind == "refresh"
            why = refresh_due(res, new, now)
            if refreshing or why is not None:
                if why is not None and not refreshing:
                    new = replace(new, refresh_request=res.refresh_request)
                    plan.events.append(Event("Normal", "RefreshRequested", why))
                step = _reshare(res, new, obs, plan, now, builders.Reshare(serving_gen, None))
                new, reshare_msg, failure = step.status, step.message, step.failure
                if step.shared is not None:
                    serving_gen = step.shared
                    shares = assess_shares(serving_gen, obs)
            elif r is not None:
                new = _drop_reshare(new, obs, plan)
    elif new.resharing is not None:
        new = _drop_reshare(new, obs, plan)

    shared_reason, shared_msg = "Shared", f"generation {serving_gen} shared"
    if lost is not None:
        shared_reason, shared_msg = "SharesLost", lost
    elif shares.missing:
        shared_reason = "SharesMissing"
        shared_msg = f"{shares.names(shares.missing)} lacks generation {serving_gen}"
        if reshare_msg:
            shared_msg += f"; {reshare_msg}"
        elif not workers.ready:
            shared_msg += "; recovery from its peers starts when the other workers are ready"
    elif reshare_msg:
        shared_msg += f"; {reshare_msg}"
    if need_share and failure is None:
        shared = _share(res, new, obs, plan, workers.ready)
        new, failure = shared.status, shared.failure
        shared_reason, shared_msg = shared.reason, shared.message
        if shared.shared is not None:
            serving_gen = shared.shared
            need_share = False
    elif failure is not None:
        shared_reason, shared_msg = str(failure.reason), str(failure.message)

    # The serve Deployment runs the newest valid generation; during a re-share the old one
    # keeps serving (the Deployment rolls only when the new generation is shared).
    # The model's first share (no generation shared before): the serve pods start beside the
    # share Job, on the generation it is writing; their coordinator waits until all three workers
    # hold it, so scheduling, imports and the guards' start overlap the Job. Serving still needs
    # the Job's success (need_share). A re-share after lost shares keeps the serial order.
    early_gen = 0
    first = not new.share_generation
    if first and serving_gen == 0 and need_share and failure is None and lost is None:
        sharing = new.sharing
        if shared_reason == "Sharing" and sharing is not None and sharing.generation:
            early_gen = sharing.generation
    serve_ready = False
    starting = f"serve deployment starting (generation {serving_gen})"
    if serving_gen > 0:
        plan.apply.extend(
            builders.serving_objects(ctx, serving_gen, serve_slot(ctx, serving_gen, obs))
        )
        new = replace(new, endpoint=builders.endpoint(ctx))
        ss = obs.serve_status
        coordinator_ready = (
            obs.serve is not None
            and obs.serve.ready
            and obs.serve.generation == serving_gen
            and (ss is None or (ss.ready and ss.share_generation in (None, serving_gen)))
        )
        # The mesh: clients reach the coordinator through the endpoint pods only.
        endpoint_ready = spec.external or (obs.endpoint is not None and obs.endpoint.ready)
        serve_ready = coordinator_ready and endpoint_ready and not shares.missing
        if coordinator_ready and not endpoint_ready:
            starting = f"endpoint deployment starting (generation {serving_gen})"
    elif early_gen > 0:
        plan.apply.extend(
            builders.serving_objects(ctx, early_gen, serve_slot(ctx, early_gen, obs))
        )
        new = replace(new, endpoint=None)  # nothing answers yet
        starting = (
            f"serve deployment starting beside the share Job; it serves generation {early_gen} "
            "once the Job succeeded"
        )
    else:
        new = replace(new, endpoint=None)
        if obs.serve is not None:
            plan.delete.append(Ref("apps/v1", "Deployment", builders.serve_deployment_name(m)))
        if obs.endpoint is not None:
            plan.delete.append(Ref("apps/v1", "Deployment", builders.endpoint_deployment_name(m)))

    shared_ok = not need_share and not shares.missing and lost is None
    conds = set_condition(conds, "ModelShared", shared_ok, shared_reason, shared_msg, now, g)
    if serve_ready:
        conds = set_condition(
            conds, "Serving", True, "Serving",
            f"generation {serving_gen} at {builders.endpoint(ctx)}", now, g,
        )  # fmt: skip
    elif serving_gen > 0 and (shares.missing or lost is not None):
        conds = set_condition(conds, "Serving", False, "SharesMissing", shared_msg, now, g)
    elif serving_gen > 0 or early_gen > 0:
        conds = set_condition(conds, "Serving", False, "Starting", starting, now, g)
    else:
        conds = set_condition(conds, "Serving", False, "NotShared", "no shares yet", now, g)

    if failure is not None:
        phase, message = "Failed", str(failure.message)
        if serve_ready:
            message += f" (generation {serving_gen} keeps serving)"
    elif lost is not None:
        phase, message = "Failed", lost
    elif serve_ready and not need_share and workers.ready:
        phase, message = "Serving", f"generation {serving_gen} at {builders.endpoint(ctx)}"
    elif need_share and obs.source_missing:
        phase, message = "Pending", obs.source_missing
    elif not workers.ready:
        phase, message = "Provisioning", workers.message
    elif need_share or shares.missing:
        phase, message = "Sharing", shared_msg
    else:
        phase, message = "Provisioning", starting
    return replace(
        new,
        phase=phase,
        message=message,
        conditions=conds,
        share_generation=0 if new.share_generation is None else new.share_generation,
        requests_served=0 if new.requests_served is None else new.requests_served,
    )


MAX_RESHARE_ATTEMPTS = 3


def _next_generation(new: Status, obs: Observed) -> int:
    """A generation number no Job, status entry or worker disk has used (every worker that
    answered GET /v1/models/NAME/generations: old generations on retained volumes included)."""
    known = [
        new.share_generation or 0,
        (new.sharing.generation if new.sharing is not None else None) or 0,
        (new.resharing.generation if new.resharing is not None else None) or 0,
    ]
    known += [j.generation for j in obs.jobs]
    known += [g for gens in obs.worker_generations.values() for g in gens]
    return max(known) + 1


def _drop_reshare(new: Status, obs: Observed, plan: Plan) -> Status:
    """Forget a recovery/refresh that no longer applies (and delete its Job)."""
    r = new.resharing
    if r is not None:
        job = _job_for(obs, r.generation or 0)
        if job is not None:
            plan.delete.append(Ref("batch/v1", "Job", job.name))
    return replace(new, resharing=None)


@dataclass(frozen=True)
class ShareStep:
    """What driving a share, recovery or refresh Job did this round.

    ``status``: the status after it (its ``failure`` is ``failure``); ``shared``: the generation
    it finished, else None; ``reason``/``message``: the ModelShared condition's (a share Job) or
    what it is doing (a recovery or refresh Job, ``message`` only)."""

    status: Status
    reason: str
    message: str
    shared: int | None = None
    failure: Failure | None = None


def _reshare(
    res: Resource, new: Status, obs: Observed, plan: Plan, now: datetime,
    want: builders.Reshare,
) -> ShareStep:  # fmt: skip
    """Drive a recovery or refresh Job (docs/recovery.md)."""
    ctx = res.ctx
    worker = f"server{want.lost}" if want.lost is not None else None
    r = new.resharing
    if r is not None and (
        r.generation is None or (r.kind, r.source, r.worker) != (want.kind, want.source, worker)
    ):
        new = _drop_reshare(new, obs, plan)
        r = None
    if r is None:
        gen = _next_generation(new, obs)
        r = Resharing(generation=gen, source=want.source, kind=want.kind, worker=worker, attempts=1)
        if want.lost is not None:
            a, b = ((want.lost + 1) % 3, (want.lost + 2) % 3)
            plan.events.append(Event(
                "Normal", "RecoveryStarted",
                f"{worker} lacks generation {want.source}: server{a} and server{b} give it fresh "
                f"shares as generation {gen} (no model file needed)",
            ))  # fmt: skip
        else:
            plan.events.append(Event(
                "Normal", "RefreshStarted",
                f"re-randomizing the shares of generation {want.source} as generation {gen}",
            ))  # fmt: skip
    new = replace(new, resharing=r)
    assert r.generation is not None
    gen = r.generation
    job = _job_for(obs, gen)
    doing = (
        f"recovering {worker} from its peers as generation {gen}"
        if worker is not None
        else f"refreshing the shares as generation {gen}"
    )
    reason = "Resharing"
    if job is None or job.phase == "active":
        plan.apply.append(builders.share_job(ctx, gen, want))
        return ShareStep(new, reason, doing)
    seconds = _duration(job)
    took = f" in {seconds:.0f}s" if seconds is not None else ""
    if job.phase == "succeeded":
        new = replace(
            new,
            share_generation=gen,
            share_generation_time=_ts(now),
            shares_stored=True,
            share_worker_uids=tuple(p.uid for p in obs.worker_pods),
            resharing=None,
        )
        reason = "SharesRecovered" if worker is not None else "SharesRefreshed"
        what = f"{worker} recovered from its peers" if worker is not None else "shares refreshed"
        plan.events.append(
            Event("Normal", reason, f"generation {gen} from generation {want.source}: {what}{took}")
        )
        for j in obs.jobs:
            if j.generation != gen:
                plan.delete.append(Ref("batch/v1", "Job", j.name))
        return ShareStep(new, reason, doing, shared=gen)
    # Failed: try again as a new generation, a few times.
    attempts = r.attempts or 1
    plan.delete.append(Ref("batch/v1", "Job", job.name))
    message = job.message or f"job {job.name} failed"
    if attempts >= MAX_RESHARE_ATTEMPTS:
        reason = "RecoveryFailed" if worker is not None else "RefreshFailed"
        failed = f"{doing} failed {attempts} times: {message}"
        failure = Failure(generation=res.generation, reason=reason, message=failed)
        return ShareStep(
            replace(new, resharing=None, failure=failure), reason, failed, None, failure
        )
    plan.events.append(Event("Warning", "ReshareJobFailed", f"{doing}: {message}; trying again"))
    again = replace(r, generation=_next_generation(new, obs), attempts=attempts + 1)
    return ShareStep(replace(new, resharing=again), reason, doing)


def _share(
    res: Resource,
    new: Status,
    obs: Observed,
    plan: Plan,
    workers_ready: bool,
) -> ShareStep:
    """Drive the share Job. The step's reason and message are the ModelShared condition's."""
    ctx = res.ctx
    m = ctx.name
    model_hash = ctx.spec.model_hash
    if obs.source_missing:
        return ShareStep(new, "SourceMissing", obs.source_missing)
    if not workers_ready:
        return ShareStep(
            new, "WaitingForWorkers", "the share Job starts when 3/3 workers are ready"
        )

    sharing = new.sharing
    if sharing is not None and (sharing.generation is None or sharing.model_hash != model_hash):
        # spec.model changed while sharing: that generation is obsolete.
        stale = _job_for(obs, sharing.generation or 0)
        if stale is not None:
            plan.delete.append(Ref("batch/v1", "Job", stale.name))
        sharing = None
    if sharing is None:
        shared_gen = new.share_generation or 0
        # After an operator restart, adopt a Job already made for this model: never a second.
        adopt = [
            j for j in obs.jobs
            if j.model_hash == model_hash and j.generation > shared_gen and j.phase != "failed"
            and j.kind == "share"
        ]  # fmt: skip
        if adopt:
            gen = max(j.generation for j in adopt)
        else:
            # Above every generation the workers report too: a re-created EncryptedModel on
            # retained volumes starts with an empty status, and a number its volumes already hold
            # would overwrite an old generation or be pruned as older than the old newest ones.
            gen = _next_generation(new, obs)
            plan.events.append(
                Event("Normal", "ShareStarted", f"sharing the model as generation {gen}")
            )
        sharing = Sharing(generation=gen, model_hash=model_hash)
    new = replace(new, sharing=sharing)
    assert sharing.generation is not None
    gen = sharing.generation
    job = _job_for(obs, gen)

    if job is None or job.phase == "active":
        plan.apply.append(builders.share_job(ctx, gen))
        return ShareStep(new, "Sharing", f"share job {builders.share_job_name(m, gen)} running")

    seconds = _duration(job)
    if job.phase == "succeeded":
        new = replace(
            new,
            share_generation=gen,
            model_hash=model_hash,
            shares_stored=True,
            share_worker_uids=tuple(p.uid for p in obs.worker_pods),
            sharing=None,
        )
        if seconds is not None:
            plan.share_durations.append(("succeeded", seconds))
        plan.events.append(
            Event("Normal", "ModelShared", f"generation {gen} shared across the three workers")
        )
        for j in obs.jobs:
            if j.generation != gen:
                plan.delete.append(Ref("batch/v1", "Job", j.name))
        return ShareStep(new, "Shared", f"generation {gen} shared", shared=gen)

    # Failed: exit 2 = the model itself is invalid (its message names the cause).
    invalid = job.exit_code == api.EXIT_INVALID_MODEL
    reason = "InvalidModel" if invalid else "ShareJobFailed"
    message = job.message or f"share job {job.name} failed"
    if not invalid and job.exit_code is not None:
        message = f"share job {job.name} failed (exit {job.exit_code}): {message}"
    failure = Failure(generation=res.generation, reason=reason, message=message)
    if seconds is not None:
        plan.share_durations.append(("failed", seconds))
    return ShareStep(replace(new, failure=failure, sharing=None), reason, message, None, failure)
