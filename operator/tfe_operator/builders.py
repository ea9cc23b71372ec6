"""Pure builders: each returns one whole manifest (a plain dict). No I/O here.

Objects per EncryptedModel ``m`` (all owned by the CR):
ConfigMap ``m-tfe-config``, headless Service ``m-workers``, StatefulSet ``m-worker``
(pod ``m-worker-i`` is player ``server<i>``), share Job ``m-share-g<G>``, Deployment
``m-serve``, Service ``m`` (the endpoint), NetworkPolicies ``m-workers`` and ``m-coordinator``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import api
from .settings import Settings
from .spec import EncryptedModelSpec

Manifest = dict[str, Any]

WORKER = "worker"
SHARE = "share"
SERVE = "serve"
CONFIG = "config"
NETWORK = "network"
ENDPOINT = "endpoint"


@dataclass(frozen=True)
class Context:
    """Everything a builder needs: the CR's identity, its parsed spec, operator defaults."""

    name: str
    namespace: str
    uid: str
    spec: EncryptedModelSpec
    image: str
    image_pull_policy: str
    operator_pod_labels: Mapping[str, str] = field(default_factory=dict)
    share_backoff_limit: int = 3
    share_deadline_seconds: int = 3600

    @classmethod
    def make(
        cls, name: str, namespace: str, uid: str, spec: EncryptedModelSpec, settings: Settings
    ) -> Context:
        return cls(
            name=name,
            namespace=namespace,
            uid=uid,
            spec=spec,
            image=spec.workers.image or settings.worker_image,
            image_pull_policy=spec.workers.image_pull_policy or settings.image_pull_policy,
            operator_pod_labels=dict(settings.operator_pod_labels),
            share_backoff_limit=settings.share_backoff_limit,
            share_deadline_seconds=settings.share_deadline_seconds,
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


def client_service_name(m: str) -> str:
    return m


def worker_policy_name(m: str) -> str:
    return f"{m}-workers"


def coordinator_policy_name(m: str) -> str:
    return f"{m}-coordinator"


STATE_VOLUME = "state"


def pvc_names(m: str) -> list[str]:
    """PVCs the StatefulSet's volumeClaimTemplate creates."""
    return [f"{STATE_VOLUME}-{worker_pod_name(m, i)}" for i in range(3)]


def endpoint(ctx: Context) -> str:
    return f"http://{client_service_name(ctx.name)}.{ctx.namespace}.svc:{api.PORT_SERVE}"


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


def _config_volume(ctx: Context) -> dict[str, Any]:
    return {"name": "config", "configMap": {"name": config_map_name(ctx.name)}}


_CONFIG_MOUNT = {"name": "config", "mountPath": api.CONFIG_DIR, "readOnly": True}
_TMP_VOLUME = {"name": "tmp", "emptyDir": {}}
_TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}
_CONFIG_FILE = f"{api.CONFIG_DIR}/{api.CONFIG_KEY}"


