"""Whole-object tests of every builder: complete dicts, parametrized over spec variants."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
from operator_testlib import MESH_HASH, OWNER, make_ctx

from tfe_client import mesh
from tfe_operator import builders
from tfe_operator.settings import Settings

IMAGE = "tfe-operator/worker:0.1.0"


def labels(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "encryptedmodel",
        "app.kubernetes.io/instance": "digits",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "tfe-operator",
        "app.kubernetes.io/part-of": "tfe-operator",
        "tfe.dev/model": "digits",
    }


def sel(component: str) -> dict[str, str]:
    return {"tfe.dev/model": "digits", "app.kubernetes.io/component": component}


def meta(name: str, component: str, **extra: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "name": name,
        "namespace": "ml",
        "labels": labels(component),
        "ownerReferences": [OWNER],
    }
    m.update(extra)
    return m


HOSTS = [f"digits-worker-{i}.digits-workers.ml.svc" for i in range(3)]
# Operator-managed workers: loopback in every party's pod, the guards carry the rest.
PLAYERS = [{"name": f"server{i}", "tf": f"127.0.0.1:{4440 + i}", "http": f"127.0.0.1:{8081 + i}"} for i in range(3)]
EXTERNAL_SPEC = {
    "model": {"configMap": {"name": "digits-model", "key": "model.h5"}},
    "workers": {
        "external": [
            {"host": "10.0.0.1", "port": 4440},
            {"host": "w1.example", "port": 5000, "httpPort": 9000},
            {"host": "w2.example", "port": 5001},
        ]
    },
}
EXTERNAL_PLAYERS = [
    {"name": "server0", "tf": "10.0.0.1:4440", "http": "10.0.0.1:8081"},
    {"name": "server1", "tf": "w1.example:5000", "http": "w1.example:9000"},
    {"name": "server2", "tf": "w2.example:5001", "http": "w2.example:8081"},
]

POD_SC = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SC = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def probe(path: str, port: str | int, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": min(2, period),
    }


def annotations(ctx: Any) -> dict[str, str]:
    return {"tfe.dev/config-hash": builders.config_hash(ctx), "tfe.dev/mesh-hash": MESH_HASH}


MESH_INIT = {
    "name": "mesh-init",
    "image": IMAGE,
    "imagePullPolicy": "IfNotPresent",
    "command": [
        "/bin/sh",
        "-c",
        (
            "set -eu\n"
            "rule='-p tcp -m multiport --dports 4440:4460,8081:8090 ! -i lo -j DROP'\n"
            "iptables-nft -C INPUT $rule 2>/dev/null || iptables-nft -A INPUT $rule\n"
            "if [ -s /proc/net/if_inet6 ]; then\n"
            "  ip6tables-nft -C INPUT $rule 2>/dev/null || ip6tables-nft -A INPUT $rule\n"
            "fi\n"
            "iptables-nft -S INPUT"
        ),
    ],
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
# Every worker, serve and endpoint pod: /metrics on a port of its own, scrapes admitted from anywhere.
METRICS_PORT = {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}
METRICS_SCRAPE = {"ports": [{"protocol": "TCP", "port": 9090}]}
MESH_PORTS = [
    {"name": "mesh-grpc", "containerPort": 5440, "protocol": "TCP"},
    {"name": "mesh-http", "containerPort": 5443, "protocol": "TCP"},
]


def guard(
    command: list[str], mounts: list[dict[str, Any]], env: Any = None, health: bool = False, inbound: bool = True
) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": "guard",
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "command": command,
        "env": [*(env or []), {"name": "GOMAXPROCS", "value": "1"}],
    }
    if inbound:
        c["ports"] = MESH_PORTS + ([{"name": "health", "containerPort": 5444, "protocol": "TCP"}] if health else [])
        c["startupProbe"] = {"tcpSocket": {"port": 5440}, "periodSeconds": 1, "failureThreshold": 30}
    c["resources"] = {"requests": {"cpu": "50m", "memory": "32Mi"}}
    c["securityContext"] = CONTAINER_SC
    c["terminationMessagePolicy"] = "FallbackToLogsOnError"
    c["volumeMounts"] = mounts
    return c


MESH_CONFIG_MOUNT = {"name": "mesh-config", "mountPath": "/etc/tfe/mesh", "readOnly": True}
MESH_PKI_MOUNT = {"name": "mesh-pki", "mountPath": "/etc/tfe/pki", "readOnly": True}
MESH_CONFIG_VOLUME = {"name": "mesh-config", "configMap": {"name": "digits-mesh"}}
SERVE_HASH = "<per test>"


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("spec", "players"),
    [(None, PLAYERS), (EXTERNAL_SPEC, EXTERNAL_PLAYERS)],
    ids=["in-cluster", "external"],
)
def test_config_map(spec: dict[str, Any] | None, players: list[dict[str, str]]) -> None:
    ctx = make_ctx(spec)
    cm = builders.config_map(ctx)
    assert cm == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta("digits-tfe-config", "config"),
        "data": {"tfe.json": json.dumps({"players": players}, indent=2) + "\n"},
    }
    # The worker contract's format: players server0..2 in order, tf and http host:port.
    doc = json.loads(cm["data"]["tfe.json"])
    assert [p["name"] for p in doc["players"]] == ["server0", "server1", "server2"]


def test_workers_service() -> None:
    """Headless, every party pod of the model (stable DNS names), guard ports only."""
    assert builders.workers_service(make_ctx()) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta("digits-workers", "worker"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"tfe.dev/model": "digits"},
            "ports": [
                {"name": "mesh-grpc", "port": 5440, "targetPort": 5440, "protocol": "TCP"},
                {"name": "mesh-http", "port": 5443, "targetPort": 5443, "protocol": "TCP"},
            ],
        },
    }


# ------------------------------------------------------------------ workers

PREFERRED = {
    "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 100,
                "podAffinityTerm": {
                    "labelSelector": {"matchLabels": sel("worker")},
                    "topologyKey": "kubernetes.io/hostname",
                },
            }
        ]
    }
}
REQUIRED = {
    "podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {
                "labelSelector": {"matchLabels": sel("worker")},
                "topologyKey": "kubernetes.io/hostname",
            }
        ]
    }
}


def expected_statefulset() -> dict[str, Any]:
    ctx = make_ctx()
    return copy.deepcopy(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": meta("digits-worker", "worker"),
            "spec": {
                "serviceName": "digits-workers",
                "replicas": 3,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": sel("worker")},
                "updateStrategy": {"type": "RollingUpdate"},
                "template": {
                    "metadata": {"labels": labels("worker"), "annotations": annotations(ctx)},
                    "spec": {
                        "enableServiceLinks": False,
                        "automountServiceAccountToken": False,
                        "securityContext": POD_SC,
                        "terminationGracePeriodSeconds": 10,
                        "affinity": PREFERRED,
                        "initContainers": [
                            MESH_INIT,
                            guard(
                                [
                                    "/bin/sh",
                                    "-c",
                                    'exec tfe-guard --config "/etc/tfe/mesh/server${POD_NAME##*-}.json"',
                                ],
                                [MESH_CONFIG_MOUNT, {**MESH_PKI_MOUNT, "subPathExpr": "$(POD_NAME)"}],
                                env=[{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                                health=True,
                            ),
                        ],
                        "containers": [
                            {
                                "name": "player",
                                "image": IMAGE,
                                "imagePullPolicy": "IfNotPresent",
                                "command": [
                                    "/bin/sh",
                                    "-c",
                                    (
                                        'exec tfe-worker player "server${POD_NAME##*-}"'
                                        " --config /etc/tfe/tfe.json --state /var/lib/tfe --spool /spool"
                                        " --http-bind 127.0.0.1"
                                        " --metrics-port 9090"
                                    ),
                                ],
                                "env": [
                                    {
                                        "name": "POD_NAME",
                                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                    },
                                    {"name": "HOME", "value": "/tmp"},
                                ],
                                "ports": [METRICS_PORT],
                                # probed through the guard's plain health listener
                                "startupProbe": probe("/healthz", 5444, 1, 180),
                                "readinessProbe": probe("/readyz", 5444, 1, 6),
                                "livenessProbe": probe("/healthz", 5444, 10, 3),
                                "resources": WORKER_MEM,
                                "securityContext": CONTAINER_SC,
                                "terminationMessagePolicy": "FallbackToLogsOnError",
                                "volumeMounts": [
                                    {"name": "config", "mountPath": "/etc/tfe", "readOnly": True},
                                    {"name": "state", "mountPath": "/var/lib/tfe"},
                                    {"name": "spool", "mountPath": "/spool"},
                                    {"name": "tmp", "mountPath": "/tmp"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "config", "configMap": {"name": "digits-tfe-config"}},
                            {"name": "spool", "emptyDir": {"medium": "Memory"}},
                            {"name": "tmp", "emptyDir": {}},
                            MESH_CONFIG_VOLUME,
                            {
                                "name": "mesh-pki",
                                "projected": {
                                    "defaultMode": 0o440,
                                    "sources": [
                                        {
                                            "secret": {
                                                "name": f"digits-mesh-server{i}",
                                                "items": [
                                                    {"key": k, "path": f"digits-worker-{i}/{k}"}
                                                    for k in ("ca.crt", "tls.crt", "tls.key")
                                                ],
                                            }
                                        }
                                        for i in range(3)
                                    ],
                                },
                            },
                        ],
                    },
                },
                "volumeClaimTemplates": [
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "metadata": {"name": "state", "labels": labels("worker")},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}},
                        },
                    }
                ],
                "persistentVolumeClaimRetentionPolicy": {
                    "whenDeleted": "Retain",
                    "whenScaled": "Retain",
                },
            },
        }
    )


# the default memory of a worker and a coordinator (builders.WORKER_MEMORY, COORDINATOR_MEMORY)
WORKER_MEM = {"requests": {"memory": "768Mi"}, "limits": {"memory": "2Gi"}}
COORD_MEM = {"requests": {"memory": "1280Mi"}, "limits": {"memory": "3Gi"}}
GPU_RESOURCES = {
    "limits": {"nvidia.com/gpu": 1, "memory": "4Gi"},
    "requests": {"cpu": "1", "memory": "2Gi"},
}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def _variant_default(e: dict[str, Any]) -> None:
    pass


def _variant_gpu(e: dict[str, Any]) -> None:
    pod = e["spec"]["template"]["spec"]
    pod["containers"][0]["resources"] = GPU_RESOURCES
    pod["nodeSelector"] = {"accelerator": "nvidia"}
    pod["tolerations"] = GPU_TOLERATIONS
    pod["runtimeClassName"] = "nvidia"


def _variant_required(e: dict[str, Any]) -> None:
    e["spec"]["template"]["spec"]["affinity"] = REQUIRED


def _variant_memory(e: dict[str, Any]) -> None:
    del e["spec"]["volumeClaimTemplates"]
    del e["spec"]["persistentVolumeClaimRetentionPolicy"]
    e["spec"]["template"]["spec"]["volumes"].append(
        {"name": "state", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}}
    )


def _variant_pvc_class_delete(e: dict[str, Any]) -> None:
    claim = e["spec"]["volumeClaimTemplates"][0]["spec"]
    claim["resources"] = {"requests": {"storage": "5Gi"}}
    claim["storageClassName"] = "fast"
    e["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] = "Delete"


def _variant_image(e: dict[str, Any]) -> None:
    pod = e["spec"]["template"]["spec"]
    for c in [*pod["containers"], *pod["initContainers"]]:
        c["image"] = "registry.local/tfe-worker:dev"
        c["imagePullPolicy"] = "Always"


WORKER_VARIANTS: list[tuple[str, dict[str, Any], Any]] = [
    ("default", {}, _variant_default),
    (
        "gpu",
        {
            "resources": GPU_RESOURCES,
            "nodeSelector": {"accelerator": "nvidia"},
            "tolerations": GPU_TOLERATIONS,
            "runtimeClassName": "nvidia",
        },
        _variant_gpu,
    ),
    ("spread-required", {"spread": "Required"}, _variant_required),
    ("storage-memory", {"storage": {"medium": "Memory", "size": "256Mi"}}, _variant_memory),
    (
        "storage-pvc-class-delete",
        {"storage": {"size": "5Gi", "storageClassName": "fast", "retainPolicy": "Delete"}},
        _variant_pvc_class_delete,
    ),
    ("image", {"image": "registry.local/tfe-worker:dev", "imagePullPolicy": "Always"}, _variant_image),
]


@pytest.mark.parametrize(
    ("workers", "mutate"), [(w, m) for _, w, m in WORKER_VARIANTS], ids=[i for i, _, _ in WORKER_VARIANTS]
)
def test_worker_statefulset(workers: dict[str, Any], mutate: Any) -> None:
    spec = {"model": {"configMap": {"name": "digits-model", "key": "model.h5"}}, "workers": workers}
    expected = expected_statefulset()
    mutate(expected)
    assert builders.worker_statefulset(make_ctx(spec)) == expected


def test_player_name_from_ordinal() -> None:
    """The wrapper derives server<i> from the pod name m-worker-<i> (POSIX sh expansion)."""
    import subprocess

    script = builders.PLAYER_SCRIPT.replace("exec tfe-worker", "echo")
    for i in range(3):
        out = subprocess.run(
            ["/bin/sh", "-c", script],
            env={"POD_NAME": f"my-model-worker-{i}"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert out[1] == f"server{i}"
        guard = builders.WORKER_GUARD_SCRIPT.replace("exec tfe-guard", "echo")
        out = subprocess.run(
            ["/bin/sh", "-c", guard],
            env={"POD_NAME": f"my-model-worker-{i}"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert out == ["--config", f"/etc/tfe/mesh/server{i}.json"]


# ------------------------------------------------------------------ share job


def expected_job(generation: int = 1) -> dict[str, Any]:
    ctx = make_ctx()
    return copy.deepcopy(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": f"digits-share-g{generation}",
                "namespace": "ml",
                "labels": {**labels("share"), "tfe.dev/share-generation": str(generation)},
                "ownerReferences": [OWNER],
                "annotations": {"tfe.dev/model-hash": ctx.spec.model_hash, "tfe.dev/share-kind": "share"},
            },
            "spec": {
                "backoffLimit": 3,
                "activeDeadlineSeconds": 3600,
                "podFailurePolicy": {
                    "rules": [
                        {
                            "action": "FailJob",
                            "onExitCodes": {"containerName": "share", "operator": "In", "values": [2]},
                        },
                        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                    ]
                },
                "template": {
                    "metadata": {"labels": {**labels("share"), "tfe.dev/share-generation": str(generation)}},
                    "spec": {
                        "restartPolicy": "Never",
                        "enableServiceLinks": False,
                        "automountServiceAccountToken": False,
                        "securityContext": POD_SC,
                        "hostname": "share",
                        "subdomain": "digits-workers",
                        "initContainers": [
                            MESH_INIT,
                            guard(
                                [
                                    "/bin/sh",
                                    "-c",
                                    (
                                        'printf "%s" "$GUARD_CONFIG" > /run/guard/guard.json'
                                        " && exec tfe-guard --config /run/guard/guard.json"
                                    ),
                                ],
                                [{"name": "guard-run", "mountPath": "/run/guard"}, MESH_PKI_MOUNT],
                                env=[
                                    {
                                        "name": "GUARD_CONFIG",
                                        "value": json.dumps(share_guard_config(generation), indent=1, sort_keys=True)
                                        + "\n",
                                    }
                                ],
                            ),
                        ],
                        "containers": [
                            {
                                "name": "share",
                                "image": IMAGE,
                                "imagePullPolicy": "IfNotPresent",
                                "command": [
                                    "tfe-worker",
                                    "share",
                                    "--config",
                                    "/etc/tfe/tfe.json",
                                    "--model",
                                    "/model/model.h5",
                                    "--name",
                                    "digits",
                                    "--generation",
                                    str(generation),
                                    "--coordinator-address",
                                    "127.0.0.1:4460",
                                    "--protocol",
                                    "ABY3",
                                ],
                                "env": [{"name": "HOME", "value": "/tmp"}],
                                "resources": COORD_MEM,
                                "securityContext": CONTAINER_SC,
                                "terminationMessagePath": "/dev/termination-log",
                                "terminationMessagePolicy": "FallbackToLogsOnError",
                                "volumeMounts": [
                                    {"name": "config", "mountPath": "/etc/tfe", "readOnly": True},
                                    {"name": "tmp", "mountPath": "/tmp"},
                                    {"name": "model", "mountPath": "/model", "readOnly": True},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "config", "configMap": {"name": "digits-tfe-config"}},
                            {"name": "tmp", "emptyDir": {}},
                            {
                                "name": "model",
                                "configMap": {
                                    "name": "digits-model",
                                    "items": [{"key": "model.h5", "path": "model.h5"}],
                                },
                            },
                            {"name": "guard-run", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                            {
                                "name": "mesh-pki",
                                "secret": {"secretName": f"digits-mesh-share-g{generation}", "defaultMode": 0o440},
                            },
                        ],
                    },
                },
            },
        }
    )


def share_guard_config(generation: int) -> dict[str, Any]:
    """What the share Job's guard is told: identity share-g<N>, its TF port 4460 behind the
    mTLS listener (workers may only fetch tensors), and the workers' TF/HTTP at loopback."""
    hosts = [f"tcp:{h}" for h in HOSTS]
    return {
        "identity": f"share-g{generation}",
        "ca": "/etc/tfe/pki/ca.crt",
        "cert": "/etc/tfe/pki/tls.crt",
        "key": "/etc/tfe/pki/tls.key",
        "devices": mesh.DEVICES,
        "inbound": [
            {
                "kind": "grpc",
                "listen": "tcp:0.0.0.0:5440",
                "backend": "127.0.0.1:4460",
                "rules": [
                    {
                        "identities": ["server0", "server1", "server2"],
                        "methods": ["/tensorflow.WorkerService/RecvTensor"],
                    }
                ],
            }
        ],
        "outbound": [
            x
            for i in range(3)
            for x in (
                {"listen": f"127.0.0.1:{4440 + i}", "dial": f"{hosts[i]}:5440", "expect": f"server{i}"},
                {"listen": f"127.0.0.1:{8081 + i}", "dial": f"{hosts[i]}:5443", "expect": f"server{i}"},
            )
        ],
    }


