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

# Worker contract (docs/worker-contract.md).
PORT_TF: Final = 4440
PORT_HTTP: Final = 8081
PORT_COORDINATOR: Final = 4450
PORT_SERVE: Final = 8000
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
