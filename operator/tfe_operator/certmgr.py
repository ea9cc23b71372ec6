"""The mesh identities issued by cert-manager (``spec.mesh.issuerRef``; docs/mesh.md), as pure
functions.

Instead of a CA of its own (``pki``), the operator writes one cert-manager ``Certificate`` per
identity, owned by the EncryptedModel, whose Secret has the name the pods already mount
(``m-mesh-<identity>``: ``tls.crt``, ``tls.key``, ``ca.crt``) and the identity encoding the
guards verify (Subject CN = identity, the same DNS SANs as ``pki.dns_names``, server and client
auth). The trust anchor is the issued Secrets' ``ca.crt``: the issuer must be a CA-type issuer
(cert-manager's CA issuer, Vault, ...) that puts its CA there, the same one for every identity.
``plan_issued`` judges what cert-manager has issued so far and says which identity is pending
or failed and why; the handler does the reads and writes. The operator's own client identity
(``operator``) is one of these Certificates too (its key is read from its Secret, never logged).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tfe_client import mesh

from . import api, builders, pki
from .builders import Context, Manifest
from .spec import IssuerRef

API_VERSION = "cert-manager.io/v1"
KIND = "Certificate"
REQUEST_KIND = "CertificateRequest"
# cert-manager's annotations on a CertificateRequest
REQUEST_CERTIFICATE = "cert-manager.io/certificate-name"
REQUEST_REVISION = "cert-manager.io/certificate-revision"
# Long-lived identities (as pki.IDENTITIES) and the operator's own client identity.
IDENTITIES: tuple[str, ...] = (*pki.IDENTITIES, mesh.OPERATOR)
# The same lifetimes as the operator's own CA issues (pki.LEAF_DAYS, pki.LEAF_RENEW).
DURATION = dt.timedelta(days=pki.LEAF_DAYS)
RENEW_BEFORE = pki.LEAF_RENEW
# cert-manager refuses a duration under an hour.
MIN_DURATION = dt.timedelta(hours=1)
USAGES = ("digital signature", "server auth", "client auth")
CA_TYPE_HINT = (
    "needs a CA-type issuer (cert-manager's CA issuer, Vault, ...), not ACME or SelfSigned"
)


def certificate_name(m: str, identity: str) -> str:
    """The Certificate and its Secret have the same name."""
    return builders.mesh_secret_name(m, identity)


def go_duration(t: dt.timedelta) -> str:
    """A Go duration string (cert-manager's duration fields): 2160h, 75m, 3601s."""
    s = int(t.total_seconds())
    if s % 3600 == 0:
        return f"{s // 3600}h"
    if s % 60 == 0:
        return f"{s // 60}m"
    return f"{s}s"


def certificate(
    ctx: Context,
    issuer: IssuerRef,
    identity: str,
    duration: dt.timedelta = DURATION,
    renew_before: dt.timedelta | None = RENEW_BEFORE,
) -> Manifest:
    """The whole Certificate of one identity."""
    extra = None
    if mesh.matches(identity, mesh.SHARE_PATTERN):
        extra = {api.LABEL_GENERATION: identity.removeprefix("share-g")}
    meta = builders.metadata(
        ctx, certificate_name(ctx.name, identity), builders.MESH, extra_labels=extra
    )
    spec: dict[str, Any] = {
        "secretName": certificate_name(ctx.name, identity),
        "secretTemplate": {"labels": dict(meta["labels"])},
        "commonName": identity,
        "dnsNames": list(dict.fromkeys(pki.dns_names(ctx, identity))),
        "duration": go_duration(max(duration, MIN_DURATION)),
        "privateKey": {
            "algorithm": "ECDSA",
            "size": 256,
            "encoding": "PKCS8",
            "rotationPolicy": "Always",
        },
        "usages": list(USAGES),
        "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
    }
    if renew_before is not None:
        spec["renewBefore"] = go_duration(renew_before)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": spec}


def share_certificate(ctx: Context, issuer: IssuerRef, generation: int) -> Manifest:
    """The share Job's identity: its deadline plus a margin (at least cert-manager's hour);
    cert-manager's default renewal (at two thirds) never comes before the Job is gone."""
    lifetime = dt.timedelta(seconds=ctx.share_deadline_seconds) + pki.SHARE_MARGIN
    return certificate(ctx, issuer, mesh.share_identity(generation), lifetime, None)


def secret_owner(ctx: Context, name: str) -> Manifest:
    """What the operator applies to an issued Secret: only its ownerReference (cert-manager does
    not own its Secrets), so that the keys go with the EncryptedModel and a re-created one gets
    new ones. Applied only to a Secret that exists (server-side apply would create it). Not as
    its controller: cert-manager may be one (--enable-certificate-owner-ref), and a Secret may
    have only one."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": ctx.namespace,
            "ownerReferences": [{**builders.owner_reference(ctx), "controller": False}],
        },
    }


def secret_action(secret: Mapping[str, Any] | None, uid: str) -> str:
    """What to do with an issued Secret's ownership: "adopt" (add this EncryptedModel as its
    owner), "delete" (it belongs to an earlier EncryptedModel of the same name: cert-manager
    issues a new key pair for this one), or "" (nothing)."""
    if secret is None:
        return ""
    refs = (secret.get("metadata") or {}).get("ownerReferences") or []
    ours = [r for r in refs if isinstance(r, Mapping) and r.get("kind") == api.KIND]
    if any(r.get("uid") == uid for r in ours):
        return ""
    return "delete" if ours else "adopt"


# ---------------------------------------------------------------- judging what was issued


@dataclass(frozen=True)
class Issued:
    """One identity as observed: its Certificate (None: none yet) and its Secret's data
    (decoded; None: no Secret yet). The key is read for the operator's identity only."""

    certificate: Mapping[str, Any] | None
    secret: Mapping[str, bytes] | None
    # its newest CertificateRequest (read only while something waits): why it waits
    request: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class IdentityState:
    identity: str
    state: str  # Ready | Pending | Failed
    reason: str
    not_after: dt.datetime | None = None
    serial: str = ""
    ca_sha: str = ""
    cert_sha: str = ""

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"identity": self.identity, "state": self.state}
        if self.reason:
            out["reason"] = self.reason
        if self.not_after is not None:
            out["notAfter"] = pki._ts(self.not_after)
        if self.serial:
            out["serial"] = self.serial
        return out