SHA = "ab" * 32


def _plain_job(e: dict[str, Any]) -> None:
    """External workers: no mesh (as before issue 9): the share pod's own IP and port."""
    pod = e["spec"]["template"]["spec"]
    for k in ("hostname", "subdomain", "initContainers"):
        del pod[k]
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] not in ("guard-run", "mesh-pki")]
    c = pod["containers"][0]
    c["command"][c["command"].index("--coordinator-address") + 1] = "$(POD_IP):4450"
    c["env"] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HOME", "value": "/tmp"},
    ]
    # re-insert "ports" where the builder puts it (dict order does not matter for ==)
    c["ports"] = [{"name": "coordinator", "containerPort": 4450, "protocol": "TCP"}]


def _job_secret(e: dict[str, Any]) -> None:
    pod = e["spec"]["template"]["spec"]
    pod["volumes"][2] = {
        "name": "model",
        "secret": {"secretName": "weights", "items": [{"key": "m.keras", "path": "m.keras"}]},
    }
    c = pod["containers"][0]["command"]
    c[c.index("--model") + 1] = "/model/m.keras"


def _job_pvc(e: dict[str, Any]) -> None:
    pod = e["spec"]["template"]["spec"]
    pod["volumes"][2] = {
        "name": "model",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    }
    c = pod["containers"][0]["command"]
    c[c.index("--model") + 1] = "/model/digits/model.h5"


