"""Pure builders: each returns one whole manifest (a plain dict). No I/O here.

Objects per EncryptedModel ``m`` (all owned by the CR):
ConfigMap ``m-tfe-config``, headless Service ``m-workers``, StatefulSet ``m-worker``
(pod ``m-worker-i`` is player ``server<i>``), share Job ``m-share-g<G>``, Deployment
``m-serve`` (the coordinator), Deployment ``m-endpoint`` (the client-facing endpoint, which
relays to the coordinator through Service ``m-relay``), Service ``m`` (the endpoint),
NetworkPolicies ``m-workers``, ``m-coordinator`` and ``m-endpoint``. External workers: no
mesh, no endpoint split (the serve pod itself serves the clients, Service ``m`` selects it).

The party mesh (docs/mesh.md; not for external workers): ConfigMap ``m-mesh`` (each party's
tfe-guard config), Secrets ``m-mesh-ca`` and ``m-mesh-<identity>`` (made by the handler through
``pki``). Every party pod runs ``mesh-init`` (iptables: the raw TF/HTTP ports only from
loopback) and ``guard`` (tfe-guard, a native sidecar); its processes address every party at
loopback ports (tfe.json) and the guards carry the bytes over mutual TLS between pod IPs.
``m-workers`` is the headless Service that gives every party pod a stable DNS name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tfe_client import mesh as mesh_mod
from tfe_client import wire

from . import api
from .settings import Settings
from .spec import DEFAULT_SERVICE_PORT, DEFAULT_TLS_SERVICE_PORT, EncryptedModelSpec

Manifest = dict[str, Any]

WORKER = "worker"
SHARE = "share"
SERVE = "serve"
CONFIG = "config"
NETWORK = "network"
ENDPOINT = "endpoint"
MESH = "mesh"

# Addressable parties other than the workers (mesh.party): two coordinator slots, so that
# the serve pods of two generations can overlap during a rollout; one share slot.
COORDINATOR_PARTIES: tuple[str, ...] = tuple(mesh_mod.party("coordinator", k) for k in (0, 1))
SHARE_PARTY = mesh_mod.party("share", 0)


@dataclass(frozen=True)
class Context:
    """Everything a builder needs: the CR's identity, its parsed spec, operator defaults."""

    name: str
    namespace: str
    uid: str
    spec: EncryptedModelSpec
    image: str
    image_pull_policy: str
    image_pull_secrets: tuple[str, ...] = ()
    operator_pod_labels: Mapping[str, str] = field(default_factory=dict)
    # Settings.health_source_cidrs: also admitted to the health port (an operator outside the
    # cluster reading it through the API server's pod proxy)
    health_source_cidrs: tuple[str, ...] = ()
    log_format: str = "text"  # json: TFE_LOG_FORMAT=json in the player, serve and endpoint pods
    share_backoff_limit: int = 3
    share_deadline_seconds: int = 3600
    # Digest of the mesh CA and long-lived certificates (pki.plan_mesh): in the pod templates,
    # so that a rotation restarts the pods.
    mesh_hash: str = ""

    @classmethod
    def make(
        cls,
        name: str,
        namespace: str,
        uid: str,
        spec: EncryptedModelSpec,
        settings: Settings,
        mesh_hash: str = "",
    ) -> Context:
        return cls(
            name=name,
            namespace=namespace,
            uid=uid,
            spec=spec,
            image=spec.workers.image or settings.worker_image,
            image_pull_policy=spec.workers.image_pull_policy or settings.image_pull_policy,
            image_pull_secrets=(
                settings.image_pull_secrets
                if spec.workers.image_pull_secrets is None
                else spec.workers.image_pull_secrets
            ),
            operator_pod_labels=dict(settings.operator_pod_labels),
            health_source_cidrs=settings.health_source_cidrs,
            log_format=settings.log_format,
            share_backoff_limit=settings.share_backoff_limit,
            share_deadline_seconds=settings.share_deadline_seconds,
            mesh_hash=mesh_hash,
        )


# ---------------------------------------------------------------- names


def config_map_name(m: str) -> str:
    return f"{m}-tfe-config"


def workers_service_name(m: str) -> str:
    return f"{m}-workers"


def statefulset_name(m: str) -> str:
    return f"{m}-worker"


def worker_pod_name(m: str, i: int) -> str:
    return f"{m}-worker-{i}"


def share_job_name(m: str, generation: int) -> str:
    return f"{m}-share-g{generation}"


def serve_deployment_name(m: str) -> str:
    return f"{m}-serve"


def mesh_config_name(m: str) -> str:
    return f"{m}-mesh"


def mesh_ca_secret_name(m: str) -> str:
    return f"{m}-mesh-ca"


def mesh_secret_name(m: str, identity: str) -> str:
    return f"{m}-mesh-{identity}"


def share_secret_name(m: str, generation: int) -> str:
    return mesh_secret_name(m, mesh_mod.share_identity(generation))


def client_service_name(m: str) -> str:
    return m


def endpoint_deployment_name(m: str) -> str:
    return f"{m}-endpoint"


def relay_service_name(m: str) -> str:
    return f"{m}-relay"


def endpoint_policy_name(m: str) -> str:
    return f"{m}-endpoint"


def worker_policy_name(m: str) -> str:
    return f"{m}-workers"


def coordinator_policy_name(m: str) -> str:
    return f"{m}-coordinator"


STATE_VOLUME = "state"


def pvc_names(m: str) -> list[str]:
    """PVCs the StatefulSet's volumeClaimTemplate creates."""
    return [f"{STATE_VOLUME}-{worker_pod_name(m, i)}" for i in range(3)]


def endpoint(ctx: Context) -> str:
    """The in-cluster URL of Service ``m`` (https with serving.tls)."""
    scheme = "https" if serving_tls(ctx) else "http"
    return f"{scheme}://{client_service_name(ctx.name)}.{ctx.namespace}.svc:{client_port(ctx)}"


def serving_tls(ctx: Context) -> bool:
    """TLS on the client port: the endpoint pod's guard terminates it (mesh only)."""
    return ctx.spec.serving.tls is not None and not ctx.spec.external


def client_port(ctx: Context) -> int:
    """Service ``m``'s port: serving.service.port, else 443 with TLS, else 8000 (external workers
    serve no TLS: 8000 even with serving.tls)."""
    svc = ctx.spec.serving.service
    if svc.port is not None:
        return svc.port
    return DEFAULT_TLS_SERVICE_PORT if serving_tls(ctx) else DEFAULT_SERVICE_PORT


def _metrics_port() -> dict[str, Any]:
    return {"name": "metrics", "containerPort": api.PORT_METRICS, "protocol": "TCP"}


