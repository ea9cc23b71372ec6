"""The EncryptedModel spec as typed, immutable values, with the CRD's defaults applied.

The API server applies the same defaults (structural schema); applying them here too keeps
the builders total when the operator sees an object written before a default existed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Protocol = Literal["ABY3", "SecureNN"]
Spread = Literal["Preferred", "Required"]
Medium = Literal["PersistentVolumeClaim", "Memory"]
RetainPolicy = Literal["Retain", "Delete"]

DEFAULT_PROTOCOL: Protocol = "ABY3"
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_WAIT_MS = 5
DEFAULT_TOKEN_KEY = "token"
DEFAULT_ENDPOINT_REPLICAS = 1
MAX_ENDPOINT_REPLICAS = 64
DEFAULT_SPREAD: Spread = "Preferred"
DEFAULT_MEDIUM: Medium = "PersistentVolumeClaim"
DEFAULT_STORAGE_SIZE = "1Gi"
DEFAULT_RETAIN_POLICY: RetainPolicy = "Retain"
DEFAULT_EXTERNAL_HTTP_PORT = 8081
DEFAULT_S3_REGION = "us-east-1"


class SpecError(ValueError):
    """The spec cannot be acted on (the API server's validation should prevent this)."""


@dataclass(frozen=True)
class KeyRef:
    name: str
    key: str


@dataclass(frozen=True)
class PvcPath:
    claim_name: str
    path: str


@dataclass(frozen=True)
class UrlSource:
    url: str
    sha256: str


@dataclass(frozen=True)
class S3Credentials:
    """A Secret in the model's namespace with the access key pair (and an STS session token)."""

    secret_name: str
    access_key_id_key: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_key: str = "AWS_SECRET_ACCESS_KEY"
    session_token_key: str | None = None


@dataclass(frozen=True)
class S3Source:
    """An object in an S3-compatible store. No endpoint = AWS (virtual-hosted style); with an
    endpoint, path-style requests to it (MinIO, Ceph RGW, SeaweedFS, ...)."""

    bucket: str
    key: str
    sha256: str
    endpoint: str | None = None
    region: str = DEFAULT_S3_REGION
    credentials: S3Credentials | None = None


@dataclass(frozen=True)
class ModelSource:
    config_map: KeyRef | None = None
    secret: KeyRef | None = None
    pvc: PvcPath | None = None
    url: UrlSource | None = None
    s3: S3Source | None = None


ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer"]
SERVICE_TYPES: tuple[ServiceType, ...] = ("ClusterIP", "NodePort", "LoadBalancer")
DEFAULT_SERVICE_PORT = 8000
DEFAULT_TLS_SERVICE_PORT = 443


@dataclass(frozen=True)
class ServiceSpec:
    """serving.service: how clients reach the endpoint (Service ``m``)."""

    type: ServiceType = "ClusterIP"
    annotations: Mapping[str, str] = field(default_factory=dict)
    port: int | None = None  # None: 8000, or 443 with TLS
    node_port: int | None = None
    load_balancer_source_ranges: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServingTLS:
    """serving.tls: the endpoint's certificate, a kubernetes.io/tls Secret (tls.crt, tls.key)."""

    secret_name: str


@dataclass(frozen=True)
class Serving:
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_wait_ms: int = DEFAULT_MAX_WAIT_MS
    max_requests: int | None = None
    token_secret: KeyRef | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    # Replicas of the client-facing endpoint Deployment (m-endpoint; not with external workers).
    endpoint_replicas: int = DEFAULT_ENDPOINT_REPLICAS
    service: ServiceSpec = field(default_factory=ServiceSpec)
    tls: ServingTLS | None = None

    @property
    def service_port(self) -> int:
        if self.service.port is not None:
            return self.service.port
        return DEFAULT_TLS_SERVICE_PORT if self.tls is not None else DEFAULT_SERVICE_PORT


@dataclass(frozen=True)
class Storage:
    medium: Medium = DEFAULT_MEDIUM
    size: str = DEFAULT_STORAGE_SIZE
    storage_class_name: str | None = None
    retain_policy: RetainPolicy = DEFAULT_RETAIN_POLICY


@dataclass(frozen=True)
class ExternalWorker:
    host: str
    port: int
    http_port: int = DEFAULT_EXTERNAL_HTTP_PORT


@dataclass(frozen=True)
class Workers:
    image: str | None = None
    image_pull_policy: str | None = None
    # Secret names for the pods' imagePullSecrets; None = the operator's default list.
    image_pull_secrets: tuple[str, ...] | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    runtime_class_name: str | None = None
    spread: Spread = DEFAULT_SPREAD
    storage: Storage = field(default_factory=Storage)
    external: tuple[ExternalWorker, ...] = ()


@dataclass(frozen=True)
class Shares:
    # A proactive refresh every this many seconds (docs/recovery.md); None: off.
    refresh_interval_seconds: int | None = None


MIN_REFRESH_INTERVAL_SECONDS = 60
_DURATION = re.compile(r"^([0-9]{1,9})(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any, where: str) -> int:
    """'90s', '30m', '24h', '7d' -> seconds."""
    m = _DURATION.match(value) if isinstance(value, str) else None
    if m is None:
        raise SpecError(f"{where} must be a duration such as 90s, 30m, 24h or 7d")
    return int(m.group(1)) * _UNIT[m.group(2)]


IssuerKind = Literal["Issuer", "ClusterIssuer"]
CERT_MANAGER_GROUP = "cert-manager.io"


@dataclass(frozen=True)
class IssuerRef:
    """mesh.issuerRef: a cert-manager issuer for the mesh identities (docs/mesh.md)."""

    name: str
    kind: IssuerKind = "Issuer"
    group: str = CERT_MANAGER_GROUP


@dataclass(frozen=True)
class MeshSpec:
    # None: the operator's own CA per EncryptedModel (pki)
    issuer_ref: IssuerRef | None = None


def parse_mesh(d: Mapping[str, Any]) -> MeshSpec:
    ref = _obj(d, "issuerRef")
    if not ref:
        return MeshSpec()
    kind = ref.get("kind", "Issuer")
    if kind not in ("Issuer", "ClusterIssuer"):
        raise SpecError(f"mesh.issuerRef.kind must be Issuer or ClusterIssuer, not {kind!r}")
    group = ref.get("group") or CERT_MANAGER_GROUP
    if not isinstance(group, str):
        raise SpecError("mesh.issuerRef.group must be a string")
    return MeshSpec(IssuerRef(_str(ref, "name", "mesh.issuerRef"), kind, group))


@dataclass(frozen=True)
class EncryptedModelSpec:
    model: ModelSource
    protocol: Protocol = DEFAULT_PROTOCOL
    serving: Serving = field(default_factory=Serving)
    workers: Workers = field(default_factory=Workers)
    shutdown: bool = False
    shares: Shares = field(default_factory=Shares)
    mesh: MeshSpec = field(default_factory=MeshSpec)
    # The raw spec.model, for the model digest.
    raw_model: Mapping[str, Any] = field(default_factory=dict)

    @property
    def external(self) -> bool:
        return bool(self.workers.external)

    @property
    def model_hash(self) -> str:
        return model_hash(self.raw_model)


def model_hash(raw_model: Mapping[str, Any]) -> str:
    """A short digest of spec.model: a change means the model must be shared again."""
    canonical = json.dumps(raw_model, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _obj(d: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = d.get(key)
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise SpecError(f"{key} must be an object")
    return v


def _str(d: Mapping[str, Any], key: str, where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v:
        raise SpecError(f"{where}.{key} must be a non-empty string")
    return v


def _int(d: Mapping[str, Any], key: str, default: int, where: str, minimum: int) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise SpecError(f"{where}.{key} must be an integer >= {minimum}")
    return v


def _key_ref(d: Mapping[str, Any], where: str, default_key: str | None = None) -> KeyRef:
    key = d.get("key", default_key)
    if not isinstance(key, str) or not key:
        raise SpecError(f"{where}.key must be a non-empty string")
    return KeyRef(name=_str(d, "name", where), key=key)


def parse_model(raw: Mapping[str, Any]) -> ModelSource:
    sources = [k for k in ("configMap", "secret", "pvc", "url", "s3") if raw.get(k) is not None]
    if len(sources) != 1:
        raise SpecError("exactly one model source must be set: configMap, secret, pvc, url or s3")
    (kind,) = sources
    d = _obj(raw, kind)
    if kind == "configMap":
        return ModelSource(config_map=_key_ref(d, "model.configMap"))
    if kind == "secret":
        return ModelSource(secret=_key_ref(d, "model.secret"))
    if kind == "pvc":
        path = _str(d, "path", "model.pvc")
        if path.startswith("/") or ".." in path.split("/"):
            raise SpecError("model.pvc.path must be relative and must not contain '..'")
        return ModelSource(pvc=PvcPath(claim_name=_str(d, "claimName", "model.pvc"), path=path))
    if kind == "s3":
        return ModelSource(s3=parse_s3(d))
    return ModelSource(
        url=UrlSource(url=_str(d, "url", "model.url"), sha256=_str(d, "sha256", "model.url"))
    )


def parse_s3(d: Mapping[str, Any]) -> S3Source:
    sha256 = _str(d, "sha256", "model.s3").lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise SpecError("model.s3.sha256 must be 64 hex digits")
    endpoint = d.get("endpoint") or None
    if endpoint is not None and (
        not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://"))
    ):
        raise SpecError("model.s3.endpoint must start with http:// or https://")
    region = d.get("region") or DEFAULT_S3_REGION
    if not isinstance(region, str):
        raise SpecError("model.s3.region must be a string")
    creds = _obj(d, "credentialsSecretRef")
    credentials = None
    if d.get("credentialsSecretRef") is not None:
        token_key = creds.get("sessionTokenKey") or None
        credentials = S3Credentials(
            secret_name=_str(creds, "name", "model.s3.credentialsSecretRef"),
            access_key_id_key=str(creds.get("accessKeyIdKey") or "AWS_ACCESS_KEY_ID"),
            secret_access_key_key=str(creds.get("secretAccessKeyKey") or "AWS_SECRET_ACCESS_KEY"),
            session_token_key=str(token_key) if token_key else None,
        )
    return S3Source(
        bucket=_str(d, "bucket", "model.s3"),
        key=_str(d, "key", "model.s3"),
        sha256=sha256,
        endpoint=endpoint.rstrip("/") if endpoint else None,
        region=region,
        credentials=credentials,
    )


def _port(d: Mapping[str, Any], key: str, lo: int, hi: int) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise SpecError(f"serving.service.{key} must be an integer in {lo}..{hi}")
    return v


def parse_service(d: Mapping[str, Any]) -> ServiceSpec:
    type_ = d.get("type", "ClusterIP")
    if type_ not in SERVICE_TYPES:
        raise SpecError(
            f"serving.service.type must be one of {', '.join(SERVICE_TYPES)}, not {type_!r}"
        )
    ann = _obj(d, "annotations")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in ann.items()):
        raise SpecError("serving.service.annotations must map strings to strings")
    node_port = _port(d, "nodePort", 1, 65535)
    if node_port is not None and type_ == "ClusterIP":
        raise SpecError("serving.service.nodePort needs type NodePort or LoadBalancer")
    ranges = d.get("loadBalancerSourceRanges") or []
    if not isinstance(ranges, list) or not all(isinstance(r, str) and r for r in ranges):
        raise SpecError("serving.service.loadBalancerSourceRanges must be a list of CIDRs")
    return ServiceSpec(
        type=type_,
        annotations=dict(ann),
        port=_port(d, "port", 1, 65535),
        node_port=node_port,
        load_balancer_source_ranges=tuple(ranges),
    )


def parse_serving_tls(d: Mapping[str, Any]) -> ServingTLS:
    return ServingTLS(secret_name=_str(d, "secretName", "serving.tls"))


def _pull_secrets(w: Mapping[str, Any]) -> tuple[str, ...] | None:
    raw = w.get("imagePullSecrets")
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise SpecError("workers.imagePullSecrets must be a list of {name: ...}")
    return tuple(
        _str(r if isinstance(r, Mapping) else {}, "name", f"workers.imagePullSecrets[{i}]")
        for i, r in enumerate(raw)
    )


def parse_spec(raw: Mapping[str, Any]) -> EncryptedModelSpec:
    """Parse spec (a dict as the API server returns it) into typed values, with defaults."""
    raw_model = _obj(raw, "model")
    model = parse_model(raw_model)

    protocol = raw.get("protocol", DEFAULT_PROTOCOL)
    if protocol not in ("ABY3", "SecureNN"):
        raise SpecError(f"protocol must be ABY3 or SecureNN, not {protocol!r}")

    s = _obj(raw, "serving")
    max_requests = s.get("maxRequests")
    if max_requests is not None:
        max_requests = _int(s, "maxRequests", 1, "serving", 1)
    token = _obj(s, "tokenSecretRef")
    serving = Serving(
        max_batch_size=_int(s, "maxBatchSize", DEFAULT_MAX_BATCH_SIZE, "serving", 1),
        max_wait_ms=_int(s, "maxWaitMs", DEFAULT_MAX_WAIT_MS, "serving", 0),
        max_requests=max_requests,
        token_secret=(
            _key_ref(token, "serving.tokenSecretRef", DEFAULT_TOKEN_KEY) if token else None
        ),
        resources=dict(_obj(s, "resources")),
        endpoint_replicas=_int(s, "endpointReplicas", DEFAULT_ENDPOINT_REPLICAS, "serving", 1),
        service=parse_service(_obj(s, "service")),
        tls=None if s.get("tls") is None else parse_serving_tls(_obj(s, "tls")),
    )
    if serving.endpoint_replicas > MAX_ENDPOINT_REPLICAS:
        raise SpecError(f"serving.endpointReplicas must be <= {MAX_ENDPOINT_REPLICAS}")

    w = _obj(raw, "workers")
    st = _obj(w, "storage")
    medium = st.get("medium", DEFAULT_MEDIUM)
    if medium not in ("PersistentVolumeClaim", "Memory"):
        raise SpecError(
            f"workers.storage.medium must be PersistentVolumeClaim or Memory, not {medium!r}"
        )
    retain = st.get("retainPolicy", DEFAULT_RETAIN_POLICY)
    if retain not in ("Retain", "Delete"):
        raise SpecError(f"workers.storage.retainPolicy must be Retain or Delete, not {retain!r}")
    spread = w.get("spread", DEFAULT_SPREAD)
    if spread not in ("Preferred", "Required"):
        raise SpecError(f"workers.spread must be Preferred or Required, not {spread!r}")
    external_raw = w.get("external") or []
    if external_raw and len(external_raw) != 3:
        raise SpecError("external workers: exactly three are required (server0, server1, server2)")
    external = tuple(
        ExternalWorker(
            host=_str(e, "host", f"workers.external[{i}]"),
            port=_int(e, "port", 0, f"workers.external[{i}]", 1),
            http_port=_int(e, "httpPort", DEFAULT_EXTERNAL_HTTP_PORT, f"workers.external[{i}]", 1),
        )
        for i, e in enumerate(external_raw)
    )
    workers = Workers(
        image=w.get("image") or None,
        image_pull_policy=w.get("imagePullPolicy") or None,
        image_pull_secrets=_pull_secrets(w),
        resources=dict(_obj(w, "resources")),
        node_selector=dict(_obj(w, "nodeSelector")),
        tolerations=tuple(dict(t) for t in (w.get("tolerations") or [])),
        runtime_class_name=w.get("runtimeClassName") or None,
        spread=spread,
        storage=Storage(
            medium=medium,
            size=str(st.get("size", DEFAULT_STORAGE_SIZE)),
            storage_class_name=st.get("storageClassName") or None,
            retain_policy=retain,
        ),
        external=external,
    )
    sh = _obj(raw, "shares")
    interval = None
    if sh.get("refreshInterval") is not None:
        interval = parse_duration(sh.get("refreshInterval"), "shares.refreshInterval")
        if interval < MIN_REFRESH_INTERVAL_SECONDS:
            raise SpecError(
                f"shares.refreshInterval must be at least {MIN_REFRESH_INTERVAL_SECONDS}s"
            )
    mesh = parse_mesh(_obj(raw, "mesh"))
    if mesh.issuer_ref is not None and external:
        raise SpecError("mesh.issuerRef: external workers have no mesh")
    return EncryptedModelSpec(
        shares=Shares(refresh_interval_seconds=interval),
        mesh=mesh,
        model=model,
        protocol=protocol,
        serving=serving,
        workers=workers,
        shutdown=bool(raw.get("shutdown", False)),
        raw_model=dict(raw_model),
    )
