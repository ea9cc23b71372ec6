"""The EncryptedModel status, typed: one place for every field (issue 13).

``Status.from_dict`` reads what is in the object (leniently: the operator reads back its own
writes, and an unreadable field is as good as absent); ``to_dict`` writes what the CRD's status
schema holds, omitting unset fields. A unit test checks these classes against the CRD schema
field by field, so a new status field is added here, in the CRD (with its description: the
reference in docs/operator.md is generated from it) and nowhere else by hand.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def _convert(tp: Any, v: Any) -> Any:
    """``v`` as type ``tp`` (a dataclass, tuple[X, ...], X | None, int, str, bool), or None."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if v is None else _convert(args[0], v)
    if origin is tuple:
        (item, _) = typing.get_args(tp)
        if not isinstance(v, list | tuple):
            return None
        out = [_convert(item, x) for x in v]
        return tuple(x for x in out if x is not None)
    if dataclasses.is_dataclass(tp):
        return _from(tp, v) if isinstance(v, Mapping) else None
    if tp is bool:
        return v if isinstance(v, bool) else None
    if tp is int:
        return v if isinstance(v, int) and not isinstance(v, bool) else None
    if tp is str:
        return v if isinstance(v, str) else None
    raise TypeError(f"unsupported status field type {tp!r}")


def _from(cls: Any, d: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        if f.metadata["json"] in d:
            v = _convert(hints[f.name], d[f.metadata["json"]])
            if v is not None:
                kw[f.name] = v
    return cls(**kw)


def _to(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if v is None:
                continue
            out[f.metadata["json"]] = _to(v)
        return out
    if isinstance(obj, tuple):
        return [_to(x) for x in obj]
    return obj


class _Dict:
    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> typing.Self:
        result: typing.Self = _from(cls, d or {})
        return result

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _to(self)
        return out


@dataclass(frozen=True)
class Condition(_Dict):
    type: str | None = field(default=None, metadata={"json": "type"})
    status: str | None = field(default=None, metadata={"json": "status"})
    reason: str | None = field(default=None, metadata={"json": "reason"})
    message: str | None = field(default=None, metadata={"json": "message"})
    last_transition_time: str | None = field(default=None, metadata={"json": "lastTransitionTime"})
    observed_generation: int | None = field(default=None, metadata={"json": "observedGeneration"})


@dataclass(frozen=True)
class WorkerStatus(_Dict):
    name: str | None = field(default=None, metadata={"json": "name"})
    pod: str | None = field(default=None, metadata={"json": "pod"})
    pod_uid: str | None = field(default=None, metadata={"json": "podUID"})
    address: str | None = field(default=None, metadata={"json": "address"})
    ready: bool | None = field(default=None, metadata={"json": "ready"})
    public_key: str | None = field(default=None, metadata={"json": "publicKey"})
    generations: tuple[int, ...] | None = field(default=None, metadata={"json": "generations"})


@dataclass(frozen=True)
class Sharing(_Dict):
    generation: int | None = field(default=None, metadata={"json": "generation"})
    model_hash: str | None = field(default=None, metadata={"json": "modelHash"})


@dataclass(frozen=True)
class Resharing(_Dict):
    generation: int | None = field(default=None, metadata={"json": "generation"})
    source: int | None = field(default=None, metadata={"json": "from"})
    kind: str | None = field(default=None, metadata={"json": "kind"})
    worker: str | None = field(default=None, metadata={"json": "worker"})
    attempts: int | None = field(default=None, metadata={"json": "attempts"})


@dataclass(frozen=True)
class Failure(_Dict):
    generation: int | None = field(default=None, metadata={"json": "generation"})
    reason: str | None = field(default=None, metadata={"json": "reason"})
    message: str | None = field(default=None, metadata={"json": "message"})


@dataclass(frozen=True)
class MeshRefusal(_Dict):
    party: str | None = field(default=None, metadata={"json": "party"})
    identity: str | None = field(default=None, metadata={"json": "identity"})
    listener: str | None = field(default=None, metadata={"json": "listener"})
    reason: str | None = field(default=None, metadata={"json": "reason"})
    count: int | None = field(default=None, metadata={"json": "count"})
    last_seen: str | None = field(default=None, metadata={"json": "lastSeen"})


@dataclass(frozen=True)
class MeshCertificate(_Dict):
    identity: str | None = field(default=None, metadata={"json": "identity"})
    state: str | None = field(default=None, metadata={"json": "state"})
    reason: str | None = field(default=None, metadata={"json": "reason"})
    not_after: str | None = field(default=None, metadata={"json": "notAfter"})
    serial: str | None = field(default=None, metadata={"json": "serial"})


@dataclass(frozen=True)
class MeshStatus(_Dict):
    ca_not_after: str | None = field(default=None, metadata={"json": "caNotAfter"})
    not_after: str | None = field(default=None, metadata={"json": "notAfter"})
    rotation: str | None = field(default=None, metadata={"json": "rotation"})
    ca_sha256: str | None = field(default=None, metadata={"json": "caSHA256"})
    refused: tuple[MeshRefusal, ...] | None = field(default=None, metadata={"json": "refused"})
    issuer: str | None = field(default=None, metadata={"json": "issuer"})
    certificates: tuple[MeshCertificate, ...] | None = field(
        default=None, metadata={"json": "certificates"}
    )


@dataclass(frozen=True)
class Status(_Dict):
    """status of an EncryptedModel; None = not set (omitted from the object)."""

    phase: str | None = field(default=None, metadata={"json": "phase"})
    message: str | None = field(default=None, metadata={"json": "message"})
    observed_generation: int | None = field(default=None, metadata={"json": "observedGeneration"})
    endpoint: str | None = field(default=None, metadata={"json": "endpoint"})
    share_generation: int | None = field(default=None, metadata={"json": "shareGeneration"})
    requests_served: int | None = field(default=None, metadata={"json": "requestsServed"})
    conditions: tuple[Condition, ...] | None = field(default=None, metadata={"json": "conditions"})
    workers: tuple[WorkerStatus, ...] | None = field(default=None, metadata={"json": "workers"})
    model_hash: str | None = field(default=None, metadata={"json": "modelHash"})
    shares_stored: bool | None = field(default=None, metadata={"json": "sharesStored"})
    share_worker_uids: tuple[str, ...] | None = field(
        default=None, metadata={"json": "shareWorkerUIDs"}
    )
    sharing: Sharing | None = field(default=None, metadata={"json": "sharing"})
    resharing: Resharing | None = field(default=None, metadata={"json": "resharing"})
    share_generation_time: str | None = field(
        default=None, metadata={"json": "shareGenerationTime"}
    )
    refresh_request: str | None = field(default=None, metadata={"json": "refreshRequest"})
    failure: Failure | None = field(default=None, metadata={"json": "failure"})
    limit_reached_generation: int | None = field(
        default=None, metadata={"json": "limitReachedGeneration"}
    )
    first_serving_time: str | None = field(default=None, metadata={"json": "firstServingTime"})
    mesh: MeshStatus | None = field(default=None, metadata={"json": "mesh"})


def json_keys(cls: Any) -> dict[str, Any]:
    """{json key: nested dataclass or None} of a status class (for the CRD schema check)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        inner = args[0]
        if typing.get_origin(inner) is tuple:
            inner = typing.get_args(inner)[0]
        out[f.metadata["json"]] = inner if dataclasses.is_dataclass(inner) else None
    return out