def _job_url(e: dict[str, Any]) -> None:
    pod = e["spec"]["template"]["spec"]
    del pod["volumes"][2]
    del pod["containers"][0]["volumeMounts"][2]
    c = pod["containers"][0]["command"]
    i = c.index("--model")
    c[i + 1 : i + 2] = ["https://models.example/digits.h5", "--sha256", SHA]


def _job_external(e: dict[str, Any]) -> None:
    _plain_job(e)


JOB_VARIANTS: list[tuple[str, dict[str, Any], Any]] = [
    ("configmap", {}, lambda e: None),
    ("secret", {"model": {"secret": {"name": "weights", "key": "m.keras"}}}, _job_secret),
    ("pvc", {"model": {"pvc": {"claimName": "models", "path": "digits/model.h5"}}}, _job_pvc),
    (
        "url",
        {"model": {"url": {"url": "https://models.example/digits.h5", "sha256": SHA}}},
        _job_url,
    ),
    ("external-workers", {"workers": EXTERNAL_SPEC["workers"]}, _job_external),
]


@pytest.mark.parametrize(
    ("override", "mutate"), [(o, m) for _, o, m in JOB_VARIANTS], ids=[i for i, _, _ in JOB_VARIANTS]
)
def test_share_job(override: dict[str, Any], mutate: Any) -> None:
    spec: dict[str, Any] = {"model": {"configMap": {"name": "digits-model", "key": "model.h5"}}}
    spec.update(copy.deepcopy(override))
    ctx = make_ctx(spec)
    expected = expected_job(7)
    expected["metadata"]["annotations"]["tfe.dev/model-hash"] = ctx.spec.model_hash
    mutate(expected)
    assert builders.share_job(ctx, 7) == expected