def _http_probe(path: str, port: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


# ---------------------------------------------------------------- config


def players(ctx: Context) -> list[dict[str, str]]:
    """The hostmap: server0..server2 in order (docs/worker-contract.md)."""
    m, ns = ctx.name, ctx.namespace
    if ctx.spec.external:
        return [
            {"name": f"server{i}", "tf": f"{w.host}:{w.port}", "http": f"{w.host}:{w.http_port}"}
            for i, w in enumerate(ctx.spec.workers.external)
        ]
    host = [f"{worker_pod_name(m, i)}.{workers_service_name(m)}.{ns}.svc" for i in range(3)]
    return [
        {
            "name": f"server{i}",
            "tf": f"{host[i]}:{api.PORT_TF}",
            "http": f"{host[i]}:{api.PORT_HTTP}",
        }
        for i in range(3)
    ]


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


# ---------------------------------------------------------------- workers


def workers_service(ctx: Context) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(ctx, workers_service_name(ctx.name), WORKER),
        "spec": {
            "clusterIP": "None",
            # Players must resolve each other before they are ready.
            "publishNotReadyAddresses": True,
            "selector": selector(ctx, WORKER),
            "ports": [
                {"name": "tf", "port": api.PORT_TF, "targetPort": "tf", "protocol": "TCP"},
                {"name": "http", "port": api.PORT_HTTP, "targetPort": "http", "protocol": "TCP"},
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
)


def worker_statefulset(ctx: Context) -> Manifest:
    w = ctx.spec.workers
    storage = w.storage
    memory = storage.medium == "Memory"
    volumes: list[dict[str, Any]] = [
        _config_volume(ctx),
        {"name": "spool", "emptyDir": {"medium": "Memory"}},
        dict(_TMP_VOLUME),
    ]
    if memory:
        volumes.append(
            {"name": STATE_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": storage.size}}
        )
    container: dict[str, Any] = {
        "name": "player",
        "image": ctx.image,
        "imagePullPolicy": ctx.image_pull_policy,
        "command": ["/bin/sh", "-c", PLAYER_SCRIPT],
        "env": [_field_env("POD_NAME", "metadata.name"), {"name": "HOME", "value": "/tmp"}],
        "ports": [
            {"name": "tf", "containerPort": api.PORT_TF, "protocol": "TCP"},
            {"name": "http", "containerPort": api.PORT_HTTP, "protocol": "TCP"},
        ],
        "startupProbe": _http_probe("/healthz", "http", 2, 90),
        "readinessProbe": _http_probe("/readyz", "http", 2, 3),
        "livenessProbe": _http_probe("/healthz", "http", 10, 3),
        "resources": dict(w.resources),
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            dict(_CONFIG_MOUNT),
            {"name": STATE_VOLUME, "mountPath": api.STATE_DIR},
            {"name": "spool", "mountPath": api.SPOOL_DIR},
            dict(_TMP_MOUNT),
        ],
    }
    pod_spec: dict[str, Any] = {
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": 10,
        "affinity": worker_affinity(ctx),
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
            "metadata": {
                "labels": labels(ctx, WORKER),
                "annotations": {api.ANNOTATION_CONFIG_HASH: config_hash(ctx)},
            },
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
    assert src.url is not None
    return [], [], ["--model", src.url.url, "--sha256", src.url.sha256]


def share_job(ctx: Context, generation: int) -> Manifest:
    volumes, mounts, model_args = model_volume(ctx)
    job_labels = {api.LABEL_GENERATION: str(generation)}
    command = [
        "tfe-worker", "share",
        "--config", _CONFIG_FILE,
        *model_args,
        "--name", ctx.name,
        "--generation", str(generation),
        "--coordinator-address", f"$(POD_IP):{api.PORT_COORDINATOR}",
        "--protocol", ctx.spec.protocol,
    ]  # fmt: skip
    container: dict[str, Any] = {
        "name": "share",
        "image": ctx.image,
        "imagePullPolicy": ctx.image_pull_policy,
        "command": command,
        "env": [_field_env("POD_IP", "status.podIP"), {"name": "HOME", "value": "/tmp"}],
        "ports": [
            {"name": "coordinator", "containerPort": api.PORT_COORDINATOR, "protocol": "TCP"}
        ],
        "resources": dict(ctx.spec.serving.resources),
        "securityContext": container_security_context(),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [dict(_CONFIG_MOUNT), dict(_TMP_MOUNT), *mounts],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(
            ctx,
            share_job_name(ctx.name, generation),
            SHARE,
            extra_labels=job_labels,
            annotations={api.ANNOTATION_MODEL_HASH: ctx.spec.model_hash},
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
                "spec": {
                    "restartPolicy": "Never",
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": [_config_volume(ctx), dict(_TMP_VOLUME), *volumes],
                },
            },
        },
    }


def serve_command(ctx: Context, generation: int) -> list[str]:
    s = ctx.spec.serving
    cmd = [
        "tfe-worker", "serve",
        "--config", _CONFIG_FILE,
        "--name", ctx.name,
        "--generation", str(generation),
        "--port", str(api.PORT_SERVE),
        "--coordinator-address", f"$(POD_IP):{api.PORT_COORDINATOR}",
        "--protocol", ctx.spec.protocol,
        "--max-batch-size", str(s.max_batch_size),
        "--max-wait-ms", str(s.max_wait_ms),
    ]  # fmt: skip
    if s.max_requests is not None:
        # Linger: a Deployment must not restart the process into serving N more.
        cmd += ["--max-requests", str(s.max_requests), "--linger-after-limit"]
    if s.token_secret is not None:
        cmd += ["--token-file", f"{api.TOKEN_DIR}/token"]
    return cmd


def serve_deployment(ctx: Context, generation: int) -> Manifest:
    s = ctx.spec.serving
    volumes: list[dict[str, Any]] = [_config_volume(ctx), dict(_TMP_VOLUME)]
    mounts: list[dict[str, Any]] = [dict(_CONFIG_MOUNT), dict(_TMP_MOUNT)]
    if s.token_secret is not None:
        volumes.append(
            {
                "name": "token",
                "secret": {
                    "secretName": s.token_secret.name,
                    "items": [{"key": s.token_secret.key, "path": "token"}],
                },
            }
        )
        mounts.append({"name": "token", "mountPath": api.TOKEN_DIR, "readOnly": True})
    container: dict[str, Any] = {
        "name": "serve",
        "image": ctx.image,
        "imagePullPolicy": ctx.image_pull_policy,
        "command": serve_command(ctx, generation),
        "env": [_field_env("POD_IP", "status.podIP"), {"name": "HOME", "value": "/tmp"}],
        "ports": [
            {"name": "http", "containerPort": api.PORT_SERVE, "protocol": "TCP"},
            {"name": "coordinator", "containerPort": api.PORT_COORDINATOR, "protocol": "TCP"},
        ],
        "startupProbe": _http_probe("/healthz", "http", 2, 150),
        "readinessProbe": _http_probe("/readyz", "http", 2, 3),
        "livenessProbe": _http_probe("/healthz", "http", 10, 3),
        "resources": dict(s.resources),
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
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
                    "annotations": {api.ANNOTATION_CONFIG_HASH: config_hash(ctx)},
                },
                "spec": {
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security_context(),
                    "terminationGracePeriodSeconds": 10,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def client_service(ctx: Context) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(ctx, client_service_name(ctx.name), ENDPOINT),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(ctx, SERVE),
            "ports": [
                {"name": "http", "port": api.PORT_SERVE, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


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


def worker_network_policy(ctx: Context) -> Manifest:
    """Worker tf gRPC (unauthenticated) and HTTP: only this model's workers, share Job and
    serve pod; HTTP also from the operator (public keys)."""
    peers = {"podSelector": _components(ctx, WORKER, SHARE, SERVE)}
    ingress: list[dict[str, Any]] = [{"from": [peers], "ports": _tcp(api.PORT_TF, api.PORT_HTTP)}]
    if ctx.operator_pod_labels:
        ingress.append(
            {
                "from": [
                    {
                        "namespaceSelector": {},
                        "podSelector": {"matchLabels": dict(ctx.operator_pod_labels)},
                    }
                ],
                "ports": _tcp(api.PORT_HTTP),
            }
        )
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
    """Share Job and serve pod: coordinator port only from the workers; client port open."""
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
                    "ports": _tcp(api.PORT_COORDINATOR),
                },
                {"ports": _tcp(api.PORT_SERVE)},
            ],
        },
    }


def base_objects(ctx: Context) -> list[Manifest]:
    """What exists whenever the model is not stopped: config, workers, network policy.
    External workers: only the config (the operator runs no workers; their network is theirs)."""
    if ctx.spec.external:
        return [config_map(ctx)]
    return [
        config_map(ctx),
        workers_service(ctx),
        worker_network_policy(ctx),
        coordinator_network_policy(ctx),
        worker_statefulset(ctx),
    ]


def serving_objects(ctx: Context, generation: int) -> list[Manifest]:
    return [serve_deployment(ctx, generation), client_service(ctx)]
