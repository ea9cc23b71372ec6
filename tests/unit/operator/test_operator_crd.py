"""The CRD (charts/tfe-operator/crds) is the source of truth: the operator's constants and
defaults must match it, and its schema must accept/refuse the right specs.

CEL rules are mirrored here in Python (keyed by their exact text, so a changed rule fails
this test until the mirror follows); the API server checks them for real in tests/cluster.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import pytest
from operator_testlib import BASE_SPEC

from tfe_operator import api
from tfe_operator import spec as spec_mod
from tfe_operator.spec import SpecError, parse_spec


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural-schema defaulting as the API server does it (defaults, then recurse)."""
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(sub, value[key])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in value]
    return value


CEL_MIRROR: dict[str, Callable[[Any], bool]] = {
    "(has(self.configMap) ? 1 : 0) + (has(self.secret) ? 1 : 0) + (has(self.pvc) ? 1 : 0)"
    " + (has(self.url) ? 1 : 0) + (has(self.s3) ? 1 : 0) == 1": lambda s: (
        sum(k in s for k in ("configMap", "secret", "pvc", "url", "s3")) == 1
    ),
    "!has(self.endpoint) || self.endpoint.startsWith('https://') || self.endpoint.startsWith('http://')": lambda s: (
        "endpoint" not in s or s["endpoint"].startswith(("https://", "http://"))
    ),
    "!self.path.startsWith('/') && !self.path.matches('(^|/)[.][.](/|$)')": lambda s: (
        not s["path"].startswith("/") and not re.search(r"(^|/)[.][.](/|$)", s["path"])
    ),
    "self.url.startsWith('https://') || self.url.startsWith('http://')": lambda s: s["url"].startswith(
        ("https://", "http://")
    ),
    "self.medium == 'PersistentVolumeClaim' || !has(self.storageClassName)": lambda s: (
        s["medium"] == "PersistentVolumeClaim" or "storageClassName" not in s
    ),
    "size(self) == 3": lambda s: len(s) == 3,
    "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 40": lambda s: (
        re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", s["metadata"]["name"]) is not None
        and len(s["metadata"]["name"]) <= 40
    ),
}


def _rules(schema: dict[str, Any], value: Any) -> Iterator[tuple[str, str, Any]]:
    for rule in schema.get("x-kubernetes-validations", []):
        yield rule["rule"], rule["message"], value
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                yield from _rules(sub, value[key])
    elif isinstance(value, list) and "items" in schema:
        for v in value:
            yield from _rules(schema["items"], v)


def validate(schema: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """Errors the API server would report: OpenAPI schema, then CEL rules (on defaulted obj)."""
    obj = apply_defaults(schema, copy.deepcopy(obj))
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(obj)]
    if errors:
        return errors
    return [msg for rule, msg, value in _rules(schema, obj) if not CEL_MIRROR[rule](value)]


def em(spec: dict[str, Any], name: str = "digits") -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": "ml"},
        "spec": spec,
    }


# ------------------------------------------------------------------ identity


def test_names_match_operator_constants(crd: dict[str, Any]) -> None:
    s = crd["spec"]
    assert crd["metadata"]["name"] == api.CRD_NAME
    assert s["group"] == api.GROUP
    assert s["names"]["kind"] == api.KIND
    assert s["names"]["plural"] == api.PLURAL
    assert s["names"]["shortNames"] == ["em"]
    assert s["scope"] == "Namespaced"
    (version,) = s["versions"]
    assert version["name"] == api.VERSION
    assert version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_printer_columns(crd: dict[str, Any]) -> None:
    cols = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [(c["name"], c["jsonPath"]) for c in cols] == [
        ("Phase", ".status.phase"),
        ("Protocol", ".spec.protocol"),
        ("Endpoint", ".status.endpoint"),
        ("Requests", ".status.requestsServed"),
        ("Age", ".metadata.creationTimestamp"),
    ]


def test_status_enums_match_operator(schema: dict[str, Any]) -> None:
    status = schema["properties"]["status"]["properties"]
    assert tuple(status["phase"]["enum"]) == api.PHASES


def test_every_cel_rule_is_mirrored(crd: dict[str, Any]) -> None:
    text = str(crd)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    found: list[str] = []

    def walk(s: Any) -> None:
        if isinstance(s, dict):
            found.extend(r["rule"] for r in s.get("x-kubernetes-validations", []))
            for v in s.values():
                walk(v)
        elif isinstance(s, list):
            for v in s:
                walk(v)

    walk(schema)
    assert sorted(set(found)) == sorted(CEL_MIRROR), text[:0]