def test_share_job_settings() -> None:
    ctx = make_ctx(settings=Settings(worker_image="w:1", share_backoff_limit=5, share_deadline_seconds=60))
    job = builders.share_job(ctx, 1)
    assert job["spec"]["backoffLimit"] == 5
    assert job["spec"]["activeDeadlineSeconds"] == 60
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "w:1"


def test_every_guard_runs_one_go_thread() -> None:
    """GOMAXPROCS=1 in every guard container: the guard shares its pod's cores with its party."""
    ctx = make_ctx()
    pods = [builders.worker_statefulset(ctx)["spec"]["template"]["spec"],
            builders.serve_deployment(ctx, 1)["spec"]["template"]["spec"],
            builders.share_job(ctx, 4)["spec"]["template"]["spec"],
            builders.endpoint_deployment(ctx)["spec"]["template"]["spec"]]
    guards = [c for p in pods for c in [*p.get("initContainers", []), *p["containers"]] if c["name"] == "guard"]
    assert len(guards) == len(pods)
    for g in guards:
        assert {"name": "GOMAXPROCS", "value": "1"} in g["env"]


def test_share_job_guard_config_is_a_valid_mesh_config() -> None:
    """The config in the Job equals tfe_client.mesh's, with the pod's PKI paths."""
    ctx = make_ctx()
    pod = builders.share_job(ctx, 4)["spec"]["template"]["spec"]
    env = pod["initContainers"][1]["env"]
    cfg = json.loads(env[0]["value"])
    listen, dial = mesh.tcp_addressing(lambda p: builders.mesh_host(ctx, p))
    m = mesh.Mesh(mesh.Ports((4440, 4441, 4442), (8081, 8082, 8083), (4450, 4451), (4460,)), listen, dial)
    assert cfg == m.guard_config("share-g4", builders.MESH_PKI)


# ------------------------------------------------------------------ serve