def _log_env(ctx: Context) -> list[dict[str, Any]]:
    return [{"name": "TFE_LOG_FORMAT", "value": "json"}] if ctx.log_format == "json" else []



# ---------------------------------------------------------------- common pieces


def selector(ctx: Context, component: str) -> dict[str, str]:
    return {api.LABEL_MODEL: ctx.name, api.LABEL_COMPONENT: component}


def labels(ctx: Context, component: str) -> dict[str, str]:
    return {
        api.LABEL_NAME: "encryptedmodel",
        api.LABEL_INSTANCE: ctx.name,
        api.LABEL_COMPONENT: component,
        api.LABEL_MANAGED_BY: "tfe-operator",
        api.LABEL_PART_OF: "tfe-operator",
        api.LABEL_MODEL: ctx.name,
    }


def owner_reference(ctx: Context) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": ctx.name,
        "uid": ctx.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    ctx: Context,
    name: str,
    component: str,
    extra_labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": ctx.namespace,
        "labels": {**labels(ctx, component), **(extra_labels or {})},
        "ownerReferences": [owner_reference(ctx)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": api.WORKER_UID,
        "runAsGroup": api.WORKER_UID,
        "fsGroup": api.WORKER_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def image_pull_secrets(ctx: Context) -> dict[str, Any]:
    """The pod spec's imagePullSecrets (none: the key is left out)."""
    if not ctx.image_pull_secrets:
        return {}
    return {"imagePullSecrets": [{"name": n} for n in ctx.image_pull_secrets]}


def _config_volume(ctx: Context) -> dict[str, Any]:
    return {"name": "config", "configMap": {"name": config_map_name(ctx.name)}}


_CONFIG_MOUNT = {"name": "config", "mountPath": api.CONFIG_DIR, "readOnly": True}
_TMP_VOLUME = {"name": "tmp", "emptyDir": {}}
_TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}
_CONFIG_FILE = f"{api.CONFIG_DIR}/{api.CONFIG_KEY}"


# Startup and readiness probes run every second with a 1 s timeout (the failure thresholds give
# the same seconds of tolerance as before at 2 s): each probe period was a step of a model's start
# (workers ready, serve ready, endpoint ready), and a probe is one small GET of a health route.
def _http_probe(path: str, port: int | str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": min(2, period),  # not longer than the period (policy engines flag that)
    }


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


# ---------------------------------------------------------------- config


def players(ctx: Context) -> list[dict[str, str]]:
    """The hostmap: server0..server2 in order (docs/worker-contract.md). Operator-managed
    workers are addressed at loopback ports: in every party's pod, its guard forwards them."""
    if ctx.spec.external:
        return [
            {"name": f"server{i}", "tf": f"{w.host}:{w.port}", "http": f"{w.host}:{w.http_port}"}
            for i, w in enumerate(ctx.spec.workers.external)
        ]
    return [
        {
            "name": f"server{i}",
            "tf": f"127.0.0.1:{api.PORT_TF + i}",
            "http": f"127.0.0.1:{api.PORT_HTTP + i}",
        }
        for i in range(3)
    ]


def worker_address(ctx: Context, i: int) -> str:
    """Where worker i is reached from other pods (for status): external host:port, or its
    guard's mTLS gRPC listener."""
    if ctx.spec.external:
        return players(ctx)[i]["tf"]
    return f"{mesh_host(ctx, mesh_mod.SERVERS[i])}:{api.PORT_GUARD_GRPC}"


def tfe_config(ctx: Context) -> str:
    return json.dumps({"players": players(ctx)}, indent=2) + "\n"


def config_hash(ctx: Context) -> str:
    return hashlib.sha256(tfe_config(ctx).encode()).hexdigest()[:16]


def config_map(ctx: Context) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(ctx, config_map_name(ctx.name), CONFIG),
        "data": {api.CONFIG_KEY: tfe_config(ctx)},
    }


# ---------------------------------------------------------------- the mesh

MESH_CONFIG_DIR = f"{api.CONFIG_DIR}/mesh"
MESH_PKI_DIR = f"{api.CONFIG_DIR}/pki"
MESH_PKI = {
    "ca": f"{MESH_PKI_DIR}/ca.crt",
    "cert": f"{MESH_PKI_DIR}/tls.crt",
    "key": f"{MESH_PKI_DIR}/tls.key",
}
# What the guard's plain health listener passes on (GET only): probes and the public key
# (the operator's proxy-mode read goes through the API server, which holds no certificate).
# The guard answers its own /guard/refusals (who it refused and why: status.mesh.refused).
HEALTH_PATHS = ("/healthz", "/readyz", "/v1/public-key", mesh_mod.REFUSALS_PATH)
# The coordinator's (in front of its relay API): probes, the status the operator reads
# (requestsServed, limitReached) and the coordinator-side metrics. All of it was public on
# the client port before the endpoint split; predictions and model info are not here.
COORDINATOR_HEALTH_PATHS = ("/healthz", "/readyz", "/v1/status", "/metrics", mesh_mod.REFUSALS_PATH)


def generations_path(ctx: Context) -> str:
    """The share generations a worker holds (public; read every resync, docs/recovery.md)."""
    return f"/v1/models/{ctx.name}/generations"


def mesh_host(ctx: Context, party: str) -> str:
    """The stable DNS name of a party's pod (server<i>, coordinator, coordinator-1, share)."""
    m, ns, svc = ctx.name, ctx.namespace, workers_service_name(ctx.name)
    if party in mesh_mod.SERVERS:
        return f"{worker_pod_name(m, mesh_mod.SERVERS.index(party))}.{svc}.{ns}.svc"
    return f"{party}.{svc}.{ns}.svc"


def mesh(ctx: Context) -> mesh_mod.Mesh:
    ports = mesh_mod.Ports(
        tf=(api.PORT_TF, api.PORT_TF + 1, api.PORT_TF + 2),
        http=(api.PORT_HTTP, api.PORT_HTTP + 1, api.PORT_HTTP + 2),
        coordinators=tuple(
            mesh_mod.COORDINATOR_TF_PORT + k for k in range(len(COORDINATOR_PARTIES))
        ),
        shares=(mesh_mod.SHARE_TF_PORT,),
    )
    listen, dial = mesh_mod.tcp_addressing(lambda party: mesh_host(ctx, party))
    return mesh_mod.Mesh(ports, listen, dial)


def relay_host(ctx: Context) -> str:
    """Where endpoint pods reach the current coordinator: Service ``m-relay`` (ready serve pods)."""
    return f"{relay_service_name(ctx.name)}.{ctx.namespace}.svc"


def guard_config(ctx: Context, identity: str, slot: int = 0) -> dict[str, Any]:
    """One party's tfe-guard config. Workers and coordinators also have the plain health
    listener (the kubelet's probes, the operator's reads through the API server). The
    endpoint dials the coordinators' relay Service, not a slot's pod name: whichever serve
    pod is ready answers, so the endpoint's config never changes with the slot."""
    cfg = mesh(ctx).guard_config(identity, dict(MESH_PKI), slot)
    health = f"tcp:0.0.0.0:{api.PORT_GUARD_HEALTH}"
    if identity in mesh_mod.SERVERS:
        i = mesh_mod.SERVERS.index(identity)
        cfg["health"] = {
            "listen": health,
            "backend": f"127.0.0.1:{api.PORT_HTTP + i}",
            "paths": [*HEALTH_PATHS, generations_path(ctx)],
        }
    elif identity == mesh_mod.COORDINATOR:
        cfg["health"] = {
            "listen": health,
            "backend": f"127.0.0.1:{mesh_mod.RELAY_PORT}",
            "paths": list(COORDINATOR_HEALTH_PATHS),
        }
    elif identity == mesh_mod.ENDPOINT:
        for out in cfg["outbound"]:
            out["dial"] = f"tcp:{relay_host(ctx)}:{api.PORT_GUARD_HTTP}"
        if serving_tls(ctx):
            cfg["public"] = {
                "listen": f"tcp:0.0.0.0:{api.PORT_SERVE_TLS}",
                "backend": f"127.0.0.1:{api.PORT_SERVE}",
                "cert": f"{api.SERVING_TLS_DIR}/tls.crt",
                "key": f"{api.SERVING_TLS_DIR}/tls.key",
            }
    return cfg


def _guard_json(cfg: Mapping[str, Any]) -> str:
    return json.dumps(cfg, indent=1, sort_keys=True) + "\n"


ENDPOINT_GUARD_FILE = f"{mesh_mod.ENDPOINT}.json"


def mesh_config_map(ctx: Context) -> Manifest:
    """Guard configs of the long-lived parties; the share Job carries its own (per generation)."""
    data = {f"{s}.json": _guard_json(guard_config(ctx, s)) for s in mesh_mod.SERVERS}
    for k, party in enumerate(COORDINATOR_PARTIES):
        data[f"{party}.json"] = _guard_json(guard_config(ctx, mesh_mod.COORDINATOR, k))
    data[ENDPOINT_GUARD_FILE] = _guard_json(guard_config(ctx, mesh_mod.ENDPOINT))
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(ctx, mesh_config_name(ctx.name), MESH),
        "data": data,
    }


def _mesh_tcp_ports(health: bool) -> list[dict[str, Any]]:
    ports = [
        {"name": "mesh-grpc", "containerPort": api.PORT_GUARD_GRPC, "protocol": "TCP"},
        {"name": "mesh-http", "containerPort": api.PORT_GUARD_HTTP, "protocol": "TCP"},
    ]
    if health:
        ports.append({"name": "health", "containerPort": api.PORT_GUARD_HEALTH, "protocol": "TCP"})
    return ports


# Drop TCP to the raw TF/HTTP ports unless it comes in on loopback: TF binds 0.0.0.0 and
# cannot be told otherwise. Fails closed: without the rule the pod does not start.
MESH_INIT_SCRIPT = "\n".join(
    [
        "set -eu",
        f"rule='-p tcp -m multiport --dports {','.join(api.RAW_PORT_RANGES)} ! -i lo -j DROP'",
        "iptables-nft -C INPUT $rule 2>/dev/null || iptables-nft -A INPUT $rule",
        "if [ -s /proc/net/if_inet6 ]; then",
        "  ip6tables-nft -C INPUT $rule 2>/dev/null || ip6tables-nft -A INPUT $rule",
        "fi",
        "iptables-nft -S INPUT",
    ]
)


def mesh_init_container(ctx: Context) -> dict[str, Any]:
    """Root with NET_ADMIN only, in the pod's own network namespace; runs before anything."""
    return {
        "name": "mesh-init",
        "image": ctx.image,
        "imagePullPolicy": ctx.image_pull_policy,
        "command": ["/bin/sh", "-c", MESH_INIT_SCRIPT],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


GUARD_GOMAXPROCS = {"name": "GOMAXPROCS", "value": "1"}


def guard_container(
    ctx: Context,
    command: list[str],
    mounts: list[dict[str, Any]],
    env: list[dict[str, Any]] | None = None,
    health: bool = False,
    inbound: bool = True,
) -> dict[str, Any]:
    """tfe-guard as a native sidecar (an init container that keeps running, Kubernetes >= 1.29):
    up before the party's process starts, stopped after it ends (a Job still completes).
    inbound=False (the endpoint): loopback outbound listeners only, nothing on the pod IP to
    declare or probe."""
    c: dict[str, Any] = {
        "name": "guard",
        "image": ctx.image,
        "imagePullPolicy": ctx.image_pull_policy,
        "restartPolicy": "Always",
        "command": command,
        # One Go thread for the guard's goroutines: it shares the pod's cores with its party, and
        # hand-offs between Go threads cost a guard 15-20% more CPU per call (README, Performance).
        "env": [*(env or []), GUARD_GOMAXPROCS],
    }
    if inbound:
        c["ports"] = _mesh_tcp_ports(health)
        c["startupProbe"] = {
            "tcpSocket": {"port": api.PORT_GUARD_GRPC},
            "periodSeconds": 1,
            "failureThreshold": 30,
        }
    c.update(
        {
            "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}},
            "securityContext": container_security_context(),
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": mounts,
        }
    )
    return c


def _mesh_config_volume(ctx: Context) -> dict[str, Any]:
    return {"name": "mesh-config", "configMap": {"name": mesh_config_name(ctx.name)}}


_MESH_CONFIG_MOUNT = {"name": "mesh-config", "mountPath": MESH_CONFIG_DIR, "readOnly": True}
_MESH_PKI_MOUNT = {"name": "mesh-pki", "mountPath": MESH_PKI_DIR, "readOnly": True}
_SECRET_MODE = 0o440  # owner root, group fsGroup (the guard's group)


def _mesh_secret_volume(ctx: Context, identity: str) -> dict[str, Any]:
    return {
        "name": "mesh-pki",
        "secret": {"secretName": mesh_secret_name(ctx.name, identity), "defaultMode": _SECRET_MODE},
    }


def mesh_annotations(ctx: Context) -> dict[str, str]:
    return {api.ANNOTATION_CONFIG_HASH: config_hash(ctx), api.ANNOTATION_MESH_HASH: ctx.mesh_hash}


# ---------------------------------------------------------------- workers


def workers_service(ctx: Context) -> Manifest:
    """Headless: the stable DNS names of every party pod of this model (the StatefulSet's
    pods, and the share and serve pods through hostname/subdomain); only guard ports."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(ctx, workers_service_name(ctx.name), WORKER),
        "spec": {
            "clusterIP": "None",
            # Parties must resolve each other before they are ready.
            "publishNotReadyAddresses": True,
            "selector": {api.LABEL_MODEL: ctx.name},
            "ports": [
                {
                    "name": "mesh-grpc",
                    "port": api.PORT_GUARD_GRPC,
                    "targetPort": api.PORT_GUARD_GRPC,
                    "protocol": "TCP",
                },
                {
                    "name": "mesh-http",
                    "port": api.PORT_GUARD_HTTP,
                    "targetPort": api.PORT_GUARD_HTTP,
                    "protocol": "TCP",
                },
            ],
        },
    }


def worker_affinity(ctx: Context) -> dict[str, Any]:
    term = {
        "labelSelector": {"matchLabels": selector(ctx, WORKER)},
        "topologyKey": "kubernetes.io/hostname",
    }
    if ctx.spec.workers.spread == "Required":
        return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term}
            ]
        }
    }


# The player's name comes from the pod ordinal: m-worker-2 -> server2.
PLAYER_SCRIPT = (
    'exec tfe-worker player "server${POD_NAME##*-}"'
    f" --config {_CONFIG_FILE} --state {api.STATE_DIR} --spool {api.SPOOL_DIR}"
    " --http-bind 127.0.0.1"
    f" --metrics-port {api.PORT_METRICS}"
)
WORKER_GUARD_SCRIPT = f'exec tfe-guard --config "{MESH_CONFIG_DIR}/server${{POD_NAME##*-}}.json"'


def worker_pki_volume(ctx: Context) -> dict[str, Any]:
    """The three workers' Secrets in one projected volume, one folder per pod name: a
    StatefulSet cannot give each pod its own volume, so each guard mounts only its own
    folder (subPathExpr); the player container mounts none of it."""
    sources = []
    for i, s in enumerate(mesh_mod.SERVERS):
        pod = worker_pod_name(ctx.name, i)
        sources.append(
            {
                "secret": {
                    "name": mesh_secret_name(ctx.name, s),
                    "items": [
                        {"key": k, "path": f"{pod}/{k}"} for k in ("ca.crt", "tls.crt", "tls.key")
                    ],
                }
            }
        )
    return {"name": "mesh-pki", "projected": {"defaultMode": _SECRET_MODE, "sources": sources}}


# Memory of a worker and of a coordinator (serve pod, share/re-share Job) when the spec names
# none: measured peak RSS of the digits MLP flow with margin (docs/operator.md, "Memory").
WORKER_MEMORY = {"requests": "768Mi", "limits": "2Gi"}
COORDINATOR_MEMORY = {"requests": "1280Mi", "limits": "3Gi"}


def with_memory(resources: Mapping[str, Any], default: Mapping[str, str]) -> dict[str, Any]:
    """The spec's resources, with default's memory request and limit where the spec sets neither
    (a memory request or limit of its own is kept as it is: Kubernetes fills in the other)."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in resources.items()}
    if any("memory" in (out.get(k) or {}) for k in ("requests", "limits")):
        return out
    for k in ("requests", "limits"):
        out[k] = {**(out.get(k) or {}), "memory": default[k]}
    return out


def worker_statefulset(ctx: Context) -> Manifest:
    w = ctx.spec.workers
    storage = w.storage
    memory = storage.medium == "Memory"
    volumes: list[dict[str, Any]] = [
        _config_volume(ctx),
        {"name": "spool", "emptyDir": {"medium": "Memory"}},
        dict(_TMP_VOLUME),
        _mesh_config_volume(ctx),
        worker_pki_volume(ctx),
    ]
    if memory:
        volumes.append(
            {"name": STATE_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": storage.size}}
        )
    # The player's TF and HTTP ports are reached through the guard only; the kubelet probes
    # them through the guard's plain health listener.
    health: int | str = api.PORT_GUARD_HEALTH
    container: dict[str, Any] = {
        "name": "player",
        "image": ctx.image,
        "imagePullPolicy": ctx.image_pull_policy,
        "command": ["/bin/sh", "-c", PLAYER_SCRIPT],
        "env": [
            _field_env("POD_NAME", "metadata.name"),
            {"name": "HOME", "value": "/tmp"},
            *_log_env(ctx),
        ],
        "ports": [_metrics_port()],
        "startupProbe": _http_probe("/healthz", health, 1, 180),
        "readinessProbe": _http_probe("/readyz", health, 1, 6),
        "livenessProbe": _http_probe("/healthz", health, 10, 3),
        "resources": with_memory(w.resources, WORKER_MEMORY),
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            dict(_CONFIG_MOUNT),
            {"name": STATE_VOLUME, "mountPath": api.STATE_DIR},
            {"name": "spool", "mountPath": api.SPOOL_DIR},
            dict(_TMP_MOUNT),
        ],
    }
    guard = guard_container(
        ctx,
        ["/bin/sh", "-c", WORKER_GUARD_SCRIPT],
        [
            dict(_MESH_CONFIG_MOUNT),
            {**_MESH_PKI_MOUNT, "subPathExpr": "$(POD_NAME)"},
        ],
        env=[_field_env("POD_NAME", "metadata.name")],
        health=True,
    )
    pod_spec: dict[str, Any] = {
        "enableServiceLinks": False,
        **image_pull_secrets(ctx),
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": 10,
        "affinity": worker_affinity(ctx),
        "initContainers": [mesh_init_container(ctx), guard],
        "containers": [container],
        "volumes": volumes,
    }
    if w.node_selector:
        pod_spec["nodeSelector"] = dict(w.node_selector)
    if w.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in w.tolerations]
    if w.runtime_class_name:
        pod_spec["runtimeClassName"] = w.runtime_class_name
    spec: dict[str, Any] = {
        "serviceName": workers_service_name(ctx.name),
        "replicas": 3,
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": selector(ctx, WORKER)},
        "updateStrategy": {"type": "RollingUpdate"},
        "template": {
            "metadata": {"labels": labels(ctx, WORKER), "annotations": mesh_annotations(ctx)},
            "spec": pod_spec,
        },
    }
    if not memory:
        claim: dict[str, Any] = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": storage.size}},
        }
        if storage.storage_class_name:
            claim["storageClassName"] = storage.storage_class_name
        spec["volumeClaimTemplates"] = [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": STATE_VOLUME, "labels": labels(ctx, WORKER)},
                "spec": claim,
            }
        ]
        spec["persistentVolumeClaimRetentionPolicy"] = {
            "whenDeleted": "Delete" if storage.retain_policy == "Delete" else "Retain",
            "whenScaled": "Retain",
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(ctx, statefulset_name(ctx.name), WORKER),
        "spec": spec,
    }