# ------------------------------------------------------------------ defaults


def test_defaults_match_operator(schema: dict[str, Any]) -> None:
    """The API server's defaults and the operator's own defaults give the same spec."""
    defaulted = apply_defaults(schema, em(copy.deepcopy(BASE_SPEC)))["spec"]
    assert defaulted == {
        "model": BASE_SPEC["model"],
        "protocol": "ABY3",
        "serving": {"maxBatchSize": 32, "maxWaitMs": 5, "endpointReplicas": 1},
        "workers": {
            "spread": "Preferred",
            "storage": {"medium": "PersistentVolumeClaim", "size": "1Gi", "retainPolicy": "Retain"},
        },
        "shutdown": False,
    }
    assert parse_spec(defaulted) == parse_spec(copy.deepcopy(BASE_SPEC))
    assert spec_mod.DEFAULT_PROTOCOL == "ABY3"


def test_nested_defaults(schema: dict[str, Any]) -> None:
    spec = {
        **BASE_SPEC,
        "serving": {"tokenSecretRef": {"name": "api"}},
        "workers": {"external": [{"host": "a", "port": 1}, {"host": "b", "port": 2}, {"host": "c", "port": 3}]},
    }
    d = apply_defaults(schema, em(spec))["spec"]
    assert d["serving"]["tokenSecretRef"] == {"name": "api", "key": "token"}
    assert [w["httpPort"] for w in d["workers"]["external"]] == [8081] * 3
    assert parse_spec(d) == parse_spec(spec)


# ------------------------------------------------------------------ validation