def expected_deployment(generation: int = 1, slot: int = 0) -> dict[str, Any]:
    ctx = make_ctx()
    party = ["coordinator", "coordinator-1"][slot]
    port = 4450 + slot
    return copy.deepcopy(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta("digits-serve", "serve"),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": sel("serve")},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
                },
                "template": {
                    "metadata": {
                        "labels": {**labels("serve"), "tfe.dev/share-generation": str(generation)},
                        # tfe.dev/serve-hash: checked in test_serve_template_hash
                        "annotations": {**annotations(ctx), "tfe.dev/serve-hash": SERVE_HASH},
                    },
                    "spec": {
                        "enableServiceLinks": False,
                        "automountServiceAccountToken": False,
                        "securityContext": POD_SC,
                        # the drain: a request's deadline and a margin, after the preStop pause
                        "terminationGracePeriodSeconds": 140,
                        # the mesh coordinator slot (reconcile.serve_slot picks it)
                        "hostname": party,
                        "subdomain": "digits-workers",
                        "initContainers": [
                            MESH_INIT,
                            guard(
                                ["tfe-guard", "--config", f"/etc/tfe/mesh/{party}.json"],
                                [MESH_CONFIG_MOUNT, MESH_PKI_MOUNT],
                                health=True,
                            ),
                        ],
                        "containers": [
                            {
                                "name": "serve",
                                "image": IMAGE,
                                "imagePullPolicy": "IfNotPresent",
                                "command": [
                                    "tfe-worker",
                                    "serve",
                                    "--config",
                                    "/etc/tfe/tfe.json",
                                    "--name",
                                    "digits",
                                    "--generation",
                                    str(generation),
                                    # no client port: the relay API on loopback, for the endpoint
                                    "--relay-port",
                                    "8090",
                                    "--relay-only",
                                    "--coordinator-address",
                                    f"127.0.0.1:{port}",
                                    "--protocol",
                                    "ABY3",
                                    "--max-batch-size",
                                    "32",
                                    "--max-wait-ms",
                                    "5",
                                    "--metrics-port",
                                    "9090",
                                    "--count-scope",
                                    "uid-1:unlimited",
                                ],
                                "env": [{"name": "HOME", "value": "/tmp"}],
                                "ports": [METRICS_PORT],
                                # the relay through the guard's plain health listener
                                "startupProbe": probe("/healthz", 5444, 1, 300),
                                "readinessProbe": probe("/readyz", 5444, 1, 6),
                                "livenessProbe": probe("/healthz", 5444, 10, 3),
                                "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
                                "resources": COORD_MEM,
                                "securityContext": CONTAINER_SC,
                                "terminationMessagePolicy": "FallbackToLogsOnError",
                                "volumeMounts": [
                                    {"name": "config", "mountPath": "/etc/tfe", "readOnly": True},
                                    {"name": "tmp", "mountPath": "/tmp"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "config", "configMap": {"name": "digits-tfe-config"}},
                            {"name": "tmp", "emptyDir": {}},
                            MESH_CONFIG_VOLUME,
                            {
                                "name": "mesh-pki",
                                "secret": {"secretName": "digits-mesh-coordinator", "defaultMode": 0o440},
                            },
                        ],
                    },
                },
            },
        }
    )


def _serve_limits(e: dict[str, Any]) -> None:
    pod = e["spec"]["template"]["spec"]
    c = pod["containers"][0]
    c["command"][c["command"].index("--protocol") + 1] = "SecureNN"
    c["command"][c["command"].index("--max-batch-size") + 1] = "8"
    c["command"][c["command"].index("--max-wait-ms") + 1] = "0"
    c["command"][-2:] = ["--max-requests", "100", "--linger-after-limit", "--count-scope", "uid-1:maxRequests=100"]
    # the token is the endpoint's: the coordinator neither needs nor mounts it
    c["resources"] = {"limits": {"memory": "2Gi"}}


SERVE_VARIANTS: list[tuple[str, dict[str, Any], Any]] = [
    ("default", {}, lambda e: None),
    (
        "limits-token-securenn",
        {
            "protocol": "SecureNN",
            "serving": {
                "maxBatchSize": 8,
                "maxWaitMs": 0,
                "maxRequests": 100,
                "tokenSecretRef": {"name": "api"},
                "resources": {"limits": {"memory": "2Gi"}},
            },
        },
        _serve_limits,
    ),
]


@pytest.mark.parametrize(
    ("override", "mutate"),
    [(o, m) for _, o, m in SERVE_VARIANTS],
    ids=[i for i, _, _ in SERVE_VARIANTS],
)
@pytest.mark.parametrize("slot", [0, 1])
def test_serve_deployment(override: dict[str, Any], mutate: Any, slot: int) -> None:
    spec: dict[str, Any] = {"model": {"configMap": {"name": "digits-model", "key": "model.h5"}}}
    spec.update(override)
    expected = expected_deployment(3, slot)
    mutate(expected)
    dep = builders.serve_deployment(make_ctx(spec), 3, slot)
    template_hash = dep["spec"]["template"]["metadata"]["annotations"]["tfe.dev/serve-hash"]
    expected["spec"]["template"]["metadata"]["annotations"]["tfe.dev/serve-hash"] = template_hash
    assert dep == expected


def test_serve_template_hash() -> None:
    """The template's digest without its slot: the same for both slots, different for any
    other change of the template (generation, spec, mesh certificates)."""
    ctx = make_ctx()
    h = builders.serve_template_hash(ctx, 3)
    for slot in (0, 1):
        ann = builders.serve_deployment(ctx, 3, slot)["spec"]["template"]["metadata"]["annotations"]
        assert ann["tfe.dev/serve-hash"] == h
    assert builders.serve_template_hash(ctx, 4) != h
    assert builders.serve_template_hash(make_ctx(mesh_hash="other"), 3) != h
    spec = {"model": {"configMap": {"name": "digits-model", "key": "model.h5"}}, "serving": {"maxRequests": 9}}
    assert builders.serve_template_hash(make_ctx(spec), 3) != h


def test_serve_deployment_external_workers_uses_external_config() -> None:
    """External workers stay outside the mesh: the serve pod as before issue 9."""
    ctx = make_ctx(EXTERNAL_SPEC)
    dep = builders.serve_deployment(ctx, 1)
    expected = expected_deployment(1)
    # no mesh: no mesh hash, no slot
    expected["spec"]["template"]["metadata"]["annotations"] = {"tfe.dev/config-hash": builders.config_hash(ctx)}
    pod = expected["spec"]["template"]["spec"]
    for k in ("hostname", "subdomain", "initContainers"):
        del pod[k]
    pod["volumes"] = pod["volumes"][:2]
    c = pod["containers"][0]
    # no endpoint split: the coordinator serves the clients on :8000 itself
    i = c["command"].index("--relay-port")
    c["command"][i : i + 3] = ["--port", "8000"]
    c["command"][c["command"].index("--coordinator-address") + 1] = "$(POD_IP):4450"
    c["env"] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HOME", "value": "/tmp"},
    ]
    c["ports"] = [
        {"name": "http", "containerPort": 8000, "protocol": "TCP"},
        {"name": "coordinator", "containerPort": 4450, "protocol": "TCP"},
        METRICS_PORT,
    ]
    c["startupProbe"] = probe("/healthz", "http", 1, 300)
    c["readinessProbe"] = probe("/readyz", "http", 1, 6)
    c["livenessProbe"] = probe("/healthz", "http", 10, 3)
    assert dep == expected
    assert builders.config_hash(ctx) != builders.config_hash(make_ctx())