# ---------------------------------------------------------------- coordinators


def model_volume(ctx: Context) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(volumes, mounts, share CLI args) that give the share Job its model."""
    src = ctx.spec.model
    mount = {"name": "model", "mountPath": api.MODEL_DIR, "readOnly": True}
    if src.config_map is not None:
        ref = src.config_map
        vol = {
            "name": "model",
            "configMap": {"name": ref.name, "items": [{"key": ref.key, "path": ref.key}]},
        }
        return [vol], [mount], ["--model", f"{api.MODEL_DIR}/{ref.key}"]
    if src.secret is not None:
        ref = src.secret
        vol = {
            "name": "model",
            "secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": ref.key}]},
        }
        return [vol], [mount], ["--model", f"{api.MODEL_DIR}/{ref.key}"]
    if src.pvc is not None:
        p = src.pvc
        vol = {
            "name": "model",
            "persistentVolumeClaim": {"claimName": p.claim_name, "readOnly": True},
        }
        return [vol], [mount], ["--model", f"{api.MODEL_DIR}/{p.path}"]
    if src.s3 is not None:
        s3 = src.s3
        args = ["--model", f"s3://{s3.bucket}/{s3.key}", "--sha256", s3.sha256]
        args += ["--s3-region", s3.region]
        if s3.endpoint:
            args += ["--s3-endpoint", s3.endpoint]
        return [], [], args
    assert src.url is not None
    return [], [], ["--model", src.url.url, "--sha256", src.url.sha256]


def model_env(ctx: Context) -> list[dict[str, Any]]:
    """Environment of the share container for its model source: S3 credentials from their
    Secret (read by the share process only, never logged)."""
    s3 = ctx.spec.model.s3
    if s3 is None or s3.credentials is None:
        return []
    c = s3.credentials

    def ref(env: str, key: str, optional: bool = False) -> dict[str, Any]:
        sel: dict[str, Any] = {"name": c.secret_name, "key": key}
        if optional:
            sel["optional"] = True
        return {"name": env, "valueFrom": {"secretKeyRef": sel}}

    env = [
        ref("AWS_ACCESS_KEY_ID", c.access_key_id_key),
        ref("AWS_SECRET_ACCESS_KEY", c.secret_access_key_key),
    ]
    if c.session_token_key:
        env.append(ref("AWS_SESSION_TOKEN", c.session_token_key))
    return env


# The share Job's guard config is per generation (its identity is share-g<N>): it travels in
# the Job's own spec and is written to the guard's private emptyDir.
SHARE_GUARD_SCRIPT = (
    'printf "%s" "$GUARD_CONFIG" > /run/guard/guard.json'
    " && exec tfe-guard --config /run/guard/guard.json"
)


def share_guard_config(ctx: Context, generation: int) -> dict[str, Any]:
    return guard_config(ctx, mesh_mod.share_identity(generation))


@dataclass(frozen=True)
class Reshare:
    """A share Job that derives its generation from `source` without the model
    (docs/recovery.md): `lost` (0..2) recovers that worker from its peers, None refreshes."""

    source: int
    lost: int | None = None

    @property
    def kind(self) -> str:
        return "refresh" if self.lost is None else "recovery"


def share_job(ctx: Context, generation: int, reshare: Reshare | None = None) -> Manifest:
    volumes, mounts, model_args = model_volume(ctx) if reshare is None else ([], [], [])
    job_labels = {api.LABEL_GENERATION: str(generation)}
    external = ctx.spec.external
    coordinator = (
        f"$(POD_IP):{api.PORT_COORDINATOR}" if external else f"127.0.0.1:{mesh_mod.SHARE_TF_PORT}"
    )
    if reshare is None:
        command = [
            "tfe-worker", "share",
            "--config", _CONFIG_FILE,
            *model_args,
            "--name", ctx.name,
            "--generation", str(generation),
            "--coordinator-address", coordinator,
            "--protocol", ctx.spec.protocol,
        ]  # fmt: skip
    else:
        mode = (
            ["--refresh"] if reshare.lost is None else ["--recover", mesh_mod.SERVERS[reshare.lost]]
        )
        command = [
            "tfe-worker", "reshare",
            "--config", _CONFIG_FILE,
            "--name", ctx.name,
            "--from-generation", str(reshare.source),
            "--generation", str(generation),
            *mode,
            "--coordinator-address", coordinator,
        ]  # fmt: skip
    container: dict[str, Any] = {
        "name": "share",
        "image": ctx.image,
        "imagePullPolicy": ctx.image_pull_policy,
        "command": command,
    }
    if external:
        container["env"] = [_field_env("POD_IP", "status.podIP"), {"name": "HOME", "value": "/tmp"}]
        container["ports"] = [
            {"name": "coordinator", "containerPort": api.PORT_COORDINATOR, "protocol": "TCP"}
        ]
    else:
        container["env"] = [{"name": "HOME", "value": "/tmp"}]
    if model_args:
        container["env"] = [*container["env"], *model_env(ctx)]
    container.update(
        {
            "resources": with_memory(ctx.spec.serving.resources, COORDINATOR_MEMORY),
            "securityContext": container_security_context(),
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": [dict(_CONFIG_MOUNT), dict(_TMP_MOUNT), *mounts],
        }
    )
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        **image_pull_secrets(ctx),
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [_config_volume(ctx), dict(_TMP_VOLUME), *volumes],
    }
    if not external:
        identity = mesh_mod.share_identity(generation)
        share_guard_json = _guard_json(share_guard_config(ctx, generation))
        guard = guard_container(
            ctx,
            ["/bin/sh", "-c", SHARE_GUARD_SCRIPT],
            [{"name": "guard-run", "mountPath": "/run/guard"}, dict(_MESH_PKI_MOUNT)],
            env=[{"name": "GUARD_CONFIG", "value": share_guard_json}],
        )
        pod_spec = {
            **pod_spec,
            # share.<m>-workers.<ns>.svc: where the workers' guards reach this pod
            "hostname": SHARE_PARTY,
            "subdomain": workers_service_name(ctx.name),
            "initContainers": [mesh_init_container(ctx), guard],
            "volumes": [
                *pod_spec["volumes"],
                {"name": "guard-run", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                _mesh_secret_volume(ctx, identity),
            ],
        }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(
            ctx,
            share_job_name(ctx.name, generation),
            SHARE,
            extra_labels=job_labels,
            annotations={
                api.ANNOTATION_MODEL_HASH: ctx.spec.model_hash,
                api.ANNOTATION_SHARE_KIND: "share" if reshare is None else reshare.kind,
            },
        ),
        "spec": {
            "backoffLimit": ctx.share_backoff_limit,
            "activeDeadlineSeconds": ctx.share_deadline_seconds,
            # Exit 2 = the model is invalid: retrying cannot help.
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": "share",
                            "operator": "In",
                            "values": [api.EXIT_INVALID_MODEL],
                        },
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": {
                "metadata": {"labels": {**labels(ctx, SHARE), **job_labels}},
                "spec": pod_spec,
            },
        },
    }


def serve_command(ctx: Context, generation: int, slot: int = 0) -> list[str]:
    """The coordinator. In the mesh it serves no client: only its relay API on loopback (for
    the endpoint pods, through its guard); external workers: the client API on :8000 too."""
    s = ctx.spec.serving
    external = ctx.spec.external
    if external:
        coordinator = f"$(POD_IP):{api.PORT_COORDINATOR}"
        listen = ["--port", str(api.PORT_SERVE)]
    else:
        coordinator = f"127.0.0.1:{mesh_mod.COORDINATOR_TF_PORT + slot}"
        listen = ["--relay-port", str(mesh_mod.RELAY_PORT), "--relay-only"]
    cmd = [
        "tfe-worker", "serve",
        "--config", _CONFIG_FILE,
        "--name", ctx.name,
        "--generation", str(generation),
        *listen,
        "--coordinator-address", coordinator,
        "--protocol", ctx.spec.protocol,
        "--max-batch-size", str(s.max_batch_size),
        "--max-wait-ms", str(s.max_wait_ms),
        "--metrics-port", str(api.PORT_METRICS),
    ]  # fmt: skip
    if s.max_requests is not None:
        # Linger: a Deployment must not restart the process into serving N more.
        cmd += ["--max-requests", str(s.max_requests), "--linger-after-limit"]
    # The served count lives on the workers (a replaced serve pod continues it); scoped to this
    # EncryptedModel (a re-created one on retained volumes starts at 0) and to the limit.
    cmd += ["--count-scope", f"{ctx.uid}:{wire.count_scope(s.max_requests)}"]
    if s.token_secret is not None and external:
        cmd += ["--token-file", f"{api.TOKEN_DIR}/token"]
    return cmd


# Both the coordinator and the endpoint drain on SIGTERM: admitted predictions get their
# answers, up to a request's deadline plus a margin (130 s); the preStop pause first lets the
# Service endpoints move away, so that new connections stop arriving before the drain.
PRE_STOP_SECONDS = 5
DRAIN_GRACE_SECONDS = 140


def _token_volume(ctx: Context) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    t = ctx.spec.serving.token_secret
    if t is None:
        return [], []
    vol = {
        "name": "token",
        "secret": {"secretName": t.name, "items": [{"key": t.key, "path": "token"}]},
    }
    return [vol], [{"name": "token", "mountPath": api.TOKEN_DIR, "readOnly": True}]


def serve_template_hash(ctx: Context, generation: int) -> str:
    """Digest of the serve pod template apart from its coordinator slot: when it changes, the
    Deployment rolls and the new pod must take the other slot (reconcile.serve_slot)."""
    template = serve_deployment(ctx, generation, 0, _hash=False)["spec"]["template"]
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def serve_deployment(ctx: Context, generation: int, slot: int = 0, _hash: bool = True) -> Manifest:
    """The serve pod is mesh party COORDINATOR_PARTIES[slot] (hostname coordinator or
    coordinator-1, TF port 4450 or 4451). Consecutive pod templates take turns, so that
    during a rollout (maxSurge 1) the old and the new coordinator are distinct parties."""
    s = ctx.spec.serving
    external = ctx.spec.external
    volumes: list[dict[str, Any]] = [_config_volume(ctx), dict(_TMP_VOLUME)]
    mounts: list[dict[str, Any]] = [dict(_CONFIG_MOUNT), dict(_TMP_MOUNT)]
    env = [{"name": "HOME", "value": "/tmp"}, *_log_env(ctx)]
    container: dict[str, Any] = {
        "name": "serve",
        "image": ctx.image,
        "imagePullPolicy": ctx.image_pull_policy,
        "command": serve_command(ctx, generation, slot),
        "env": env,
    }
    if external:
        token_volumes, token_mounts = _token_volume(ctx)
        volumes += token_volumes
        mounts += token_mounts
        env.insert(0, _field_env("POD_IP", "status.podIP"))
        container["ports"] = [
            {"name": "http", "containerPort": api.PORT_SERVE, "protocol": "TCP"},
            {"name": "coordinator", "containerPort": api.PORT_COORDINATOR, "protocol": "TCP"},
            _metrics_port(),
        ]
        probe_port: int | str = "http"
    else:
        # No client port: the relay API answers on loopback only; the kubelet probes it
        # through the guard's plain health listener.
        container["ports"] = [_metrics_port()]
        probe_port = api.PORT_GUARD_HEALTH
    container.update(
        {
            "startupProbe": _http_probe("/healthz", probe_port, 1, 300),
            "readinessProbe": _http_probe("/readyz", probe_port, 1, 6),
            "livenessProbe": _http_probe("/healthz", probe_port, 10, 3),
            "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
            "resources": with_memory(s.resources, COORDINATOR_MEMORY),
            "securityContext": container_security_context(),
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": mounts,
        }
    )
    pod_spec: dict[str, Any] = {
        "enableServiceLinks": False,
        **image_pull_secrets(ctx),
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": DRAIN_GRACE_SECONDS,
        "containers": [container],
        "volumes": volumes,
    }
    annotations = {api.ANNOTATION_CONFIG_HASH: config_hash(ctx)}
    if not external:
        party = COORDINATOR_PARTIES[slot]
        annotations = mesh_annotations(ctx)
        if _hash:
            annotations[api.ANNOTATION_SERVE_HASH] = serve_template_hash(ctx, generation)
        guard = guard_container(
            ctx,
            ["tfe-guard", "--config", f"{MESH_CONFIG_DIR}/{party}.json"],
            [dict(_MESH_CONFIG_MOUNT), dict(_MESH_PKI_MOUNT)],
            health=True,
        )
        pod_spec = {
            **pod_spec,
            "hostname": party,
            "subdomain": workers_service_name(ctx.name),
            "initContainers": [mesh_init_container(ctx), guard],
            "volumes": [
                *volumes,
                _mesh_config_volume(ctx),
                _mesh_secret_volume(ctx, mesh_mod.COORDINATOR),
            ],
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(ctx, serve_deployment_name(ctx.name), SERVE),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector(ctx, SERVE)},
            # The old generation keeps serving until the new coordinator is ready.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": {**labels(ctx, SERVE), api.LABEL_GENERATION: str(generation)},
                    "annotations": annotations,
                },
                "spec": pod_spec,
            },
        },
    }


# The endpoint process: no TF, a little Python (waitress, urllib3); its threads wait on the relay.
ENDPOINT_RESOURCES: dict[str, Any] = {"requests": {"cpu": "50m", "memory": "96Mi"}}


def endpoint_command(ctx: Context) -> list[str]:
    cmd = [
        "tfe-worker", "endpoint",
        "--relay", f"127.0.0.1:{mesh_mod.RELAY_PORT}",
        "--name", ctx.name,
        "--port", str(api.PORT_SERVE),
        "--metrics-port", str(api.PORT_METRICS),
    ]  # fmt: skip
    if serving_tls(ctx):  # plain HTTP on loopback only: clients come through the guard's TLS
        cmd += ["--host", "127.0.0.1"]
    if ctx.spec.serving.token_secret is not None:
        cmd += ["--token-file", f"{api.TOKEN_DIR}/token"]
    return cmd


def endpoint_deployment(ctx: Context) -> Manifest:
    """The client-facing endpoint (mesh only): parses client HTTP, checks the token, relays
    validated ciphertext to the coordinator's relay API. Its pods share no network namespace
    with any party; the identity ``endpoint`` may call the coordinator's relay only (its
    guard has a single loopback outbound listener, 127.0.0.1:8090 -> Service ``m-relay``,
    and no inbound one). No mesh-init: nothing raw listens here (the client port is meant to
    be reached, the guard's listener is loopback), so the pod needs no NET_ADMIN and meets
    the Pod Security ``restricted`` level. Its template does not depend on the generation or
    the coordinator slot: rollouts of the serve Deployment leave it alone."""
    volumes: list[dict[str, Any]] = [
        dict(_TMP_VOLUME),
        _mesh_config_volume(ctx),
        _mesh_secret_volume(ctx, mesh_mod.ENDPOINT),
    ]
    mounts: list[dict[str, Any]] = [dict(_TMP_MOUNT)]
    token_volumes, token_mounts = _token_volume(ctx)
    volumes += token_volumes
    mounts += token_mounts
    tls = serving_tls(ctx)
    ports = [_metrics_port()]
    if not tls:
        ports.insert(0, {"name": "http", "containerPort": api.PORT_SERVE, "protocol": "TCP"})
    container: dict[str, Any] = {
        "name": "endpoint",
        "image": ctx.image,
        "imagePullPolicy": ctx.image_pull_policy,
        "command": endpoint_command(ctx),
        "env": [{"name": "HOME", "value": "/tmp"}, *_log_env(ctx)],
        "ports": ports,
        # With TLS the probes go the clients' way: through the guard's TLS port to the endpoint.
        "startupProbe": _endpoint_probe("/healthz", tls, 1, 120),
        # Ready when the relay answers ready (a coordinator behind m-relay is ready).
        "readinessProbe": _endpoint_probe("/readyz", tls, 1, 6),
        "livenessProbe": _endpoint_probe("/healthz", tls, 10, 3),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
        "resources": dict(ENDPOINT_RESOURCES),
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    guard_mounts = [dict(_MESH_CONFIG_MOUNT), dict(_MESH_PKI_MOUNT)]
    if tls:
        guard_mounts.append(dict(_SERVING_TLS_MOUNT))
        volumes.append(serving_tls_volume(ctx))
    guard = guard_container(
        ctx,
        ["tfe-guard", "--config", f"{MESH_CONFIG_DIR}/{ENDPOINT_GUARD_FILE}"],
        guard_mounts,
        inbound=False,
    )
    if tls:
        guard["ports"] = [{"name": "https", "containerPort": api.PORT_SERVE_TLS, "protocol": "TCP"}]
    guard_hash = hashlib.sha256(
        _guard_json(guard_config(ctx, mesh_mod.ENDPOINT)).encode()
    ).hexdigest()[:16]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(ctx, endpoint_deployment_name(ctx.name), ENDPOINT),
        "spec": {
            "replicas": ctx.spec.serving.endpoint_replicas,
            "selector": {"matchLabels": selector(ctx, ENDPOINT)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": labels(ctx, ENDPOINT),
                    "annotations": {
                        # its guard config (in m-mesh) and its certificate: a change restarts it
                        api.ANNOTATION_CONFIG_HASH: guard_hash,
                        api.ANNOTATION_MESH_HASH: ctx.mesh_hash,
                    },
                },
                "spec": {
                    "enableServiceLinks": False,
                    **image_pull_secrets(ctx),
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security_context(),
                    "terminationGracePeriodSeconds": DRAIN_GRACE_SECONDS,
                    "initContainers": [guard],
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def _endpoint_probe(path: str, tls: bool, period: int, failures: int) -> dict[str, Any]:
    if not tls:
        return _http_probe(path, "http", period, failures)
    probe = _http_probe(path, api.PORT_SERVE_TLS, period, failures)
    probe["httpGet"]["scheme"] = "HTTPS"  # the kubelet does not verify the certificate
    return probe


_SERVING_TLS_MOUNT = {"name": "serving-tls", "mountPath": api.SERVING_TLS_DIR, "readOnly": True}


def serving_tls_volume(ctx: Context) -> dict[str, Any]:
    """serving.tls.secretName (kubernetes.io/tls; e.g. a cert-manager Certificate's Secret):
    the kubelet updates the files when the Secret changes, and the guard reloads them."""
    assert ctx.spec.serving.tls is not None
    return {
        "name": "serving-tls",
        "secret": {
            "secretName": ctx.spec.serving.tls.secret_name,
            "defaultMode": _SECRET_MODE,
            "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
        },
    }


def relay_service(ctx: Context) -> Manifest:
    """The coordinators' guard HTTP port (mTLS; it admits identity ``endpoint`` to the relay
    API), for the endpoint pods. A ClusterIP Service, so only ready serve pods receive new
    connections: during a rollout the old coordinator keeps answering until the new one is
    ready, and the endpoint never needs to know which coordinator slot is current."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(ctx, relay_service_name(ctx.name), SERVE),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(ctx, SERVE),
            "ports": [
                {
                    "name": "mesh-http",
                    "port": api.PORT_GUARD_HTTP,
                    "targetPort": api.PORT_GUARD_HTTP,
                    "protocol": "TCP",
                }
            ],
        },
    }