SHA = "0" * 64
VALID: list[tuple[str, dict[str, Any]]] = [
    ("configmap", BASE_SPEC),
    ("secret", {"model": {"secret": {"name": "s", "key": "model.keras"}}}),
    ("pvc", {"model": {"pvc": {"claimName": "c", "path": "models/a.h5"}}}),
    ("url", {"model": {"url": {"url": "https://x.example/m.h5", "sha256": SHA}}}),
    ("s3-aws-public", {"model": {"s3": {"bucket": "b", "key": "models/m.h5", "sha256": SHA}}}),
    (
        "s3-compatible",
        {
            "model": {
                "s3": {
                    "bucket": "b",
                    "key": "m.h5",
                    "sha256": SHA,
                    "endpoint": "http://minio.storage:9000",
                    "region": "eu-west-1",
                    "credentialsSecretRef": {"name": "s3", "sessionTokenKey": "token"},
                }
            },
            "workers": {"imagePullSecrets": [{"name": "regcred"}, {"name": "other"}]},
        },
    ),
    (
        "everything",
        {
            "model": {"configMap": {"name": "m", "key": "m.h5"}},
            "protocol": "SecureNN",
            "serving": {
                "maxBatchSize": 1,
                "maxWaitMs": 0,
                "maxRequests": 1,
                "tokenSecretRef": {"name": "t", "key": "k"},
                "resources": {"limits": {"cpu": 2, "memory": "1Gi"}},
            },
            "workers": {
                "image": "img:1",
                "imagePullPolicy": "Never",
                "resources": {"limits": {"nvidia.com/gpu": 1}},
                "nodeSelector": {"gpu": "yes"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                "runtimeClassName": "nvidia",
                "spread": "Required",
                "storage": {"medium": "Memory", "size": "512Mi", "retainPolicy": "Delete"},
            },
            "shutdown": True,
        },
    ),
    (
        "external",
        {
            **BASE_SPEC,
            "workers": {
                "external": [
                    {"host": "a.example", "port": 4440},
                    {"host": "b.example", "port": 4440, "httpPort": 9000},
                    {"host": "10.1.2.3", "port": 1},
                ]
            },
        },
    ),
    (
        "service-tls",
        {
            **BASE_SPEC,
            "serving": {
                "service": {
                    "type": "LoadBalancer",
                    "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
                    "port": 443,
                    "nodePort": 30443,
                    "loadBalancerSourceRanges": ["10.0.0.0/8"],
                },
                "tls": {"secretName": "digits-tls"},
            },
        },
    ),
]


@pytest.mark.parametrize("spec", [s for _, s in VALID], ids=[i for i, _ in VALID])
def test_valid_specs(schema: dict[str, Any], spec: dict[str, Any]) -> None:
    assert validate(schema, em(spec)) == []
    parse_spec(apply_defaults(schema, em(spec))["spec"])


def _with(path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE_SPEC)
    cur: dict[str, Any] = spec
    keys = path.split(".")
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
    cur[keys[-1]] = value
    return spec


THREE = [{"host": "a", "port": 1}, {"host": "b", "port": 2}, {"host": "c", "port": 3}]
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no-model", {"protocol": "ABY3"}, "'model' is a required property"),
    ("two-sources", _with("model.url", {"url": "https://x/m", "sha256": SHA}), "exactly one model source"),
    ("no-source", {"model": {}}, "exactly one model source"),
    ("protocol", _with("protocol", "Pond"), "'Pond' is not one of"),
    ("batch-zero", _with("serving.maxBatchSize", 0), "0 is less than the minimum of 1"),
    ("wait-negative", _with("serving.maxWaitMs", -1), "-1 is less than the minimum of 0"),
    ("max-requests-zero", _with("serving.maxRequests", 0), "0 is less than the minimum of 1"),
    ("endpoint-replicas-zero", _with("serving.endpointReplicas", 0), "0 is less than the minimum of 1"),
    ("endpoint-replicas-many", _with("serving.endpointReplicas", 65), "65 is greater than the maximum of 64"),
    ("two-external", _with("workers.external", THREE[:2]), "exactly three are required"),
    ("four-external", _with("workers.external", [*THREE, THREE[0]]), "is too long"),
    ("port", _with("workers.external", [{"host": "a", "port": 70000}, *THREE[1:]]), "70000 is greater"),
    ("spread", _with("workers.spread", "Always"), "'Always' is not one of"),
    ("medium", _with("workers.storage", {"medium": "Disk"}), "'Disk' is not one of"),
    ("retain", _with("workers.storage", {"retainPolicy": "Keep"}), "'Keep' is not one of"),
    ("size", _with("workers.storage", {"size": "lots"}), "does not match"),
    (
        "class-on-memory",
        _with("workers.storage", {"medium": "Memory", "storageClassName": "fast"}),
        "storageClassName applies",
    ),
    ("sha", {"model": {"url": {"url": "https://x/m", "sha256": "abc"}}}, "does not match"),
    ("url-scheme", {"model": {"url": {"url": "ftp://x/m.h5", "sha256": SHA}}}, "http:// or https://"),
    ("s3-and-url", _with("model.s3", {"bucket": "b", "key": "k", "sha256": SHA}), "exactly one model source"),
    ("s3-no-sha", {"model": {"s3": {"bucket": "b", "key": "k"}}}, "'sha256' is a required property"),
    ("s3-sha", {"model": {"s3": {"bucket": "b", "key": "k", "sha256": "ABC"}}}, "does not match"),
    (
        "s3-endpoint",
        {"model": {"s3": {"bucket": "b", "key": "k", "sha256": SHA, "endpoint": "minio:9000"}}},
        "s3.endpoint must start with http:// or https://",
    ),
    (
        "s3-creds-no-name",
        {"model": {"s3": {"bucket": "b", "key": "k", "sha256": SHA, "credentialsSecretRef": {}}}},
        "'name' is a required property",
    ),
    ("pull-secret-no-name", _with("workers.imagePullSecrets", [{}]), "'name' is a required property"),
    ("pvc-abs", {"model": {"pvc": {"claimName": "c", "path": "/etc/passwd"}}}, "relative"),
    ("pvc-dotdot", {"model": {"pvc": {"claimName": "c", "path": "a/../../b"}}}, "relative"),
    ("key-chars", {"model": {"configMap": {"name": "m", "key": "a/b"}}}, "does not match"),
    ("gpu-quantity", _with("workers.resources", {"limits": {"nvidia.com/gpu": "one"}}), "does not match"),
    ("service-type", _with("serving.service", {"type": "Ingress"}), "'Ingress' is not one of"),
    ("service-port", _with("serving.service", {"port": 0}), "0 is less than the minimum of 1"),
    ("service-annotation", _with("serving.service", {"annotations": {"a": 1}}), "1 is not of type 'string'"),
    ("tls-no-secret", _with("serving.tls", {}), "'secretName' is a required property"),
]


@pytest.mark.parametrize(("spec", "message"), [(s, m) for _, s, m in INVALID], ids=[i for i, _, _ in INVALID])
def test_invalid_specs(schema: dict[str, Any], spec: dict[str, Any], message: str) -> None:
    errors = validate(schema, em(spec))
    assert any(message in e for e in errors), errors


