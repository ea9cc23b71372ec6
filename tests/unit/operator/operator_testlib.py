"""Helpers for the operator's unit tests (imported by name: tests/unit/operator is on sys.path)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tfe_operator.builders import Context, Manifest
from tfe_operator.observe import Observed
from tfe_operator.reconcile import Event, Ref, Resource, reconcile
from tfe_operator.settings import Settings
from tfe_operator.spec import parse_spec
from tfe_operator.status import Status

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


@dataclass
class WirePlan:
    """A reconcile ``Plan`` whose ``status`` is what lands in the object (``Status.to_dict``),
    the typed ``Status`` beside it as ``typed``."""

    apply: list[Manifest]
    delete: list[Ref]
    events: list[Event]
    share_durations: list[tuple[str, float]]
    time_to_serving: float | None
    status: dict[str, Any]
    typed: Status


def reconcile_wire(res: Resource, status: Mapping[str, Any], obs: Observed, now: datetime) -> WirePlan:
    """``reconcile`` with the status as the object holds it, converted at the edge as the handler
    does (``Status.from_dict`` in, ``to_dict`` out). The tests state statuses as the object holds
    them; one the typed Status cannot hold in full is a mistake in the test, refused here."""
    typed = Status.from_dict(status)
    assert typed.to_dict() == dict(status), "status with a field or type the Status does not hold"
    plan = reconcile(res, typed, obs, now)
    return WirePlan(
        plan.apply, plan.delete, plan.events, plan.share_durations, plan.time_to_serving,
        plan.status.to_dict(), plan.status,
    )  # fmt: skip