def client_service(ctx: Context) -> Manifest:
    """``m``: the client port of the endpoint pods (external workers: of the serve pod), as
    serving.service says (type, annotations, port, nodePort); with serving.tls the port is the
    guard's TLS port (named https)."""
    svc = ctx.spec.serving.service
    name = "https" if serving_tls(ctx) else "http"
    port: dict[str, Any] = {
        "name": name,
        "port": client_port(ctx),
        "targetPort": name,
        "protocol": "TCP",
    }
    if svc.node_port is not None:
        port["nodePort"] = svc.node_port
    spec: dict[str, Any] = {
        "type": svc.type,
        "selector": selector(ctx, SERVE if ctx.spec.external else ENDPOINT),
        "ports": [port],
    }
    if svc.load_balancer_source_ranges:
        spec["loadBalancerSourceRanges"] = list(svc.load_balancer_source_ranges)
    meta = metadata(ctx, client_service_name(ctx.name), ENDPOINT, annotations=svc.annotations)
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


# ---------------------------------------------------------------- network


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": p} for p in ports]


def _components(ctx: Context, *components: str) -> dict[str, Any]:
    """Label selector for this model's pods of the given components."""
    return {
        "matchExpressions": [
            {"key": api.LABEL_MODEL, "operator": "In", "values": [ctx.name]},
            {"key": api.LABEL_COMPONENT, "operator": "In", "values": list(components)},
        ]
    }


