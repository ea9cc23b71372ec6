"""The typed status (issue 13): every field of the CRD's status schema, and nothing else."""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st_
from operator_testlib import CRD_PATH

from tfe_operator import status as st

FULL: dict[str, Any] = {
    "phase": "Serving", "message": "serving generation 2", "observedGeneration": 3,
    "endpoint": "http://m.ns.svc:8000", "shareGeneration": 2, "requestsServed": 17,
    "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "ok",
                    "lastTransitionTime": "2026-11-26T00:00:00Z", "observedGeneration": 3}],
    "workers": [{"name": "server0", "pod": "m-worker-0", "podUID": "u0", "address": "a:5440", "ready": True,
                 "publicKey": "AAAA", "generations": [2, 1]}],
    "modelHash": "ab", "sharesStored": True, "shareWorkerUIDs": ["u0", "u1", "u2"],
    "sharing": {"generation": 3, "modelHash": "cd"},
    "resharing": {"generation": 4, "from": 2, "kind": "recovery", "worker": "server1", "attempts": 1},
    "shareGenerationTime": "2026-11-26T00:00:00Z", "refreshRequest": "r1",
    "failure": {"generation": 3, "reason": "InvalidModel", "message": "Lambda"},
    "limitReachedGeneration": 2, "firstServingTime": "2026-11-26T00:00:00Z",
    "mesh": {"caNotAfter": "2027-01-01T00:00:00Z", "notAfter": "2027-01-01T00:00:00Z", "rotation": "",
             "caSHA256": "ef", "refused": [{"party": "server2", "identity": "server1", "listener": "grpc",
                                            "reason": "r", "count": 2, "lastSeen": "2026-11-26T00:00:00Z"}]},
}


def _schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_PATH.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    return schema


def _compare(cls: Any, schema: dict[str, Any], path: str) -> list[str]:
    props = schema.get("properties") or schema.get("items", {}).get("properties") or {}
    keys = st.json_keys(cls)
    errors = [f"{path}.{k}: in the CRD, not in {cls.__name__}" for k in props if k not in keys]
    errors += [f"{path}.{k}: in {cls.__name__}, not in the CRD" for k in keys if k not in props]
    for k, nested in keys.items():
        if nested is not None and k in props:
            errors += _compare(nested, props[k], f"{path}.{k}")
    return errors


def test_the_typed_status_is_the_crds_status_schema() -> None:
    assert _compare(st.Status, _schema(), "status") == []


def test_a_full_status_round_trips() -> None:
    s = st.Status.from_dict(FULL)
    assert s.resharing == st.Resharing(4, 2, "recovery", "server1", 1)
    assert s.workers is not None and s.workers[0].generations == (2, 1)
    assert s.to_dict() == FULL
    assert st.Status.from_dict({}).to_dict() == {}


def test_unreadable_fields_are_as_good_as_absent() -> None:
    bad = copy.deepcopy(FULL)
    bad["shareGeneration"] = True  # a bool is not an int here
    bad["sharesStored"] = "yes"
    bad["workers"] = "server0"
    bad["conditions"] = [{"type": 1, "status": "True"}, "x"]
    bad["extra"] = 1
    out = st.Status.from_dict(bad).to_dict()
    assert "shareGeneration" not in out and "sharesStored" not in out and "workers" not in out
    assert "extra" not in out
    assert out["conditions"] == [{"status": "True"}]


# Every Status the typed classes can hold, built from their own field types (a new field is covered
# without touching this test): from_dict(to_dict(s)) == s, and to_dict is plain JSON data.
def _strategy(tp: Any) -> st_.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return st_.none() | _strategy(inner)
    if origin is tuple:
        return st_.lists(_strategy(typing.get_args(tp)[0]), max_size=3).map(tuple)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        fields = {f.name: _strategy(hints[f.name]) for f in dataclasses.fields(tp)}
        return st_.builds(tp, **fields)
    return {bool: st_.booleans(), int: st_.integers(-(2**40), 2**40), str: st_.text("ab-é", max_size=4)}[tp]


@settings(max_examples=200, deadline=None)
@given(_strategy(st.Status))
def test_every_status_round_trips(s: st.Status) -> None:
    d = s.to_dict()
    assert st.Status.from_dict(d) == s
    assert json.loads(json.dumps(d)) == d  # what the API server stores gives the same Status back
