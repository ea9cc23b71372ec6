"""Thin kopf handlers. Each reconcile: observe (reads), ``reconcile.reconcile`` (pure),
then apply/delete through ``kube.Kube`` and patch the status. A timer per EncryptedModel
re-reads the observed state every ``busy_resync_seconds`` while the model is on its way and every
``resync_seconds`` once it is steady (``resync_due``); status never comes from one-off events.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from tfe_client import mesh as mesh_mod

from . import api, builders, certmgr, metrics, observe, pki
from .builders import Context, Manifest
from .kube import ApiError, Kube, http_get_json, kubernetes_transport
from .reconcile import Plan, Ref, Resource, keys_to_fetch, reconcile
from .settings import Settings
from .spec import IssuerRef, SpecError, parse_spec
from .status import MeshStatus, Status

log = logging.getLogger(__name__)

EventPoster = Callable[[kopf.Body, str, str, str], None]


def _kopf_event(body: kopf.Body, type_: str, reason: str, message: str) -> None:
    kopf.event(body, type=type_, reason=reason, message=message)


@dataclass
class Runtime:
    """What the handlers work with: the settings passed in (nothing is read from the environment
    here), the API client (made at startup unless given), how Events are posted, and a lock per
    EncryptedModel uid (dropped when the object is deleted)."""

    settings: Settings = field(default_factory=Settings)
    kube: Kube | None = None
    in_cluster: bool = False
    post_event: EventPoster = _kopf_event
    locks: dict[str, threading.Lock] = field(default_factory=dict)
    locks_guard: threading.Lock = field(default_factory=threading.Lock)

    def use_proxy(self) -> bool:
        mode = self.settings.http_mode
        return mode == "proxy" or (mode == "auto" and not self.in_cluster)

    def lock(self, uid: str) -> threading.Lock:
        with self.locks_guard:
            return self.locks.setdefault(uid, threading.Lock())

    def forget(self, uid: str) -> None:
        with self.locks_guard:
            self.locks.pop(uid, None)


# The runtime of the registry built last (build_registry); handlers read it at call time.
RUNTIME = Runtime()


def build_registry(runtime: Runtime) -> kopf.OperatorRegistry:
    """An explicit kopf registry with every handler of the operator, for ``runtime`` (its
    settings give the resync interval). ``kopf.run(registry=...)`` / ``kopf.operator(...)``."""
    global RUNTIME
    RUNTIME = runtime
    registry = kopf.OperatorRegistry()
    resource = (api.GROUP, api.VERSION, api.PLURAL)
    # kopf's own credentials handlers live in its default registry: name the one we use (the
    # kubernetes client's configuration: kubeconfig, or the pod's service account)
    kopf.on.login(registry=registry)(kopf.login_via_client)
    kopf.on.startup(registry=registry)(configure)
    kopf.on.probe(id="encryptedModels", registry=registry)(probe_models)
    s = runtime.settings
    tick = min(s.busy_resync_seconds, s.resync_seconds)
    kopf.timer(*resource, interval=tick, registry=registry)(resync)
    kopf.on.create(*resource, registry=registry)(changed)
    kopf.on.update(*resource, registry=registry)(changed)
    kopf.on.event(*resource, registry=registry)(forget_deleted)
    return registry


def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    s = RUNTIME.settings
    settings.watching.server_timeout = s.watch_server_timeout
    settings.watching.client_timeout = s.watch_client_timeout
    settings.watching.connect_timeout = s.watch_connect_timeout
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{api.GROUP}/finalizer"
    settings.posting.level = logging.INFO
    if RUNTIME.kube is None:
        transport, in_cluster = kubernetes_transport()
        RUNTIME.kube = Kube(transport)
        RUNTIME.in_cluster = in_cluster


def probe_models(**_: Any) -> int:
    return sum(metrics.PHASES.counts().values())


STEADY_PHASES = frozenset({"Serving", "Stopped", "Failed"})
# A model stuck on its way (a missing ConfigMap, an image that does not pull, a long share Job)
# goes back to the steady cadence after this long in one phase.
BUSY_WINDOW_SECONDS = 300.0


def resync_due(phase: object, last: float | None, now: float, settings: Settings,
               phase_since: float | None = None) -> bool:
    """Whether the timer's tick reads the model now: a model on its way (phase not steady, seen
    in that phase for less than BUSY_WINDOW_SECONDS) at every tick (busy_resync_seconds), any
    other once resync_seconds passed since it was last read (``last``, ``phase_since``:
    monotonic seconds; ``last`` None if never read by this process)."""
    if last is None:
        return True
    fresh = phase_since is None or now - phase_since < BUSY_WINDOW_SECONDS
    busy = phase not in STEADY_PHASES and fresh
    return busy or now - last >= settings.resync_seconds - 0.05  # a tick may come a little early


def resync(
    body: kopf.Body,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    last = memo.get("last_read")
    remembered = memo.get("status")
    phase = remembered.phase if isinstance(remembered, Status) else status.get("phase")
    now = time.monotonic()
    if memo.get("phase") != phase or not isinstance(memo.get("phase_since"), float):
        memo["phase"], memo["phase_since"] = phase, now
    last_read = last if isinstance(last, float) else None
    if resync_due(phase, last_read, now, RUNTIME.settings, memo["phase_since"]):
        _reconcile(body, meta, spec, status, patch, memo)


def changed(
    body: kopf.Body,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """React at once to a new or changed spec (the timer would at its next tick)."""
    _reconcile(body, meta, spec, status, patch, memo)


def forget_deleted(event: kopf.RawEvent, **_: Any) -> None:
    if event.get("type") == "DELETED":
        obj = event.get("object", {})
        m = obj.get("metadata", {})
        metrics.PHASES.forget(f"{m.get('namespace')}/{m.get('name')}")
        RUNTIME.forget(str(m.get("uid", "")))


# ---------------------------------------------------------------- the one reconcile


def _reconcile(
    body: kopf.Body,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
) -> None:
    kube = RUNTIME.kube
    assert kube is not None, "operator not started"
    name, namespace, uid = str(meta.get("name")), str(meta.get("namespace")), str(meta.get("uid"))
    key = f"{namespace}/{name}"
    if meta.get("deletionTimestamp"):
        return
    with RUNTIME.lock(uid):
        memo["last_read"] = time.monotonic()
        body_status = dict(status)
        # If the object has not changed since this process last read it, its own status
        # patch is not visible yet: continue from what it wrote. Any change (our patch
        # landing, or anyone else's write) makes the body authoritative again.
        rv = str(meta.get("resourceVersion", ""))
        remembered = memo.get("status") if memo.get("status_rv") == rv else None
        # The one conversion from the object's status: reconcile works on the typed Status.
        current = remembered if isinstance(remembered, Status) else Status.from_dict(body_status)
        memo["status_rv"] = rv
        now = datetime.now(UTC)
        try:
            parsed = parse_spec(dict(spec))
        except SpecError as e:
            new = dataclasses.replace(
                current,
                phase="Failed",
                message=f"invalid spec: {e}",
                observed_generation=int(meta.get("generation", 1) or 1),
            )
            _patch_status(patch, body_status, current.to_dict(), new.to_dict())
            memo["status"] = new
            metrics.RECONCILES.labels(result="invalid").inc()
            metrics.PHASES.set(key, "Failed")
            return
        ctx = Context.make(name, namespace, uid, parsed, RUNTIME.settings)
        mesh: pki.MeshPlan | None = None
        if not parsed.external:
            rotation = str((meta.get("annotations") or {}).get(api.ANNOTATION_ROTATE_MESH, ""))
            try:
                mesh = ensure_mesh(kube, ctx, rotation, now)
            except ApiError as e:
                log.warning("%s: mesh certificates: %s", key, e)
                metrics.RECONCILES.labels(result="error").inc()
                return
            if mesh.pending:
                _hold_for_certificates(patch, body_status, meta, mesh, memo)
                return
            if mesh.reason:
                RUNTIME.post_event(body, "Normal", "MeshCertificatesIssued", mesh.reason[:1000])
            ctx = dataclasses.replace(ctx, mesh_hash=mesh.hash)
        res = Resource(
            ctx=ctx,
            generation=int(meta.get("generation", 1) or 1),
            created=observe.parse_time(meta.get("creationTimestamp")),
            mesh=MeshStatus.from_dict(mesh.status) if mesh is not None else None,
            refresh_request=str(
                (meta.get("annotations") or {}).get(api.ANNOTATION_REFRESH_SHARES, "")
            ),
        )
        try:
            obs = observe_model(kube, res, current, mesh)
        except ApiError as e:
            log.warning("%s: reading observed state failed: %s", key, e)
            metrics.RECONCILES.labels(result="error").inc()
            return
        plan = reconcile(res, current, obs, now)
        errors = ensure_share_identities(kube, ctx, mesh, plan, now) if mesh is not None else []
        errors += execute(kube, namespace, plan)
        _patch_status(patch, body_status, current.to_dict(), plan.status.to_dict())
        memo["status"] = plan.status
        _post_events(body, plan, memo, errors)
        _record_metrics(key, plan)
        metrics.RECONCILES.labels(result="error" if errors else "success").inc()


# ---------------------------------------------------------------- the mesh PKI (docs/mesh.md)


def _hold_for_certificates(
    patch: kopf.Patch,
    body_status: Mapping[str, Any],
    meta: kopf.Meta,
    mesh: pki.MeshPlan,
    memo: kopf.Memo,
) -> None:
    """cert-manager has not issued every identity (or they disagree on the CA): nothing is
    created or rolled until it has; the status says which identity waits or failed, and why.
    Pods already running keep the certificates they mounted."""
    new = {
        **body_status,
        "phase": body_status.get("phase") or "Pending",
        "message": f"mesh certificates not ready: {mesh.pending}"[:2000],
        "mesh": mesh.status,
        "observedGeneration": int(meta.get("generation", 1) or 1),
    }
    _patch_status(patch, body_status, body_status, new)
    memo.pop("status", None)
    memo.pop("status_rv", None)
    metrics.RECONCILES.labels(result="waiting").inc()


def ensure_mesh(kube: Kube, ctx: Context, rotation: str, now: datetime) -> pki.MeshPlan:
    """Read the mesh Secrets (the CA in full, the leaves' metadata only), write what
    ``pki.plan_mesh`` says is missing or stale (the CA first). Keys are never logged.
    With spec.mesh.issuerRef: cert-manager issues them (``ensure_issued``)."""
    if ctx.spec.mesh.issuer_ref is not None:
        return ensure_issued(kube, ctx, ctx.spec.mesh.issuer_ref, now)
    m, ns = ctx.name, ctx.namespace
    ca, ca_rotation, ca_owner = pki.parse_ca_secret(
        kube.get("v1", "Secret", ns, builders.mesh_ca_secret_name(m))
    )
    leaves: dict[str, pki.LeafInfo] = {}
    for identity in pki.IDENTITIES:
        info = pki.parse_leaf_metadata(
            kube.get_metadata("v1", "Secret", ns, builders.mesh_secret_name(m, identity))
        )
        if info is not None:
            leaves[identity] = info
    plan = pki.plan_mesh(ctx, pki.Existing(ca, ca_rotation, ca_owner, leaves), rotation, now)
    for manifest in plan.apply:
        kube.apply(manifest)
    if plan.reason:
        names = ", ".join(str(x["metadata"]["name"]) for x in plan.apply)
        log.info("%s/%s: mesh certificates issued (%s): %s", ns, m, plan.reason, names)
    return plan


def _secret_data(secret: Mapping[str, Any] | None, with_key: bool) -> dict[str, bytes] | None:
    """An issued Secret's certificates (and its key only when asked: the operator's own)."""
    if secret is None:
        return None
    keys = ("tls.crt", "ca.crt", "tls.key") if with_key else ("tls.crt", "ca.crt")
    data = secret.get("data") or {}
    out: dict[str, bytes] = {}
    for k in keys:
        try:
            out[k] = base64.b64decode(data.get(k) or "")
        except ValueError:
            out[k] = b""
    return out


def ensure_issued(kube: Kube, ctx: Context, issuer: IssuerRef, now: datetime) -> pki.MeshPlan:
    """spec.mesh.issuerRef: apply a cert-manager Certificate per identity, read what it issued
    (``certmgr.plan_issued`` judges it), own the issued Secrets (an earlier EncryptedModel's
    are deleted so that cert-manager issues new keys). An API error on a Certificate (e.g.
    cert-manager is not installed) is reported as pending, never raised."""
    ns = ctx.namespace
    observed: dict[str, certmgr.Issued] = {}
    for identity in certmgr.IDENTITIES:
        name = certmgr.certificate_name(ctx.name, identity)
        try:
            cert = kube.get(certmgr.API_VERSION, certmgr.KIND, ns, name)
        except ApiError:
            cert = None
        secret = kube.get("v1", "Secret", ns, name)
        action = certmgr.secret_action(secret, ctx.uid)
        try:
            if action == "delete":
                kube.delete(ns, Ref("v1", "Secret", name))
                log.info(
                    "%s/%s: %s was an earlier model's: deleted for reissue", ns, ctx.name, name
                )
                secret = None
            elif action == "adopt":
                kube.apply(certmgr.secret_owner(ctx, name))
        except ApiError as e:  # not fatal: the next reconcile tries again
            log.warning("%s/%s: owning Secret %s: %s", ns, ctx.name, name, e)
        observed[identity] = certmgr.Issued(
            cert, _secret_data(secret, with_key=identity == mesh_mod.OPERATOR)
        )
    plan = certmgr.plan_issued(ctx, issuer, observed, now)
    if plan.pending:
        # why: the CertificateRequests cert-manager made (they carry the Certificates' labels)
        try:
            crs = kube.list(
                certmgr.API_VERSION, certmgr.REQUEST_KIND, ns, builders.selector(ctx, builders.MESH)
            )
        except ApiError as e:
            log.info("%s/%s: CertificateRequests unreadable: %s", ns, ctx.name, e)
            crs = []
        latest = certmgr.latest_requests(crs)
        observed = {
            i: dataclasses.replace(o, request=latest.get(certmgr.certificate_name(ctx.name, i)))
            for i, o in observed.items()
        }
        plan = certmgr.plan_issued(ctx, issuer, observed, now)
    errors = apply_all(kube, plan.apply)
    if errors:
        why = "; ".join(errors) + " (is cert-manager installed?)"
        log.warning("%s/%s: %s", ns, ctx.name, why)
        pending = f"{why}; {plan.pending}" if plan.pending else why
        plan = dataclasses.replace(plan, pending=pending)
    elif plan.pending:
        log.info("%s/%s: mesh certificates not ready: %s", ns, ctx.name, plan.pending)
    return plan


def ensure_share_identities(
    kube: Kube, ctx: Context, mesh: pki.MeshPlan, plan: Plan, now: datetime
) -> list[str]:
    """Issue share-g<N> for each share Job the plan applies, before the Job (if missing); with
    cert-manager, its Certificate (the Job's pod waits for the Secret). A share Secret the plan
    deletes takes its Certificate with it (else cert-manager would issue it again)."""
    errors: list[str] = []
    issuer = ctx.spec.mesh.issuer_ref
    for manifest in plan.apply:
        if manifest["kind"] != "Job":
            continue
        gen = int(manifest["metadata"]["labels"][api.LABEL_GENERATION])
        name = builders.share_secret_name(ctx.name, gen)
        try:
            if issuer is not None:
                kube.apply(certmgr.share_certificate(ctx, issuer, gen))
                # once issued, its Secret goes with the model too (see ensure_issued)
                found = kube.get_metadata("v1", "Secret", ctx.namespace, name)
                action = certmgr.secret_action(found, ctx.uid)
                if action == "adopt":
                    kube.apply(certmgr.secret_owner(ctx, name))
                elif action == "delete":
                    kube.delete(ctx.namespace, Ref("v1", "Secret", name))
            elif kube.get_metadata("v1", "Secret", ctx.namespace, name) is None:
                assert mesh.ca is not None
                kube.apply(pki.share_secret(ctx, mesh.ca, gen, now))
                log.info("%s/%s: mesh identity share-g%d issued", ctx.namespace, ctx.name, gen)
        except ApiError as e:
            errors.append(f"{'Certificate' if issuer else 'Secret'} {name}: {e}")
    if issuer is not None:
        deleted = [(ref.kind, ref.name) for ref in plan.delete]
        for name in certmgr.share_deletes(deleted, ctx.name):
            try:
                kube.delete(ctx.namespace, Ref(certmgr.API_VERSION, certmgr.KIND, name))
            except ApiError as e:
                errors.append(f"delete Certificate {name}: {e}")
    return errors


_OPERATOR_TLS: dict[str, tuple[datetime, ssl.SSLContext]] = {}
_OPERATOR_TLS_GUARD = threading.Lock()


def operator_tls(mesh: pki.MeshPlan, now: datetime) -> ssl.SSLContext:
    """The operator's client TLS context for one mesh: its certificate made from the mesh CA
    (in memory), or the one cert-manager issued (from its Secret). Contexts whose certificate has
    expired are dropped, so the cache holds no more than the meshes of the last certificate lifetime
    (a deleted model's entry goes when its certificate would have expired)."""
    with _OPERATOR_TLS_GUARD:
        for k in [k for k, (not_after, _) in _OPERATOR_TLS.items() if not_after <= now]:
            del _OPERATOR_TLS[k]
    if mesh.operator is not None:
        key = pki.sha256(mesh.trust + mesh.operator.cert)
        with _OPERATOR_TLS_GUARD:
            hit = _OPERATOR_TLS.get(key)
            if hit is None:
                hit = (mesh.operator.not_after, pki.client_context(mesh.trust, mesh.operator))
                _OPERATOR_TLS[key] = hit
            return hit[1]
    ca = mesh.ca
    assert ca is not None
    key = pki.sha256(ca.cert)
    with _OPERATOR_TLS_GUARD:
        hit = _OPERATOR_TLS.get(key)
        if hit is not None and hit[0] - now > pki.OPERATOR_RENEW:
            return hit[1]
        me = pki.operator_identity(ca, now)
        sc = pki.client_context(ca.cert, me)
        _OPERATOR_TLS[key] = (me.not_after, sc)
        return sc


def apply_all(kube: Kube, manifests: Sequence[Manifest]) -> list[str]:
    """Apply every manifest; returns one error per manifest that failed ("Kind name: why")."""
    errors: list[str] = []
    for manifest in manifests:
        try:
            kube.apply(manifest)
        except ApiError as e:
            errors.append(f"{manifest['kind']} {manifest['metadata']['name']}: {e}")
    return errors


def execute(kube: Kube, namespace: str, plan: Plan) -> list[str]:
    """Apply and delete what the plan says; returns the errors (it never stops half-way)."""
    errors = apply_all(kube, plan.apply)
    for ref in plan.delete:
        try:
            kube.delete(namespace, ref)
        except ApiError as e:
            errors.append(f"delete {ref.kind} {ref.name}: {e}")
    for err in errors:
        log.warning("%s: %s", namespace, err)
    return errors


def _patch_status(
    patch: kopf.Patch,
    body_status: Mapping[str, Any],
    current: Mapping[str, Any],
    new: Mapping[str, Any],
) -> None:
    """Merge-patch the status to ``new``: changed keys, and None for keys that went away."""
    for k, v in new.items():
        if body_status.get(k) != v:
            patch.status[k] = v
    for k in set(body_status) | set(current):
        if k not in new and k != "kopf":
            patch.status[k] = None


def _post_events(body: kopf.Body, plan: Plan, memo: kopf.Memo, errors: list[str]) -> None:
    for ev in plan.events:
        RUNTIME.post_event(body, ev.type, ev.reason, ev.message)
    # Apply errors: once per distinct message, not every resync.
    text = "; ".join(errors)
    if text and memo.get("last_error") != text:
        RUNTIME.post_event(body, "Warning", "ApplyFailed", text[:1000])
    memo["last_error"] = text


def _record_metrics(key: str, plan: Plan) -> None:
    metrics.PHASES.set(key, plan.status.phase or "Pending")
    if plan.time_to_serving is not None:
        metrics.TIME_TO_SERVING.observe(plan.time_to_serving)
    for result, seconds in plan.share_durations:
        metrics.SHARE_JOB_DURATION.labels(result=result).observe(seconds)


# ---------------------------------------------------------------- observing (reads only)


def observe_model(
    kube: Kube, res: Resource, status: Status, mesh: pki.MeshPlan | None = None
) -> observe.Observed:
    ctx = res.ctx
    m, ns = ctx.name, ctx.namespace
    external = ctx.spec.external
    pods = [] if external else kube.list("v1", "Pod", ns, builders.selector(ctx, builders.WORKER))
    sts = None if external else kube.get("apps/v1", "StatefulSet", ns, builders.statefulset_name(m))
    jobs = []
    for job in kube.list("batch/v1", "Job", ns, builders.selector(ctx, builders.SHARE)):
        failed = any(
            c.get("type") == "Failed" and c.get("status") == "True"
            for c in (job.get("status", {}) or {}).get("conditions", []) or []
        )
        job_pods = (
            kube.list("v1", "Pod", ns, {"job-name": job["metadata"]["name"]}) if failed else []
        )
        state = observe.job_state(job, job_pods)
        if state is not None:
            jobs.append(state)
    dep = kube.get("apps/v1", "Deployment", ns, builders.serve_deployment_name(m))
    serve = observe.serve_deployment(dep) if dep is not None else None
    serve_pods = kube.list("v1", "Pod", ns, builders.selector(ctx, builders.SERVE))
    endpoint_dep = (
        None
        if external
        else kube.get("apps/v1", "Deployment", ns, builders.endpoint_deployment_name(m))
    )
    endpoint_pods = (
        [] if external else kube.list("v1", "Pod", ns, builders.selector(ctx, builders.ENDPOINT))
    )
    pvcs = (
        []
        if external or ctx.spec.workers.storage.medium == "Memory"
        else [
            str(p["metadata"]["name"])
            for p in kube.list(
                "v1", "PersistentVolumeClaim", ns, builders.selector(ctx, builders.WORKER)
            )
        ]
    )
    base = observe.Observed(
        worker_pods=observe.worker_pods(pods),
        statefulset=sts is not None,
        jobs=tuple(jobs),
        serve=serve,
        serve_pods=len(serve_pods),
        serve_pod_slots=observe.serve_pods(serve_pods),
        client_service=kube.exists("v1", "Service", ns, builders.client_service_name(m)),
        endpoint=observe.endpoint_deployment(endpoint_dep) if endpoint_dep is not None else None,
        endpoint_pods=len(endpoint_pods),
        relay_service=not external
        and kube.exists("v1", "Service", ns, builders.relay_service_name(m)),
        pvcs=tuple(pvcs),
        source_missing=_source_missing(kube, ctx),
    )
    serve_pod = observe.pick_serve_pod(serve_pods)
    serve_status = _serve_status(kube, ctx, serve_pod) if serve_pod is not None else None
    keys: dict[int, str] = {}
    for i in keys_to_fetch(res, status, base):
        k = _public_key(kube, ctx, i, mesh)
        if k:
            keys[i] = k
    gens: dict[int, tuple[int, ...]] = {}
    for i in keys_to_fetch(res, status, base):  # the ready workers
        g = _generations(kube, ctx, i, mesh)
        if g is not None:
            gens[i] = g
    base = dataclasses.replace(base, worker_generations=gens)
    refused: list[observe.Refusal] = []
    if not external:
        parties: list[tuple[Mapping[str, Any], str]] = []
        for worker in pods:
            w = observe.worker_pod(worker)
            if w is not None and w.ready:
                parties.append((worker, mesh_mod.SERVERS[w.index]))
        if serve_pod is not None:
            parties.append((serve_pod, mesh_mod.COORDINATOR))
        for party_pod, party in parties:
            refused += _refusals(kube, ctx, party_pod, party)
    return dataclasses.replace(
        base, serve_status=serve_status, public_keys=keys, refusals=tuple(refused)
    )


def _pod_get(kube: Kube, ctx: Context, pod: Mapping[str, Any], port: int, path: str) -> Any:
    """GET a path of a pod's port (a guard's plain health listener, or an external serve pod's
    client port): through the API server's proxy (proxy mode) or straight to the pod (the
    NetworkPolicies admit the operator there)."""
    name = str(pod["metadata"]["name"])
    if RUNTIME.use_proxy():
        return kube.proxy_get(ctx.namespace, "pods", name, port, path)
    ip = (pod.get("status", {}) or {}).get("podIP")
    if not ip:
        raise OSError(f"pod {name} has no IP yet")
    return http_get_json(f"http://{ip}:{port}{path}", RUNTIME.settings.http_timeout_seconds)


def _refusals(
    kube: Kube, ctx: Context, pod: Mapping[str, Any], party: str
) -> list[observe.Refusal]:
    """What this party's guard refused lately (status.mesh.refused names who and why)."""
    try:
        doc = _pod_get(kube, ctx, pod, api.PORT_GUARD_HEALTH, mesh_mod.REFUSALS_PATH)
    except (ApiError, OSError, ValueError) as e:
        log.info("%s/%s: refusals of %s unavailable: %s", ctx.namespace, ctx.name, party, e)
        return []
    return list(observe.refusals(doc, party))


def _source_missing(kube: Kube, ctx: Context) -> str | None:
    src, ns = ctx.spec.model, ctx.namespace
    if src.config_map is not None and not kube.exists("v1", "ConfigMap", ns, src.config_map.name):
        return f"waiting for ConfigMap {src.config_map.name!r} (model source)"
    if src.secret is not None and not kube.exists("v1", "Secret", ns, src.secret.name):
        return f"waiting for Secret {src.secret.name!r} (model source)"
    if src.pvc is not None and not kube.exists(
        "v1", "PersistentVolumeClaim", ns, src.pvc.claim_name
    ):
        return f"waiting for PersistentVolumeClaim {src.pvc.claim_name!r} (model source)"
    creds = src.s3.credentials if src.s3 is not None else None
    if creds is not None and not kube.exists("v1", "Secret", ns, creds.secret_name):
        return f"waiting for Secret {creds.secret_name!r} (S3 credentials of the model source)"
    return None


def _serve_status(kube: Kube, ctx: Context, pod: Mapping[str, Any]) -> observe.ServeStatus | None:
    """GET /v1/status from one serve pod (not a Service: it routes to ready pods only). In the
    mesh the coordinator has no client port: its guard's plain health listener passes this
    GET to the relay API; external workers: the serve pod's client port."""
    port = api.PORT_SERVE if ctx.spec.external else api.PORT_GUARD_HEALTH
    try:
        doc = _pod_get(kube, ctx, pod, port, "/v1/status")
    except (ApiError, OSError, ValueError) as e:
        log.info("%s/%s: serve status unavailable: %s", ctx.namespace, pod["metadata"]["name"], e)
        return None
    return observe.serve_status(doc)


def _worker_get(kube: Kube, ctx: Context, i: int, mesh: pki.MeshPlan | None, path: str) -> Any:
    """GET a path of worker i's HTTP side. External workers: plain HTTP as before. Ours: through
    the API server's proxy to the guard's health port (proxy mode), or over mTLS as identity
    `operator` (direct; None without a mesh)."""
    timeout = RUNTIME.settings.http_timeout_seconds
    if ctx.spec.external:
        return http_get_json(f"http://{builders.players(ctx)[i]['http']}{path}", timeout)
    if RUNTIME.use_proxy():
        pod = builders.worker_pod_name(ctx.name, i)
        return kube.proxy_get(ctx.namespace, "pods", pod, api.PORT_GUARD_HEALTH, path)
    if mesh is None:
        return None
    server = f"server{i}"
    sc = operator_tls(mesh, datetime.now(UTC))
    host = builders.mesh_host(ctx, server)
    return json.loads(pki.mtls_get(host, api.PORT_GUARD_HTTP, path, sc, server, timeout))


def _public_key(kube: Kube, ctx: Context, i: int, mesh: pki.MeshPlan | None) -> str | None:
    try:
        doc = _worker_get(kube, ctx, i, mesh, "/v1/public-key")
    except (ApiError, OSError, ValueError) as e:
        log.info("%s/%s: public key of server%d unavailable: %s", ctx.namespace, ctx.name, i, e)
        return None
    return None if doc is None else observe.public_key(doc, i)


def _generations(
    kube: Kube, ctx: Context, i: int, mesh: pki.MeshPlan | None
) -> tuple[int, ...] | None:
    """The complete share generations worker i holds (docs/recovery.md), read like its key."""
    try:
        doc = _worker_get(kube, ctx, i, mesh, builders.generations_path(ctx))
    except (ApiError, OSError, ValueError) as e:
        log.info("%s/%s: generations of server%d unavailable: %s", ctx.namespace, ctx.name, i, e)
        return None
    return None if doc is None else observe.generations(doc, ctx.name)
