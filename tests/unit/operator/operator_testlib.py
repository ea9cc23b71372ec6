"""Helpers for the operator's unit tests (imported by name: tests/unit/operator is on sys.path)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from tfe_operator.builders import Context
from tfe_operator.settings import Settings
from tfe_operator.spec import parse_spec

REPO = Path(__file__).resolve().parents[3]
CRD_PATH = REPO / "charts" / "tfe-operator" / "crds" / "encryptedmodels.tfe.dev.yaml"

BASE_SPEC: dict[str, Any] = {"model": {"configMap": {"name": "digits-model", "key": "model.h5"}}}


MESH_HASH = "0123456789abcdef"
# the ownerReference every object of make_ctx()'s EncryptedModel carries
OWNER = {
    "apiVersion": "tfe.dev/v1alpha1",
    "kind": "EncryptedModel",
    "name": "digits",
    "uid": "uid-1",
    "controller": True,
    "blockOwnerDeletion": True,
}


def make_ctx(
    spec: dict[str, Any] | None = None, settings: Settings | None = None, mesh_hash: str = MESH_HASH
) -> Context:
    raw = copy.deepcopy(BASE_SPEC if spec is None else spec)
    return Context.make(
        name="digits",
        namespace="ml",
        uid="uid-1",
        spec=parse_spec(raw),
        settings=settings or Settings(worker_image="tfe-operator/worker:0.1.0"),
        mesh_hash=mesh_hash,
    )


def load_crd() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return doc


def crd_schema() -> dict[str, Any]:
    schema: dict[str, Any] = load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema
