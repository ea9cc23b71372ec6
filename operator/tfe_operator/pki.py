"""The mesh PKI of one EncryptedModel (docs/mesh.md), as pure functions.

One CA per EncryptedModel (Secret ``m-mesh-ca``: ``ca.crt``, ``ca.key``) and one
``kubernetes.io/tls`` Secret per identity (``m-mesh-<identity>``: ``tls.crt``, ``tls.key``,
``ca.crt``), all owned by the EncryptedModel. ``plan_mesh`` decides, from what exists (the CA
in full, the leaves by their annotations only), which Secrets to write:

- a new CA (and every leaf with it) when there is none, when it belongs to an earlier
  EncryptedModel of the same name (another uid), when ``tfe.dev/rotate-mesh`` asks for it, or
  when it is near its end;
- a leaf when it is missing, was signed by another CA, or is near its end.

The share Job's identity (``share-g<N>``) is issued on its own when its Job is created, valid for
the Job's deadline plus a margin. Nothing here logs or prints key material; the clock is a
parameter.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tfe_client import mesh

from . import api, builders
from .builders import Context, Manifest

KeyPair = mesh.KeyPair

CA_DAYS = 365
LEAF_DAYS = 90
# Reissue before the end: the CA (and every leaf) with 30 days left, a leaf with 15 days left.
CA_RENEW = dt.timedelta(days=30)
LEAF_RENEW = dt.timedelta(days=15)
# The share Job's certificate: its deadline plus this (pod scheduling, image pull).
SHARE_MARGIN = dt.timedelta(minutes=15)
# The operator's own identity (in memory only): reissued with an hour left.
OPERATOR_LIFETIME = dt.timedelta(days=1)
OPERATOR_RENEW = dt.timedelta(hours=1)

# Long-lived identities, issued with the CA (share-gN is issued per Job).
IDENTITIES: tuple[str, ...] = (*mesh.SERVERS, mesh.COORDINATOR, mesh.ENDPOINT)
TLS_TYPE = "kubernetes.io/tls"


def sha256(pem: bytes) -> str:
    return hashlib.sha256(pem).hexdigest()


def _ts(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_ts(v: Any) -> dt.datetime | None:
    if not isinstance(v, str) or not v:
        return None
    try:
        return dt.datetime.fromisoformat(v)
    except ValueError:
        return None


# ---------------------------------------------------------------- Secrets (whole manifests)


def _secret(
    ctx: Context,
    name: str,
    type_: str,
    data: Mapping[str, bytes],
    annotations: Mapping[str, str],
    extra_labels: Mapping[str, str] | None = None,
) -> Manifest:
    import base64

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": builders.metadata(
            ctx, name, builders.MESH, extra_labels=extra_labels, annotations=annotations
        ),
        "type": type_,
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def ca_secret(ctx: Context, ca: KeyPair, rotation: str) -> Manifest:
    return _secret(
        ctx,
        builders.mesh_ca_secret_name(ctx.name),
        "Opaque",
        {"ca.crt": ca.cert, "ca.key": ca.key},
        {
            api.ANNOTATION_MESH_ROTATION: rotation,
            api.ANNOTATION_MESH_OWNER: ctx.uid,
            api.ANNOTATION_CERT_SHA: sha256(ca.cert),
            api.ANNOTATION_NOT_AFTER: _ts(ca.not_after),
        },
    )


def leaf_secret(ctx: Context, ca: KeyPair, leaf: KeyPair) -> Manifest:
    identity = leaf.identity
    extra = None
    if mesh.matches(identity, mesh.SHARE_PATTERN):
        extra = {api.LABEL_GENERATION: identity.removeprefix("share-g")}
    return _secret(
        ctx,
        builders.mesh_secret_name(ctx.name, identity),
        TLS_TYPE,
        {"tls.crt": leaf.cert, "tls.key": leaf.key, "ca.crt": ca.cert},
        {
            api.ANNOTATION_MESH_CA: sha256(ca.cert),
            api.ANNOTATION_CERT_SHA: sha256(leaf.cert),
            api.ANNOTATION_NOT_AFTER: _ts(leaf.not_after),
        },
        extra_labels=extra,
    )


def dns_names(ctx: Context, identity: str) -> list[str]:
    """The identity first (what peers check), then the stable DNS names of its pods."""
    if identity in mesh.SERVERS:
        return [identity, builders.mesh_host(ctx, identity)]
    if identity == mesh.COORDINATOR:
        return [identity, *(builders.mesh_host(ctx, p) for p in builders.COORDINATOR_PARTIES)]
    if mesh.matches(identity, mesh.SHARE_PATTERN):
        return [identity, builders.mesh_host(ctx, builders.SHARE_PARTY)]
    return [identity]


# ---------------------------------------------------------------- what exists


@dataclass(frozen=True)
class LeafInfo:
    """A leaf Secret as its annotations describe it (its data is never read)."""

    ca_sha: str
    cert_sha: str
    not_after: dt.datetime | None


@dataclass(frozen=True)
class Existing:
    ca: KeyPair | None = None
    ca_rotation: str = ""
    ca_owner: str = ""
    leaves: Mapping[str, LeafInfo] = field(default_factory=dict)


def parse_ca_secret(secret: Mapping[str, Any] | None) -> tuple[KeyPair | None, str, str]:
    """(CA, rotation it was made for, uid of the EncryptedModel it was made for)."""
    import base64

    if not secret:
        return None, "", ""
    data = secret.get("data") or {}
    ann = (secret.get("metadata") or {}).get("annotations") or {}
    try:
        ca = KeyPair(base64.b64decode(data["ca.crt"]), base64.b64decode(data["ca.key"]))
        _ = ca.not_after  # parses
    except (KeyError, ValueError, TypeError):
        return None, "", ""
    rotation = str(ann.get(api.ANNOTATION_MESH_ROTATION, ""))
    return ca, rotation, str(ann.get(api.ANNOTATION_MESH_OWNER, ""))


def parse_leaf_metadata(meta: Mapping[str, Any] | None) -> LeafInfo | None:
    if not meta:
        return None
    ann = (meta.get("metadata") or meta).get("annotations") or {}
    return LeafInfo(
        ca_sha=str(ann.get(api.ANNOTATION_MESH_CA, "")),
        cert_sha=str(ann.get(api.ANNOTATION_CERT_SHA, "")),
        not_after=_parse_ts(ann.get(api.ANNOTATION_NOT_AFTER)),
    )


# ---------------------------------------------------------------- the decision


@dataclass(frozen=True)
class MeshPlan:
    ca: KeyPair | None  # the operator's own CA (None: cert-manager issues, certmgr)
    apply: list[Manifest]  # Secrets (CA first) or cert-manager Certificates to write
    hash: str  # of the CA and the long-lived leaves: the pods' restart trigger
    status: dict[str, Any]  # status.mesh
    reason: str  # why anything was (re)issued; "" when nothing was
    # cert-manager: which identity is not issued yet or failed, and why ("" when all are)
    pending: str = ""
    # the trust anchor (PEM): the CA's certificate, or the issued Secrets' ca.crt
    trust: bytes = b""
    # the operator's client identity when cert-manager issues it (else made from `ca`)
    operator: KeyPair | None = None


def ca_valid(ex: Existing, ctx: Context, rotation: str, now: dt.datetime) -> str:
    """ "" if the existing CA can stay, else why it cannot."""
    if ex.ca is None:
        return "no CA yet"
    if ex.ca_owner != ctx.uid:
        return "the EncryptedModel was re-created"
    if ex.ca_rotation != rotation:
        return f"rotation requested ({api.ANNOTATION_ROTATE_MESH})"
    if ex.ca.not_after - now < CA_RENEW:
        return "the CA is near its end"
    return ""


def plan_mesh(ctx: Context, ex: Existing, rotation: str, now: dt.datetime) -> MeshPlan:
    apply: list[Manifest] = []
    why = ca_valid(ex, ctx, rotation, now)
    ca = ex.ca
    if why or ca is None:
        ca = mesh.make_ca(f"{ctx.namespace}/{ctx.name}", days=CA_DAYS, now=now)
        apply.append(ca_secret(ctx, ca, rotation))
    ca_sha = sha256(ca.cert)
    reasons = [why] if why else []
    leaves: dict[str, LeafInfo] = {}
    for identity in IDENTITIES:
        old = ex.leaves.get(identity)
        if why:
            stale = "new CA"
        elif old is None:
            stale = "missing"
        elif old.ca_sha != ca_sha:
            stale = "signed by another CA"
        elif old.not_after is None or old.not_after - now < LEAF_RENEW:
            stale = "near its end"
        else:
            stale = ""
        if stale:
            kp = mesh.issue(ca, identity, dns_names(ctx, identity), days=LEAF_DAYS, now=now)
            apply.append(leaf_secret(ctx, ca, kp))
            leaves[identity] = LeafInfo(ca_sha, sha256(kp.cert), kp.not_after)
            if not why:
                reasons.append(f"{identity}: {stale}")
        else:
            assert old is not None
            leaves[identity] = old
    digest = hashlib.sha256(ca_sha.encode())
    for identity in IDENTITIES:
        digest.update(f"{identity}={leaves[identity].cert_sha}".encode())
    not_afters = [leaf.not_after for leaf in leaves.values() if leaf.not_after is not None]
    status = {
        "caNotAfter": _ts(ca.not_after),
        "notAfter": _ts(min(not_afters)) if not_afters else _ts(ca.not_after),
        "rotation": rotation,
        "caSHA256": ca_sha,
    }
    return MeshPlan(ca, apply, digest.hexdigest()[:16], status, "; ".join(reasons), trust=ca.cert)


def issue_for(
    ca: KeyPair, identity: str, names: list[str], now: dt.datetime, lifetime: dt.timedelta
) -> KeyPair:
    """A leaf valid until now + lifetime (or the CA's end). `mesh.issue` counts whole days from
    its `now`, so a shorter lifetime is issued with that clock set back (an earlier notBefore)."""
    days = max(1, -(-lifetime // dt.timedelta(days=1)))
    return mesh.issue(ca, identity, names, days=days, now=now + lifetime - dt.timedelta(days=days))


def share_secret(ctx: Context, ca: KeyPair, generation: int, now: dt.datetime) -> Manifest:
    """The share Job's identity: valid for its deadline plus a margin."""
    lifetime = dt.timedelta(seconds=ctx.share_deadline_seconds) + SHARE_MARGIN
    identity = mesh.share_identity(generation)
    return leaf_secret(ctx, ca, issue_for(ca, identity, dns_names(ctx, identity), now, lifetime))


def operator_identity(ca: KeyPair, now: dt.datetime) -> KeyPair:
    """The operator's own client certificate (kept in memory), to read the workers' HTTP side."""
    return issue_for(ca, mesh.OPERATOR, [mesh.OPERATOR], now, OPERATOR_LIFETIME)


# ---------------------------------------------------------------- mTLS client (the operator)


def client_context(trust: bytes, me: KeyPair) -> ssl.SSLContext:
    """TLS 1.3, the mesh CA (`trust`, PEM) only, our certificate as the client's. Python's ssl
    loads a key from a file only: it is written to a private temporary file and removed at once."""
    sc = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    sc.minimum_version = ssl.TLSVersion.TLSv1_3
    sc.load_verify_locations(cadata=trust.decode())
    with tempfile.TemporaryDirectory(prefix="tfe-mesh-") as d:
        path = os.path.join(d, "operator.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(me.key + me.cert)
        sc.load_cert_chain(path)
    return sc


def mtls_get(
    host: str, port: int, path: str, sc: ssl.SSLContext, expect: str, timeout: float
) -> bytes:
    """GET over mutual TLS, the server's certificate checked to name `expect`."""
    import http.client

    class Conn(http.client.HTTPSConnection):
        def connect(self) -> None:
            raw = socket.create_connection((host, port), timeout=timeout)
            self.sock = sc.wrap_socket(raw, server_hostname=expect)

    conn = Conn(host, port, timeout=timeout, context=sc)
    try:
        conn.request("GET", path, headers={"Host": expect})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"GET {path} from {expect}: HTTP {resp.status}")
        return body
    finally:
        conn.close()