def _condition(cert: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    for c in ((cert or {}).get("status") or {}).get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == type_:
            return c
    return None


def latest_requests(items: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Certificate name -> its newest CertificateRequest (by cert-manager's revision)."""
    out: dict[str, tuple[int, Mapping[str, Any]]] = {}
    for cr in items:
        ann = (cr.get("metadata") or {}).get("annotations") or {}
        name = ann.get(REQUEST_CERTIFICATE)
        try:
            rev = int(ann.get(REQUEST_REVISION, 0))
        except (TypeError, ValueError):
            rev = 0
        if isinstance(name, str) and (name not in out or rev >= out[name][0]):
            out[name] = (rev, cr)
    return {k: v[1] for k, v in out.items()}


def _request_state(identity: str, cr: Mapping[str, Any] | None) -> IdentityState | None:
    """What a CertificateRequest that is not Ready says (e.g. the issuer does not exist or is
    not ready: reason Pending; the issuer refused: Failed; an approver denied it: Denied)."""
    ready = _condition(cr, "Ready")
    if ready is None or ready.get("status") != "False":
        return None
    name = str(((cr or {}).get("metadata") or {}).get("name", ""))
    reason = str(ready.get("reason", ""))
    why = f"cert-manager: CertificateRequest {name}: {reason}: {ready.get('message', '')}"
    state = "Failed" if reason in ("Failed", "Denied") else "Pending"
    return IdentityState(identity, state, why.strip(": "))


def _waiting(
    identity: str, cert: Mapping[str, Any] | None, request: Mapping[str, Any] | None = None
) -> IdentityState:
    """No usable Secret yet: what the Certificate's conditions (and its newest
    CertificateRequest's) say."""
    if cert is None:
        return IdentityState(identity, "Pending", "Certificate not created yet")
    from_request = _request_state(identity, request)
    issuing = _condition(cert, "Issuing")
    ready = _condition(cert, "Ready")
    if issuing is not None and issuing.get("status") == "False":
        why = f"{issuing.get('reason', '')}: {issuing.get('message', '')}".strip(": ")
        return IdentityState(identity, "Failed", f"cert-manager: {why}")
    if from_request is not None:
        return from_request
    if ready is not None and ready.get("status") == "False" and ready.get("message"):
        return IdentityState(identity, "Pending", f"cert-manager: {ready.get('message')}")
    if issuing is not None and issuing.get("message"):
        return IdentityState(identity, "Pending", f"cert-manager: {issuing.get('message')}")
    return IdentityState(identity, "Pending", "waiting for cert-manager to issue it")


def _verify_ca(ca_pem: bytes) -> tuple[x509.Certificate | None, str]:
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        return None, f"ca.crt is not a PEM certificate ({CA_TYPE_HINT})"
    try:
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = bc.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        return None, f"ca.crt is not a CA certificate ({CA_TYPE_HINT})"
    return ca, ""


def judge(identity: str, issued: Issued, now: dt.datetime) -> IdentityState:
    """Whether the issued Secret holds what the guards will accept for this identity."""
    data = issued.secret
    if data is None or not data.get("tls.crt"):
        return _waiting(identity, issued.certificate, issued.request)
    ca_pem = data.get("ca.crt") or b""
    if not ca_pem.strip():
        return IdentityState(
            identity, "Failed", f"the issuer put no ca.crt in the Secret: {CA_TYPE_HINT}"
        )
    try:
        leaf = x509.load_pem_x509_certificate(data["tls.crt"])
    except ValueError:
        return IdentityState(identity, "Failed", "tls.crt is not a PEM certificate")
    ca, why = _verify_ca(ca_pem)
    if ca is None:
        return IdentityState(identity, "Failed", why)
    serial = f"{leaf.serial_number:x}"
    cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(cn[0].value) if cn else ""
    if name != identity:
        return IdentityState(
            identity, "Failed", f"the issued certificate's CN is {name!r}, not {identity!r}"
        )
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return IdentityState(identity, "Failed", "tls.crt is not signed by the Secret's ca.crt")
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        usages = set(eku)
    except x509.ExtensionNotFound:
        usages = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    if not {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= usages:
        return IdentityState(
            identity, "Failed", "the issued certificate lacks server auth or client auth usage"
        )
    not_after = leaf.not_valid_after_utc
    if not_after <= now:
        st = _waiting(identity, issued.certificate, issued.request)
        return IdentityState(
            identity,
            "Failed" if st.state == "Failed" else "Pending",
            f"expired {pki._ts(not_after)}; {st.reason}",
            not_after,
            serial,
        )
    if identity == mesh.OPERATOR and not data.get("tls.key"):
        return IdentityState(identity, "Pending", "no tls.key in the Secret yet")
    # Still valid, but cert-manager failed to renew it: say so (it retries with backoff).
    issuing = _condition(issued.certificate, "Issuing")
    note = ""
    if issuing is not None and issuing.get("status") == "False":
        note = f"renewal failed: {issuing.get('reason', '')}: {issuing.get('message', '')}"
    return IdentityState(
        identity,
        "Ready",
        note,
        not_after,
        serial,
        pki.sha256(ca_pem),
        pki.sha256(data["tls.crt"]),
    )


def plan_issued(
    ctx: Context, issuer: IssuerRef, observed: Mapping[str, Issued], now: dt.datetime
) -> pki.MeshPlan:
    """The Certificates to apply, and (when every identity is Ready and all name the same CA)
    the trust anchor, the operator's identity and the pods' restart trigger; otherwise
    ``pending`` says which identity is not ready and why."""
    apply = [certificate(ctx, issuer, identity) for identity in IDENTITIES]
    states = [judge(i, observed.get(i, Issued(None, None)), now) for i in IDENTITIES]
    issuer_name = f"{issuer.kind}/{issuer.name}"
    status: dict[str, Any] = {
        "issuer": issuer_name,
        "certificates": [s.status() for s in states],
    }
    problems = [f"{s.identity}: {s.reason}" for s in states if s.state != "Ready"]
    cas = {s.ca_sha for s in states if s.state == "Ready"}
    if not problems and len(cas) > 1:
        problems.append(
            "the issued Secrets name different CAs in ca.crt (the issuer's CA changed, or it is "
            f"not a CA-type issuer): waiting until all are reissued by one CA; {CA_TYPE_HINT}"
        )
    if problems:
        return pki.MeshPlan(
            ca=None, apply=apply, hash="", status=status, reason="", pending="; ".join(problems)
        )
    ca_pem = bytes(observed[mesh.SERVERS[0]].secret["ca.crt"])  # type: ignore[index]
    ca_cert = x509.load_pem_x509_certificate(ca_pem)
    op = observed[mesh.OPERATOR].secret
    assert op is not None
    ca_sha = cas.pop()
    digest = hashlib.sha256(ca_sha.encode())
    for s in states:
        if s.identity in pki.IDENTITIES:
            digest.update(f"{s.identity}={s.cert_sha}".encode())
    long_lived = [s.not_after for s in states if s.identity in pki.IDENTITIES and s.not_after]
    status.update(
        {
            "caNotAfter": pki._ts(ca_cert.not_valid_after_utc),
            "notAfter": pki._ts(min(long_lived)),
            "caSHA256": ca_sha,
        }
    )
    return pki.MeshPlan(
        ca=None,
        apply=apply,
        hash=digest.hexdigest()[:16],
        status=status,
        reason="",
        trust=ca_pem,
        operator=pki.KeyPair(bytes(op["tls.crt"]), bytes(op["tls.key"])),
    )


def share_deletes(deleted: Sequence[tuple[str, str]], m: str) -> list[str]:
    """The share Certificates to delete with their Secrets: the names of deleted Secrets that
    are share identities of model m (otherwise cert-manager would issue them again)."""
    prefix = certificate_name(m, "share-g")
    return [name for kind, name in deleted if kind == "Secret" and name.startswith(prefix)]
