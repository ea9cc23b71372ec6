"""Observed state: small typed values parsed (purely) from the API objects the handler read."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from tfe_client import wire
from tfe_client.errors import ProtocolError

from . import api

JobPhase = Literal["active", "succeeded", "failed"]

# Waiting reasons that mean "this will not fix itself soon": reported in WorkersReady.
PROBLEM_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


@dataclass(frozen=True)
class WorkerPod:
    index: int
    name: str
    uid: str
    ready: bool
    problem: str | None = None  # a reason such as CrashLoopBackOff or Unschedulable
    detail: str = ""
    restarts: int = 0


@dataclass(frozen=True)
class JobState:
    name: str
    generation: int
    model_hash: str
    phase: JobPhase
    exit_code: int | None = None
    message: str = ""
    start: datetime | None = None
    end: datetime | None = None
    kind: str = "share"  # share (from the model), recovery or refresh (docs/recovery.md)


@dataclass(frozen=True)
class ServeDeployment:
    generation: int | None
    ready: bool  # rolled out: updated, available, observed
    slot: int | None = None  # the mesh coordinator slot of its pod template
    template_hash: str = ""  # tfe.dev/serve-hash of its pod template


@dataclass(frozen=True)
class EndpointDeployment:
    """The client-facing endpoint Deployment (mesh only)."""

    ready: bool  # rolled out: every replica updated and available (so its relay answers ready)


@dataclass(frozen=True)
class ServePod:
    """A serve pod as the coordinator-slot choice needs it."""

    slot: int | None
    template_hash: str
    ready: bool


@dataclass(frozen=True)
class ServeStatus:
    """GET /v1/status of a serve pod (the coordinator's relay API through its guard's health
    port; external workers: its client port 8000)."""

    ready: bool
    requests_served: int
    limit_reached: bool
    share_generation: int | None


@dataclass(frozen=True)
class Refusal:
    """Something a party's tfe-guard refused (GET /guard/refusals): who, where, why, how often."""

    party: str  # the refusing party: server<i> or coordinator
    listener: str
    identity: str  # the peer's certificate CN, "-" if it named nobody
    reason: str
    count: int
    last_seen: datetime | None


@dataclass(frozen=True)
class Observed:
    worker_pods: tuple[WorkerPod, ...] = ()
    statefulset: bool = False
    jobs: tuple[JobState, ...] = ()
    serve: ServeDeployment | None = None
    serve_pods: int = 0
    serve_pod_slots: tuple[ServePod, ...] = ()
    client_service: bool = False
    endpoint: EndpointDeployment | None = None
    endpoint_pods: int = 0
    relay_service: bool = False
    serve_status: ServeStatus | None = None
    pvcs: tuple[str, ...] = ()
    public_keys: Mapping[int, str] = field(default_factory=dict)
    source_missing: str | None = None
    # Complete share generations of this model on each worker that answered (GET
    # /v1/models/NAME/generations); a worker that did not answer is absent.
    worker_generations: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    refusals: tuple[Refusal, ...] = ()


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _ordinal(pod_name: str) -> int | None:
    m = re.search(r"-(\d+)$", pod_name)
    return int(m.group(1)) if m else None


def worker_pod(pod: Mapping[str, Any]) -> WorkerPod | None:
    meta = pod.get("metadata", {})
    name = str(meta.get("name", ""))
    index = _ordinal(name)
    if index is None or index > 2 or meta.get("deletionTimestamp"):
        return None
    status = pod.get("status", {}) or {}
    conditions = {c.get("type"): c for c in status.get("conditions", []) or []}
    ready = (conditions.get("Ready") or {}).get("status") == "True"
    problem: str | None = None
    detail = ""
    restarts = 0
    # Init containers first (mesh-init, the guard sidecar): while one of them fails, the
    # player never starts, and its name says which layer is broken.
    statuses = [(cs, True) for cs in status.get("initContainerStatuses", []) or []]
    statuses += [(cs, False) for cs in status.get("containerStatuses", []) or []]
    for cs, init in statuses:
        restarts += int(cs.get("restartCount", 0) or 0)
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in PROBLEM_REASONS and problem is None:
            problem = str(reason)
            parts = [f"init container {cs.get('name')}"] if init else []
            parts.append(str(waiting.get("message", "")).strip())
            last = (cs.get("lastState") or {}).get("terminated") or {}
            if last:
                exit_part = f"last exit {last.get('exitCode')}"
                msg = _last_line(str(last.get("message", "")))
                parts.append(f"{exit_part}: {msg}" if msg else exit_part)
            detail = "; ".join(p for p in parts if p)
    scheduled = conditions.get("PodScheduled") or {}
    if problem is None and scheduled.get("status") == "False" and scheduled.get("reason"):
        problem = str(scheduled.get("reason"))
        detail = str(scheduled.get("message", ""))
    return WorkerPod(
        index=index,
        name=name,
        uid=str(meta.get("uid", "")),
        ready=ready,
        problem=problem,
        detail=detail,
        restarts=restarts,
    )