def _from_operator(ctx: Context, *ports: int) -> list[dict[str, Any]]:
    if not ctx.operator_pod_labels:
        return []
    return [
        {
            "from": [
                {
                    "namespaceSelector": {},
                    "podSelector": {"matchLabels": dict(ctx.operator_pod_labels)},
                }
            ],
            "ports": _tcp(*ports),
        }
    ]


def _health_from_cidrs(ctx: Context) -> list[dict[str, Any]]:
    """The guard's plain health port (public key, generations, serve status, refusals) from the
    configured CIDRs (Settings.health_source_cidrs): where an operator outside the cluster reads
    it through the API server's pod proxy. None by default; never the mTLS or TF ports."""
    if not ctx.health_source_cidrs:
        return []
    return [
        {
            "from": [{"ipBlock": {"cidr": c}} for c in ctx.health_source_cidrs],
            "ports": _tcp(api.PORT_GUARD_HEALTH),
        }
    ]


# Prometheus, from anywhere, on the metrics port only (it serves /metrics and nothing else).
METRICS_SCRAPE: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": api.PORT_METRICS}]}


def worker_network_policy(ctx: Context) -> Manifest:
    """Workers: the guard's mTLS ports only, from this model's workers, share Job and serve pod
    (never the endpoint pods); the mTLS HTTP and the plain health port also from the operator
    (public keys), the health port also from Settings.health_source_cidrs (an operator outside
    the cluster, through the API server). Raw TF/HTTP ports are closed by the pod's own
    iptables whatever the CNI enforces (docs/mesh.md)."""
    peers = {"podSelector": _components(ctx, WORKER, SHARE, SERVE)}
    ingress: list[dict[str, Any]] = [
        {"from": [peers], "ports": _tcp(api.PORT_GUARD_GRPC, api.PORT_GUARD_HTTP)}
    ]
    ingress += _from_operator(ctx, api.PORT_GUARD_HTTP, api.PORT_GUARD_HEALTH)
    ingress += _health_from_cidrs(ctx)
    ingress.append(METRICS_SCRAPE)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(ctx, worker_policy_name(ctx.name), NETWORK),
        "spec": {
            "podSelector": {"matchLabels": selector(ctx, WORKER)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def coordinator_network_policy(ctx: Context) -> Manifest:
    """Share Job and serve pod: the guard's mTLS gRPC port only from the workers (they fetch
    tensors from the coordinator); the guard's mTLS HTTP port (the relay) only from the
    endpoint pods; the plain health port from the operator (status through the API server or
    directly; the kubelet's probes come from the node) and from Settings.health_source_cidrs.
    No client port: that is the endpoint's."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(ctx, coordinator_policy_name(ctx.name), NETWORK),
        "spec": {
            "podSelector": _components(ctx, SHARE, SERVE),
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": selector(ctx, WORKER)}}],
                    "ports": _tcp(api.PORT_GUARD_GRPC),
                },
                {
                    "from": [{"podSelector": {"matchLabels": selector(ctx, ENDPOINT)}}],
                    "ports": _tcp(api.PORT_GUARD_HTTP),
                },
                *_from_operator(ctx, api.PORT_GUARD_HEALTH),
                *_health_from_cidrs(ctx),
                METRICS_SCRAPE,
            ],
        },
    }


def endpoint_network_policy(ctx: Context) -> Manifest:
    """Endpoint pods: the client port open to anyone; out only to DNS and the coordinators'
    guard HTTP port (so a compromised endpoint cannot even open a connection to a worker)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(ctx, endpoint_policy_name(ctx.name), NETWORK),
        "spec": {
            "podSelector": {"matchLabels": selector(ctx, ENDPOINT)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"ports": _tcp(api.PORT_SERVE_TLS if serving_tls(ctx) else api.PORT_SERVE)},
                METRICS_SCRAPE,
            ],
            "egress": [
                {
                    "to": [{"podSelector": {"matchLabels": selector(ctx, SERVE)}}],
                    "ports": _tcp(api.PORT_GUARD_HTTP),
                },
                {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
            ],
        },
    }


def base_objects(ctx: Context) -> list[Manifest]:
    """What exists whenever the model is not stopped: config, mesh configs, workers, network
    policy. External workers: only the config (the operator runs no workers; their network is
    theirs, and they stay outside the mesh). The mesh Secrets come from the handler (pki)."""
    if ctx.spec.external:
        return [config_map(ctx)]
    return [
        config_map(ctx),
        mesh_config_map(ctx),
        workers_service(ctx),
        worker_network_policy(ctx),
        coordinator_network_policy(ctx),
        endpoint_network_policy(ctx),
        worker_statefulset(ctx),
    ]


def serving_objects(ctx: Context, generation: int, slot: int = 0) -> list[Manifest]:
    """The coordinator, and (mesh) the endpoint in front of it; then the client Service."""
    if ctx.spec.external:
        return [serve_deployment(ctx, generation, slot), client_service(ctx)]
    return [
        serve_deployment(ctx, generation, slot),
        relay_service(ctx),
        endpoint_deployment(ctx),
        client_service(ctx),
    ]