def test_serve_deployment_external_workers_token() -> None:
    """Without the split the serve pod checks the token itself."""
    spec = {**EXTERNAL_SPEC, "serving": {"tokenSecretRef": {"name": "api", "key": "t"}}}
    pod = builders.serve_deployment(make_ctx(spec), 1)["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"][-2:] == ["--token-file", "/var/run/tfe-token/token"]
    assert {"name": "token", "mountPath": "/var/run/tfe-token", "readOnly": True} in c["volumeMounts"]
    assert {"name": "token", "secret": {"secretName": "api", "items": [{"key": "t", "path": "token"}]}} in pod[
        "volumes"
    ]


# ------------------------------------------------------------------ the endpoint


def expected_endpoint(ctx: Any, replicas: int = 1) -> dict[str, Any]:
    guard_json = builders.mesh_config_map(ctx)["data"]["endpoint.json"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta("digits-endpoint", "endpoint"),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": sel("endpoint")},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": labels("endpoint"),
                    "annotations": {
                        "tfe.dev/config-hash": hashlib.sha256(guard_json.encode()).hexdigest()[:16],
                        "tfe.dev/mesh-hash": "meshhash",
                    },
                },
                "spec": {
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    "securityContext": POD_SC,
                    "terminationGracePeriodSeconds": 140,
                    # no mesh-init (nothing raw listens here), no hostname (no party dials it)
                    "initContainers": [
                        guard(
                            ["tfe-guard", "--config", "/etc/tfe/mesh/endpoint.json"],
                            [MESH_CONFIG_MOUNT, MESH_PKI_MOUNT],
                            inbound=False,
                        )
                    ],
                    "containers": [
                        {
                            "name": "endpoint",
                            "image": IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": [
                                "tfe-worker",
                                "endpoint",
                                "--relay",
                                "127.0.0.1:8090",
                                "--name",
                                "digits",
                                "--port",
                                "8000",
                                "--metrics-port",
                                "9090",
                            ],
                            "env": [{"name": "HOME", "value": "/tmp"}],
                            "ports": [
                                {"name": "http", "containerPort": 8000, "protocol": "TCP"},
                                METRICS_PORT,
                            ],
                            "startupProbe": probe("/healthz", "http", 1, 120),
                            "readinessProbe": probe("/readyz", "http", 1, 6),
                            "livenessProbe": probe("/healthz", "http", 10, 3),
                            "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
                            "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}},
                            "securityContext": CONTAINER_SC,
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        }
                    ],
                    "volumes": [
                        {"name": "tmp", "emptyDir": {}},
                        MESH_CONFIG_VOLUME,
                        {"name": "mesh-pki", "secret": {"secretName": "digits-mesh-endpoint", "defaultMode": 0o440}},
                    ],
                },
            },
        },
    }


def test_endpoint_deployment() -> None:
    ctx = make_ctx(mesh_hash="meshhash")
    assert builders.endpoint_deployment(ctx) == expected_endpoint(ctx)


def test_endpoint_deployment_token_and_replicas() -> None:
    spec = {
        "model": {"configMap": {"name": "digits-model", "key": "model.h5"}},
        "serving": {"tokenSecretRef": {"name": "api"}, "endpointReplicas": 3},
    }
    ctx = make_ctx(spec, mesh_hash="meshhash")
    expected = expected_endpoint(ctx, replicas=3)
    pod = expected["spec"]["template"]["spec"]
    c = pod["containers"][0]
    c["command"] += ["--token-file", "/var/run/tfe-token/token"]
    c["volumeMounts"].append({"name": "token", "mountPath": "/var/run/tfe-token", "readOnly": True})
    pod["volumes"].append(
        {"name": "token", "secret": {"secretName": "api", "items": [{"key": "token", "path": "token"}]}}
    )
    assert builders.endpoint_deployment(ctx) == expected


def test_endpoint_template_ignores_generation_and_slot() -> None:
    """The endpoint reaches whichever coordinator is ready through m-relay: serve rollouts
    (generation, slot, serving settings) do not roll it; its certificate and token do."""
    base = builders.endpoint_deployment(make_ctx(mesh_hash="a"))
    spec = {"model": {"configMap": {"name": "other", "key": "m.h5"}}, "serving": {"maxRequests": 3, "maxWaitMs": 9}}
    assert builders.endpoint_deployment(make_ctx(spec, mesh_hash="a")) == base
    assert builders.endpoint_deployment(make_ctx(mesh_hash="b")) != base


def test_endpoint_and_coordinator_guard_configs() -> None:
    """The endpoint's guard: one loopback listener (the relay port) to the relay Service,
    expecting identity coordinator; no inbound. The coordinator's: the relay behind its mTLS
    HTTP listener (identity endpoint), and a plain health listener for probes and status."""
    ctx = make_ctx()
    data = builders.mesh_config_map(ctx)["data"]
    ep = json.loads(data["endpoint.json"])
    assert ep["identity"] == "endpoint"
    assert ep["inbound"] == []
    assert ep["outbound"] == [
        {"listen": "127.0.0.1:8090", "dial": "tcp:digits-relay.ml.svc:5443", "expect": "coordinator"}
    ]
    assert "health" not in ep
    for party in ("coordinator", "coordinator-1"):
        co = json.loads(data[f"{party}.json"])
        (http,) = [i for i in co["inbound"] if i["kind"] == "http"]
        assert http["backend"] == "127.0.0.1:8090"
        assert http["rules"][0] == {"identities": ["endpoint"], "methods": ["*"], "paths": ["/"]}
        assert co["health"] == {
            "listen": "tcp:0.0.0.0:5444",
            "backend": "127.0.0.1:8090",
            "paths": ["/healthz", "/readyz", "/v1/status", "/metrics", "/guard/refusals"],
        }
        # no party other than the endpoint reaches the relay; the endpoint reaches nothing else
        assert all("endpoint" not in r["identities"] for i in co["inbound"] if i["kind"] == "grpc" for r in i["rules"])
    for s in ("server0", "server1", "server2"):
        cfg = json.loads(data[f"{s}.json"])
        assert all("endpoint" not in r["identities"] for i in cfg["inbound"] for r in i["rules"])


def test_relay_service() -> None:
    assert builders.relay_service(make_ctx()) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta("digits-relay", "serve"),
        "spec": {
            "type": "ClusterIP",
            # ready serve pods only (no publishNotReadyAddresses): the current coordinator
            "selector": sel("serve"),
            "ports": [{"name": "mesh-http", "port": 5443, "targetPort": 5443, "protocol": "TCP"}],
        },
    }


@pytest.mark.parametrize(("spec", "component"), [(None, "endpoint"), (EXTERNAL_SPEC, "serve")])
def test_client_service(spec: dict[str, Any] | None, component: str) -> None:
    assert builders.client_service(make_ctx(spec)) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta("digits", "endpoint"),
        "spec": {
            "type": "ClusterIP",
            "selector": sel(component),
            "ports": [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    assert builders.endpoint(make_ctx(spec)) == "http://digits.ml.svc:8000"


# ------------------------------------------------------------------ network


PEERS = {
    "podSelector": {
        "matchExpressions": [
            {"key": "tfe.dev/model", "operator": "In", "values": ["digits"]},
            {
                "key": "app.kubernetes.io/component",
                "operator": "In",
                "values": ["worker", "share", "serve"],
            },
        ]
    }
}


HEALTH_CIDRS = ("172.18.0.2/32", "172.18.0.3/32")
# an operator outside the cluster: the API server's addresses, on the health port only
HEALTH_FROM_CIDRS = {
    "from": [{"ipBlock": {"cidr": "172.18.0.2/32"}}, {"ipBlock": {"cidr": "172.18.0.3/32"}}],
    "ports": [{"protocol": "TCP", "port": 5444}],
}


@pytest.mark.parametrize("cidrs", [False, True], ids=["no-cidrs", "health-cidrs"])
@pytest.mark.parametrize("operator_labels", [True, False], ids=["with-operator", "proxy-only"])
def test_worker_network_policy(operator_labels: bool, cidrs: bool) -> None:
    settings = Settings(
        worker_image=IMAGE,
        operator_pod_labels={"app.kubernetes.io/name": "tfe-operator"} if operator_labels else {},
        health_source_cidrs=HEALTH_CIDRS if cidrs else (),
    )
    ingress: list[dict[str, Any]] = [
        {
            "from": [PEERS],
            "ports": [{"protocol": "TCP", "port": 5440}, {"protocol": "TCP", "port": 5443}],
        }
    ]
    if operator_labels:
        ingress.append(
            {
                "from": [
                    {
                        "namespaceSelector": {},
                        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "tfe-operator"}},
                    }
                ],
                "ports": [{"protocol": "TCP", "port": 5443}, {"protocol": "TCP", "port": 5444}],
            }
        )
    if cidrs:  # never the mTLS ports: an address is no identity
        ingress.append(HEALTH_FROM_CIDRS)
    ingress.append(METRICS_SCRAPE)
    assert builders.worker_network_policy(make_ctx(settings=settings)) == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta("digits-workers", "network"),
        "spec": {
            "podSelector": {"matchLabels": sel("worker")},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


OPERATOR_PEER = {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "tfe-operator"}}}


