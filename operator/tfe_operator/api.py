"""API names. The CRD in charts/tfe-operator/crds/ is the source of truth; a unit test
checks that these constants match it."""

from typing import Final

GROUP: Final = "tfe.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "EncryptedModel"
PLURAL: Final = "encryptedmodels"
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

FIELD_MANAGER: Final = "tfe-operator"

# Labels and annotations on every object the operator makes.
LABEL_MODEL: Final = f"{GROUP}/model"
LABEL_GENERATION: Final = f"{GROUP}/share-generation"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
ANNOTATION_MODEL_HASH: Final = f"{GROUP}/model-hash"
ANNOTATION_CONFIG_HASH: Final = f"{GROUP}/config-hash"
# On share Jobs: share (from the model), recovery or refresh (from a generation, docs/recovery.md).
ANNOTATION_SHARE_KIND: Final = f"{GROUP}/share-kind"
# On the EncryptedModel: a new value asks for a proactive refresh of the shares.
ANNOTATION_REFRESH_SHARES: Final = f"{GROUP}/refresh-shares"
# The party mesh (docs/mesh.md): a new value on the EncryptedModel asks for a new CA and
# certificates; the pods' template carries the hash of the certificates they mount.
ANNOTATION_ROTATE_MESH: Final = f"{GROUP}/rotate-mesh"
ANNOTATION_MESH_HASH: Final = f"{GROUP}/mesh-hash"
# On the serve pod template: its digest apart from the coordinator slot (builders).
ANNOTATION_SERVE_HASH: Final = f"{GROUP}/serve-hash"
# On the mesh Secrets (so that the operator can judge a leaf from its metadata alone).
ANNOTATION_MESH_CA: Final = f"{GROUP}/mesh-ca"
ANNOTATION_MESH_ROTATION: Final = f"{GROUP}/mesh-rotation"
ANNOTATION_MESH_OWNER: Final = f"{GROUP}/mesh-owner-uid"
ANNOTATION_CERT_SHA: Final = f"{GROUP}/cert-sha256"
ANNOTATION_NOT_AFTER: Final = f"{GROUP}/not-after"

# Worker contract (docs/worker-contract.md).
PORT_TF: Final = 4440
PORT_HTTP: Final = 8081
PORT_COORDINATOR: Final = 4450
PORT_SERVE: Final = 8000
# tfe-guard on the pod IP: mTLS gRPC, mTLS HTTP, plain health (GET of a few paths only).
PORT_GUARD_GRPC: Final = 5440
PORT_GUARD_HTTP: Final = 5443
PORT_GUARD_HEALTH: Final = 5444
# Prometheus /metrics of every worker, serve and endpoint process (all interfaces; nothing else
# is served there): NetworkPolicies admit scrapes on it from anywhere.
PORT_METRICS: Final = 9090
# serving.tls: the endpoint pod's guard terminates client TLS here (the endpoint listens on
# loopback only) with the Secret mounted at SERVING_TLS_DIR.
PORT_SERVE_TLS: Final = 8443
SERVING_TLS_DIR: Final = "/var/run/tfe-serving-tls"
# Raw ports that only loopback may reach inside a party's pod (iptables, set by mesh-init).
RAW_PORT_RANGES: Final = ("4440:4460", "8081:8090")
CONFIG_KEY: Final = "tfe.json"
CONFIG_DIR: Final = "/etc/tfe"
STATE_DIR: Final = "/var/lib/tfe"
SPOOL_DIR: Final = "/spool"
TOKEN_DIR: Final = "/var/run/tfe-token"
MODEL_DIR: Final = "/model"
WORKER_UID: Final = 10001
EXIT_INVALID_MODEL: Final = 2

PHASES: Final = (
    "Pending",
    "Provisioning",
    "Sharing",
    "Serving",
    "ShuttingDown",
    "Stopped",
    "Failed",
)
CONDITION_TYPES: Final = ("WorkersReady", "ModelShared", "Serving", "Ready")