def worker_pods(pods: Iterable[Mapping[str, Any]]) -> tuple[WorkerPod, ...]:
    parsed = [p for p in (worker_pod(x) for x in pods) if p is not None]
    return tuple(sorted(parsed, key=lambda p: p.index))


def job_state(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]] = ()) -> JobState | None:
    meta = job.get("metadata", {})
    labels = meta.get("labels", {}) or {}
    annotations = meta.get("annotations", {}) or {}
    try:
        generation = int(labels.get(api.LABEL_GENERATION, ""))
    except ValueError:
        return None
    status = job.get("status", {}) or {}
    conditions = {
        c.get("type"): c for c in status.get("conditions", []) or [] if c.get("status") == "True"
    }
    phase: JobPhase = "active"
    if "Complete" in conditions:
        phase = "succeeded"
    elif "Failed" in conditions:
        phase = "failed"
    exit_code: int | None = None
    message = ""
    if phase == "failed":
        failed = conditions["Failed"]
        message = str(failed.get("message") or failed.get("reason") or "")
        # The container's termination message names the cause (e.g. the unsupported layer).
        for pod in pods:
            for cs in (pod.get("status", {}) or {}).get("containerStatuses", []) or []:
                term = (cs.get("state") or {}).get("terminated") or {}
                if term and term.get("exitCode") not in (None, 0):
                    code = int(term["exitCode"])
                    if exit_code is None or code == api.EXIT_INVALID_MODEL:
                        exit_code = code
                        msg = _last_line(str(term.get("message", "")))
                        message = msg or message
    end = parse_time(status.get("completionTime"))
    if end is None and phase == "failed":
        end = parse_time(conditions["Failed"].get("lastTransitionTime"))
    return JobState(
        name=str(meta.get("name", "")),
        generation=generation,
        model_hash=str(annotations.get(api.ANNOTATION_MODEL_HASH, "")),
        phase=phase,
        exit_code=exit_code,
        message=message,
        start=parse_time(status.get("startTime")),
        end=end,
        kind=str(annotations.get(api.ANNOTATION_SHARE_KIND) or "share"),
    )


def _slot(pod_spec: Mapping[str, Any]) -> int | None:
    """The coordinator slot from the pod's hostname: coordinator -> 0, coordinator-1 -> 1."""
    host = str(pod_spec.get("hostname") or "")
    if host == "coordinator":
        return 0
    m = re.fullmatch(r"coordinator-(\d+)", host)
    return int(m.group(1)) if m else None


def serve_pods(pods: Iterable[Mapping[str, Any]]) -> tuple[ServePod, ...]:
    out = []
    for p in pods:
        meta = p.get("metadata", {}) or {}
        if meta.get("deletionTimestamp"):
            continue
        conditions = (p.get("status", {}) or {}).get("conditions", []) or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        ann = meta.get("annotations", {}) or {}
        out.append(
            ServePod(
                slot=_slot(p.get("spec", {}) or {}),
                template_hash=str(ann.get(api.ANNOTATION_SERVE_HASH, "")),
                ready=ready,
            )
        )
    return tuple(out)


def rolled_out(dep: Mapping[str, Any]) -> bool:
    """A Deployment whose every replica runs its current template and is available."""
    meta = dep.get("metadata", {})
    spec = dep.get("spec", {}) or {}
    status = dep.get("status", {}) or {}
    replicas = int(spec.get("replicas", 1) or 0)
    return (
        int(status.get("observedGeneration", 0) or 0) >= int(meta.get("generation", 0) or 0)
        and int(status.get("updatedReplicas", 0) or 0) >= replicas
        and int(status.get("availableReplicas", 0) or 0) >= replicas
        and int(status.get("replicas", 0) or 0) == replicas
        and replicas > 0
    )


def endpoint_deployment(dep: Mapping[str, Any]) -> EndpointDeployment:
    return EndpointDeployment(ready=rolled_out(dep))


def serve_deployment(dep: Mapping[str, Any]) -> ServeDeployment:
    spec = dep.get("spec", {}) or {}
    template = spec.get("template") or {}
    tmpl_labels = (template.get("metadata") or {}).get("labels") or {}
    tmpl_ann = (template.get("metadata") or {}).get("annotations") or {}
    try:
        generation: int | None = int(tmpl_labels.get(api.LABEL_GENERATION, ""))
    except ValueError:
        generation = None
    return ServeDeployment(
        generation=generation,
        ready=rolled_out(dep),
        slot=_slot(template.get("spec") or {}),
        template_hash=str(tmpl_ann.get(api.ANNOTATION_SERVE_HASH, "")),
    )


def pick_serve_pod(pods: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The serve pod to ask for /v1/status: running (ready or not: after its request limit a
    serve pod turns unready but still reports), ready first, then the newest generation."""

    def rank(pod: Mapping[str, Any]) -> tuple[bool, int]:
        conditions = (pod.get("status", {}) or {}).get("conditions", []) or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        labels = (pod.get("metadata", {}) or {}).get("labels", {}) or {}
        try:
            gen = int(labels.get(api.LABEL_GENERATION, "0"))
        except ValueError:
            gen = 0
        return ready, gen

    running = [
        p
        for p in pods
        if not (p.get("metadata", {}) or {}).get("deletionTimestamp")
        and (p.get("status", {}) or {}).get("phase") == "Running"
    ]
    return max(running, key=rank) if running else None


def serve_status(doc: Any) -> ServeStatus | None:
    if not isinstance(doc, Mapping):
        return None
    gen = doc.get("shareGeneration")
    return ServeStatus(
        ready=bool(doc.get("ready", False)),
        requests_served=int(doc.get("requestsServed", 0) or 0),
        limit_reached=bool(doc.get("limitReached", False)),
        share_generation=int(gen) if isinstance(gen, int) else None,
    )


def public_key(doc: Any, index: int) -> str | None:
    """GET <worker>:8081/v1/public-key -> {"name": "server<i>", "publicKey": "<b64>"}."""
    if not isinstance(doc, Mapping) or doc.get("name") != f"server{index}":
        return None
    key = doc.get("publicKey")
    return key if isinstance(key, str) and key else None


def refusals(doc: Any, party: str) -> tuple[Refusal, ...]:
    """GET <party's guard>/guard/refusals (tfe_client.wire.GuardRefusals); () if unreadable or if
    another party answered."""
    try:
        parsed = wire.GuardRefusals.parse(doc)
    except ProtocolError:
        return ()
    if parsed.identity != party:
        return ()
    out = []
    for r in parsed.refusals:
        try:
            seen: datetime | None = datetime.fromisoformat(r.last_seen)
        except ValueError:
            seen = None
        out.append(Refusal(party, r.listener, r.identity, r.reason, r.count, seen))
    return tuple(out)


def generations(doc: Any, model: str) -> tuple[int, ...] | None:
    """GET <worker>/v1/models/NAME/generations -> {"model": NAME, "generations": [newest, ...]}."""
    if not isinstance(doc, Mapping) or doc.get("model") != model:
        return None
    gens = doc.get("generations")
    if not isinstance(gens, list):
        return None
    if not all(isinstance(g, int) and not isinstance(g, bool) for g in gens):
        return None
    return tuple(sorted(gens, reverse=True))