@pytest.mark.parametrize("cidrs", [False, True], ids=["no-cidrs", "health-cidrs"])
@pytest.mark.parametrize("operator_labels", [True, False], ids=["with-operator", "proxy-only"])
def test_coordinator_network_policy(operator_labels: bool, cidrs: bool) -> None:
    settings = Settings(
        worker_image=IMAGE,
        operator_pod_labels={"app.kubernetes.io/name": "tfe-operator"} if operator_labels else {},
        health_source_cidrs=HEALTH_CIDRS if cidrs else (),
    )
    ingress: list[dict[str, Any]] = [
        {
            "from": [{"podSelector": {"matchLabels": sel("worker")}}],
            "ports": [{"protocol": "TCP", "port": 5440}],
        },
        # the relay, only from the endpoint pods; no client port here
        {
            "from": [{"podSelector": {"matchLabels": sel("endpoint")}}],
            "ports": [{"protocol": "TCP", "port": 5443}],
        },
    ]
    if operator_labels:
        ingress.append({"from": [OPERATOR_PEER], "ports": [{"protocol": "TCP", "port": 5444}]})
    if cidrs:
        ingress.append(HEALTH_FROM_CIDRS)
    ingress.append(METRICS_SCRAPE)
    assert builders.coordinator_network_policy(make_ctx(settings=settings)) == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta("digits-coordinator", "network"),
        "spec": {
            "podSelector": {
                "matchExpressions": [
                    {"key": "tfe.dev/model", "operator": "In", "values": ["digits"]},
                    {
                        "key": "app.kubernetes.io/component",
                        "operator": "In",
                        "values": ["share", "serve"],
                    },
                ]
            },
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def test_endpoint_network_policy() -> None:
    assert builders.endpoint_network_policy(make_ctx()) == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta("digits-endpoint", "network"),
        "spec": {
            "podSelector": {"matchLabels": sel("endpoint")},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": 8000}]}, METRICS_SCRAPE],
            "egress": [
                {
                    "to": [{"podSelector": {"matchLabels": sel("serve")}}],
                    "ports": [{"protocol": "TCP", "port": 5443}],
                },
                {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
            ],
        },
    }


# ------------------------------------------------------------------ sets


@pytest.mark.parametrize(
    ("spec", "kinds"),
    [
        (
            None,
            [
                ("ConfigMap", "digits-tfe-config"),
                ("ConfigMap", "digits-mesh"),
                ("Service", "digits-workers"),
                ("NetworkPolicy", "digits-workers"),
                ("NetworkPolicy", "digits-coordinator"),
                ("NetworkPolicy", "digits-endpoint"),
                ("StatefulSet", "digits-worker"),
            ],
        ),
        (EXTERNAL_SPEC, [("ConfigMap", "digits-tfe-config")]),
    ],
    ids=["in-cluster", "external"],
)
def test_base_objects(spec: dict[str, Any] | None, kinds: list[tuple[str, str]]) -> None:
    objs = builders.base_objects(make_ctx(spec))
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == kinds
    for o in objs:
        assert o["metadata"]["ownerReferences"] == [OWNER]
        assert o["metadata"]["namespace"] == "ml"


@pytest.mark.parametrize("slot", [0, 1])
def test_serving_objects(slot: int) -> None:
    ctx = make_ctx()
    assert builders.serving_objects(ctx, 2, slot) == [
        builders.serve_deployment(ctx, 2, slot),
        builders.relay_service(ctx),
        builders.endpoint_deployment(ctx),
        builders.client_service(ctx),
    ]
    ext = make_ctx(EXTERNAL_SPEC)
    assert builders.serving_objects(ext, 2) == [builders.serve_deployment(ext, 2), builders.client_service(ext)]


def test_names() -> None:
    assert builders.pvc_names("digits") == [
        "state-digits-worker-0",
        "state-digits-worker-1",
        "state-digits-worker-2",
    ]
    assert builders.share_job_name("digits", 12) == "digits-share-g12"


def test_builders_are_pure() -> None:
    """Same input, equal output; outputs share no mutable state."""
    ctx = make_ctx()
    a, b = builders.worker_statefulset(ctx), builders.worker_statefulset(ctx)
    assert a == b
    a["spec"]["template"]["spec"]["volumes"].append({"name": "x"})
    a["metadata"]["labels"]["x"] = "y"
    assert builders.worker_statefulset(ctx) == b


# ---------------------------------------------------------------- serving.service, serving.tls (issue 10)
from operator_testlib import BASE_SPEC  # noqa: E402

TLS_SPEC = {
    **BASE_SPEC,
    "serving": {
        "service": {"type": "LoadBalancer", "annotations": {"lb.example/internal": "true"}, "nodePort": 30443,
                    "loadBalancerSourceRanges": ["10.0.0.0/8"]},
        "tls": {"secretName": "digits-tls"},
    },
}


def test_endpoint_deployment_with_tls() -> None:
    """serving.tls: the guard terminates TLS on 8443 with the Secret's files; the endpoint listens
    on loopback only and declares no client port; the probes go through TLS like the clients."""
    ctx = make_ctx(TLS_SPEC, mesh_hash="meshhash")
    expected = expected_endpoint(ctx)
    pod = expected["spec"]["template"]["spec"]
    c = pod["containers"][0]
    c["command"] += ["--host", "127.0.0.1"]
    c["ports"] = [METRICS_PORT]
    for name, path, period, failures in (("startupProbe", "/healthz", 1, 120), ("readinessProbe", "/readyz", 1, 6),
                                         ("livenessProbe", "/healthz", 10, 3)):
        c[name] = probe(path, 8443, period, failures)
        c[name]["httpGet"]["scheme"] = "HTTPS"
    g = pod["initContainers"][0]
    g["volumeMounts"].append({"name": "serving-tls", "mountPath": "/var/run/tfe-serving-tls", "readOnly": True})
    g["ports"] = [{"name": "https", "containerPort": 8443, "protocol": "TCP"}]
    pod["volumes"].append({
        "name": "serving-tls",
        "secret": {"secretName": "digits-tls", "defaultMode": 0o440,
                   "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]},
    })
    assert builders.endpoint_deployment(ctx) == expected
    # its guard config carries the public listener (and the pod template hash follows it)
    cfg = builders.guard_config(ctx, "endpoint")
    assert cfg["public"] == {"listen": "tcp:0.0.0.0:8443", "backend": "127.0.0.1:8000",
                             "cert": "/var/run/tfe-serving-tls/tls.crt", "key": "/var/run/tfe-serving-tls/tls.key"}
    assert "public" not in builders.guard_config(make_ctx(), "endpoint")
    assert (builders.endpoint_deployment(ctx)["spec"]["template"]["metadata"]["annotations"]["tfe.dev/config-hash"]
            != builders.endpoint_deployment(make_ctx())["spec"]["template"]["metadata"]["annotations"]
            ["tfe.dev/config-hash"])


def test_client_service_from_serving_service_with_tls() -> None:
    ctx = make_ctx(TLS_SPEC)
    m = meta("digits", "endpoint")
    m["annotations"] = {"lb.example/internal": "true"}
    assert builders.client_service(ctx) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": m,
        "spec": {
            "type": "LoadBalancer",
            "selector": sel("endpoint"),
            "ports": [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP", "nodePort": 30443}],
            "loadBalancerSourceRanges": ["10.0.0.0/8"],
        },
    }
    assert builders.endpoint(ctx) == "https://digits.ml.svc:443"
    nodeport = make_ctx({**BASE_SPEC, "serving": {"service": {"type": "NodePort", "port": 8080}}})
    svc = builders.client_service(nodeport)
    assert svc["spec"]["type"] == "NodePort" and "annotations" not in svc["metadata"]
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    assert builders.endpoint(nodeport) == "http://digits.ml.svc:8080"


def test_endpoint_network_policy_with_tls_admits_the_tls_port_only() -> None:
    pol = builders.endpoint_network_policy(make_ctx(TLS_SPEC))
    assert pol["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8443}]}, METRICS_SCRAPE]


def test_json_logs_setting_reaches_the_pods() -> None:
    ctx = make_ctx(settings=Settings(worker_image=IMAGE, log_format="json"))
    env = {"name": "TFE_LOG_FORMAT", "value": "json"}
    assert env in builders.worker_statefulset(ctx)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env in builders.serve_deployment(ctx, 1)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env in builders.endpoint_deployment(ctx)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env not in builders.endpoint_deployment(make_ctx())["spec"]["template"]["spec"]["containers"][0]["env"]


def test_serving_service_parser_refuses_a_node_port_on_cluster_ip() -> None:
    from tfe_operator.spec import SpecError, parse_spec

    with pytest.raises(SpecError, match="nodePort needs type NodePort"):
        parse_spec({**BASE_SPEC, "serving": {"service": {"nodePort": 30000}}})


def test_external_workers_serve_no_tls_even_with_serving_tls() -> None:
    ctx = make_ctx({**EXTERNAL_SPEC, "serving": {"tls": {"secretName": "digits-tls"}}})
    assert builders.endpoint(ctx) == "http://digits.ml.svc:8000"
    assert builders.client_service(ctx)["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