@pytest.mark.parametrize("name", ["Digits", "a" * 41, "my.model", "9lives"])
def test_invalid_names(schema: dict[str, Any], name: str) -> None:
    assert validate(schema, em(BASE_SPEC, name=name)) == [
        (
            "metadata.name must be a DNS-1035 label of at most 40 characters "
            "(it prefixes the names of the objects the operator makes)"
        )
    ]


# The operator's own parser refuses what the schema refuses (defence in depth for objects
# that predate a rule).
PARSER_REFUSES = [
    "two-sources",
    "s3-and-url",
    "s3-no-sha",
    "s3-sha",
    "s3-endpoint",
    "s3-creds-no-name",
    "pull-secret-no-name",
    "no-source",
    "protocol",
    "batch-zero",
    "wait-negative",
    "max-requests-zero",
    "two-external",
    "four-external",
    "spread",
    "medium",
    "retain",
    "pvc-abs",
    "pvc-dotdot",
    "service-type",
    "service-port",
    "service-annotation",
    "tls-no-secret",
]


@pytest.mark.parametrize("case", PARSER_REFUSES)
def test_parser_refuses(case: str) -> None:
    spec = next(s for i, s, _ in INVALID if i == case)
    with pytest.raises(SpecError):
        parse_spec(spec)


def _unknown_fields(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Fields the API server would prune (structural schema: no preserve-unknown-fields)."""
    out: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        for k, v in value.items():
            if k not in schema["properties"]:
                out.append(f"{path}.{k}")
            else:
                out += _unknown_fields(schema["properties"][k], v, f"{path}.{k}")
    elif isinstance(value, list) and "items" in schema:
        for v in value:
            out += _unknown_fields(schema["items"], v, f"{path}[]")
    return out


def test_status_with_mesh_is_in_the_schema(schema: dict[str, Any]) -> None:
    """Everything the operator writes to status survives pruning, status.mesh included."""
    import datetime as dt

    from operator_testlib import make_ctx

    from tfe_operator import pki
    from tfe_operator.observe import Observed, WorkerPod
    from tfe_operator.reconcile import Resource, reconcile
    from tfe_operator.status import MeshStatus, Status

    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    mesh = pki.plan_mesh(make_ctx(), pki.Existing(), "r1", now)
    res = Resource(ctx=make_ctx(), generation=1, created=now, mesh=MeshStatus.from_dict(mesh.status))
    pods = tuple(WorkerPod(index=i, name=f"digits-worker-{i}", uid=f"u{i}", ready=True) for i in range(3))
    plan = reconcile(res, Status(), Observed(worker_pods=pods, statefulset=True, public_keys={0: "k"}), now)
    status = plan.status.to_dict()
    assert status["mesh"] == {**mesh.status, "refused": []}
    status_schema = schema["properties"]["status"]
    assert _unknown_fields(status_schema, status) == []
    errors = [e.message for e in jsonschema.Draft7Validator(status_schema).iter_errors(status)]
    assert errors == []


def test_the_https_example_is_a_valid_encryptedmodel(schema: dict[str, Any]) -> None:
    """examples/digits-https.yaml (serving.tls from a cert-manager Certificate's Secret) passes the
    CRD's schema and the operator's parser; its Certificate writes the Secret the spec names."""
    import yaml
    from operator_testlib import REPO

    docs = [d for d in yaml.safe_load_all((REPO / "examples" / "digits-https.yaml").read_text()) if d]
    (em_doc,) = [d for d in docs if d["kind"] == "EncryptedModel"]
    (cert,) = [d for d in docs if d["kind"] == "Certificate"]
    assert validate(schema, em_doc) == []
    spec = parse_spec(apply_defaults(schema, em_doc)["spec"])
    assert spec.serving.tls is not None and spec.serving.tls.secret_name == cert["spec"]["secretName"]
    assert spec.serving.service_port == 443
    routes = [d for d in yaml.safe_load_all((REPO / "examples" / "digits-ingress.yaml").read_text()) if d]
    assert {d["kind"] for d in routes} == {"Ingress", "Gateway", "TLSRoute"}
    by = {d["kind"]: d for d in routes}  # both point at Service <name> on its https port
    backend = by["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": em_doc["metadata"]["name"], "port": {"name": "https"}}
    assert by["TLSRoute"]["spec"]["rules"][0]["backendRefs"] == [{"name": em_doc["metadata"]["name"], "port": 443}]
