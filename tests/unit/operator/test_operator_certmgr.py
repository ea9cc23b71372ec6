"""spec.mesh.issuerRef: the cert-manager Certificates (whole manifests), how the operator judges
what cert-manager issued, and the handler waiting for it (against the in-memory API server)."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import kopf
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from operator_testlib import BASE_SPEC, OWNER, make_ctx
from test_operator_handlers import SECRETS, STS, FakeApi, _mesh_hash, api, body, run  # noqa: F401

from tfe_client import mesh
from tfe_operator import api as api_mod
from tfe_operator import certmgr, pki
from tfe_operator.spec import IssuerRef, SpecError, parse_spec

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
ISSUER = IssuerRef("mesh-ca", "ClusterIssuer")
SPEC = {**BASE_SPEC, "mesh": {"issuerRef": {"name": "mesh-ca", "kind": "ClusterIssuer"}}}
CERTS = "/apis/cert-manager.io/v1/namespaces/ml/certificates"
# an issued Secret's owner: the model, not as controller (cert-manager may be that)
ADOPTER = {**OWNER, "controller": False}
LABELS = {
    "app.kubernetes.io/name": "encryptedmodel",
    "app.kubernetes.io/instance": "digits",
    "app.kubernetes.io/component": "mesh",
    "app.kubernetes.io/managed-by": "tfe-operator",
    "app.kubernetes.io/part-of": "tfe-operator",
    "tfe.dev/model": "digits",
}


def ctx() -> Any:
    return make_ctx(SPEC)


# ---------------------------------------------------------------- the spec


def test_spec_issuer_ref_defaults_and_validation() -> None:
    assert parse_spec(BASE_SPEC).mesh.issuer_ref is None
    ref = parse_spec({**BASE_SPEC, "mesh": {"issuerRef": {"name": "ca"}}}).mesh.issuer_ref
    assert ref == IssuerRef("ca", "Issuer", "cert-manager.io")
    assert parse_spec(SPEC).mesh.issuer_ref == ISSUER
    with pytest.raises(SpecError, match="Issuer or ClusterIssuer"):
        parse_spec({**BASE_SPEC, "mesh": {"issuerRef": {"name": "ca", "kind": "Vault"}}})
    with pytest.raises(SpecError, match=r"mesh\.issuerRef\.name"):
        parse_spec({**BASE_SPEC, "mesh": {"issuerRef": {"kind": "Issuer"}}})
    ext = [{"host": f"h{i}", "port": 4440} for i in range(3)]
    with pytest.raises(SpecError, match="external workers have no mesh"):
        parse_spec({**SPEC, "workers": {"external": ext}})


# ---------------------------------------------------------------- the Certificates


def test_certificate_of_a_worker_whole_manifest() -> None:
    c = ctx()
    assert c.spec.mesh.issuer_ref == ISSUER
    assert certmgr.certificate(c, ISSUER, "server1") == {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {
            "name": "digits-mesh-server1",
            "namespace": "ml",
            "labels": LABELS,
            "ownerReferences": [OWNER],
        },
        "spec": {
            "secretName": "digits-mesh-server1",
            "secretTemplate": {"labels": LABELS},
            "commonName": "server1",
            "dnsNames": ["server1", "digits-worker-1.digits-workers.ml.svc"],
            "duration": "2160h",
            "renewBefore": "360h",
            "privateKey": {
                "algorithm": "ECDSA",
                "size": 256,
                "encoding": "PKCS8",
                "rotationPolicy": "Always",
            },
            "usages": ["digital signature", "server auth", "client auth"],
            "issuerRef": {"name": "mesh-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"},
        },
    }


@pytest.mark.parametrize(
    ("identity", "names"),
    [
        (
            "coordinator",
            ["coordinator", "coordinator.digits-workers.ml.svc", "coordinator-1.digits-workers.ml.svc"],
        ),
        ("endpoint", ["endpoint"]),
        ("operator", ["operator"]),
    ],
)
def test_certificates_name_what_pki_names(identity: str, names: list[str]) -> None:
    cert = certmgr.certificate(ctx(), ISSUER, identity)
    assert cert["spec"]["commonName"] == identity
    assert cert["spec"]["dnsNames"] == names
    if identity != "operator":
        assert names == pki.dns_names(ctx(), identity)


def test_one_certificate_per_long_lived_identity_and_the_operator() -> None:
    plan = certmgr.plan_issued(ctx(), ISSUER, {}, NOW)
    assert [m["metadata"]["name"] for m in plan.apply] == [
        f"digits-mesh-{i}" for i in ("server0", "server1", "server2", "coordinator", "endpoint", "operator")
    ]
    assert {m["kind"] for m in plan.apply} == {"Certificate"}


def test_share_certificate_lives_for_the_job_and_carries_its_generation() -> None:
    cert = certmgr.share_certificate(ctx(), ISSUER, 3)
    assert cert["metadata"]["name"] == "digits-mesh-share-g3"
    assert cert["metadata"]["labels"][api_mod.LABEL_GENERATION] == "3"
    assert cert["spec"]["secretTemplate"]["labels"][api_mod.LABEL_GENERATION] == "3"
    assert cert["spec"]["commonName"] == "share-g3"
    assert cert["spec"]["dnsNames"] == ["share-g3", "share.digits-workers.ml.svc"]
    # the default 3600 s deadline plus 15 minutes; no renewBefore (cert-manager's default)
    assert cert["spec"]["duration"] == "75m"
    assert "renewBefore" not in cert["spec"]


def test_go_durations() -> None:
    assert certmgr.go_duration(dt.timedelta(days=90)) == "2160h"
    assert certmgr.go_duration(dt.timedelta(minutes=75)) == "75m"
    assert certmgr.go_duration(dt.timedelta(seconds=3601)) == "3601s"


def test_share_deletes_take_the_certificate_along() -> None:
    deleted = [("Secret", "digits-mesh-share-g2"), ("Job", "digits-share-g2"), ("Secret", "x")]
    assert certmgr.share_deletes(deleted, "digits") == ["digits-mesh-share-g2"]


def test_secret_ownership() -> None:
    def secret(*uids: str) -> dict[str, Any]:
        refs = [{**OWNER, "uid": u} for u in uids]
        return {"metadata": {"name": "s", "ownerReferences": refs}}

    assert certmgr.secret_action(None, "uid-1") == ""
    assert certmgr.secret_action({"metadata": {"name": "s"}}, "uid-1") == "adopt"
    assert certmgr.secret_action(secret("uid-1"), "uid-1") == ""
    assert certmgr.secret_action(secret("uid-0"), "uid-1") == "delete"
    assert certmgr.secret_owner(ctx(), "digits-mesh-server0") == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "digits-mesh-server0", "namespace": "ml", "ownerReferences": [ADOPTER]},
    }


# ---------------------------------------------------------------- judging what was issued


def _sign(
    ca: mesh.KeyPair,
    cn: str,
    *,
    days: int = 90,
    eku: list[x509.ObjectIdentifier] | None = None,
    now: dt.datetime = NOW,
) -> bytes:
    """A leaf as a CA issuer would sign it (serverAuth+clientAuth unless told otherwise)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    k = ec.generate_private_key(ec.SECP256R1())
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
    )
    usages = eku if eku is not None else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def issued(ca: mesh.KeyPair, identity: str, **kw: Any) -> certmgr.Issued:
    kp = mesh.issue(ca, identity, now=NOW - dt.timedelta(days=1))
    ready = {"type": "Ready", "status": "True"}
    return certmgr.Issued(
        {"status": {"conditions": [ready]}},
        {"tls.crt": kp.cert, "tls.key": kp.key, "ca.crt": ca.cert, **kw},
    )


CA = mesh.make_ca("ml/digits", now=NOW - dt.timedelta(days=1))
LIVE_CA = mesh.make_ca("ml/digits")  # for the handler, which judges at the real time


def all_issued(ca: mesh.KeyPair = CA) -> dict[str, certmgr.Issued]:
    return {i: issued(ca, i) for i in certmgr.IDENTITIES}


def test_judge_ready() -> None:
    st = certmgr.judge("server0", issued(CA, "server0"), NOW)
    assert (st.state, st.reason) == ("Ready", "")
    assert st.ca_sha == pki.sha256(CA.cert)
    assert st.serial and st.not_after is not None


@pytest.mark.parametrize(
    ("conditions", "state", "reason"),
    [
        (None, "Pending", "Certificate not created yet"),
        ([], "Pending", "waiting for cert-manager to issue it"),
        (
            [{"type": "Ready", "status": "False", "message": "Issuing certificate as Secret does not exist"}],
            "Pending",
            "cert-manager: Issuing certificate as Secret does not exist",
        ),
        (
            [
                {"type": "Ready", "status": "False", "message": "x"},
                {"type": "Issuing", "status": "False", "reason": "Failed", "message": "issuer not ready"},
            ],
            "Failed",
            "cert-manager: Failed: issuer not ready",
        ),
    ],
)
def test_judge_waiting(conditions: list[dict[str, str]] | None, state: str, reason: str) -> None:
    cert = None if conditions is None else {"status": {"conditions": conditions}}
    st = certmgr.judge("server1", certmgr.Issued(cert, None), NOW)
    assert (st.state, st.reason) == (state, reason)


def _cr(name: str, revision: str, reason: str, message: str, cert: str = "digits-mesh-server1") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "annotations": {certmgr.REQUEST_CERTIFICATE: cert, certmgr.REQUEST_REVISION: revision},
        },
        "status": {"conditions": [{"type": "Ready", "status": "False", "reason": reason, "message": message}]},
    }


def test_the_newest_certificate_request_says_why() -> None:
    old = _cr("digits-mesh-server1-abc", "1", "Failed", "old")
    new = _cr("digits-mesh-server1-def", "2", "Pending", 'Referenced "Issuer" not found: "mesh-ca"')
    other = _cr("digits-mesh-server2-x", "1", "Denied", "no", cert="digits-mesh-server2")
    latest = certmgr.latest_requests([new, old, other])
    assert latest == {"digits-mesh-server1": new, "digits-mesh-server2": other}
    issuing = {"status": {"conditions": [{"type": "Issuing", "status": "True", "message": "Secret does not exist"}]}}
    st = certmgr.judge("server1", certmgr.Issued(issuing, None, new), NOW)
    assert (st.state, st.reason) == (
        "Pending",
        'cert-manager: CertificateRequest digits-mesh-server1-def: Pending: Referenced "Issuer" not found: "mesh-ca"',
    )
    st = certmgr.judge("server2", certmgr.Issued(issuing, None, other), NOW)
    assert (st.state, st.reason) == ("Failed", "cert-manager: CertificateRequest digits-mesh-server2-x: Denied: no")
    ready = {"metadata": {"name": "r"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    st = certmgr.judge("server1", certmgr.Issued(issuing, None, ready), NOW)
    assert st.reason == "cert-manager: Secret does not exist"


def test_judge_refuses_what_the_guards_would_refuse() -> None:
    good = issued(CA, "server0")
    assert good.secret is not None

    def judge(**data: bytes) -> str:
        assert good.secret is not None
        st = certmgr.judge("server0", certmgr.Issued(good.certificate, {**good.secret, **data}), NOW)
        assert st.state == "Failed", st
        return st.reason

    # an ACME-like issuer: no ca.crt
    assert "no ca.crt" in judge(**{"ca.crt": b""})
    assert "CA-type issuer" in judge(**{"ca.crt": b""})
    # a SelfSigned issuer: ca.crt is the leaf itself, not a CA
    assert "not a CA certificate" in judge(**{"ca.crt": good.secret["tls.crt"]})
    # another CN than the identity
    assert "CN is 'server1'" in judge(**{"tls.crt": mesh.issue(CA, "server1", now=NOW).cert})
    # signed by another CA than the one in ca.crt
    other = mesh.make_ca("other", now=NOW - dt.timedelta(days=1))
    assert "not signed by" in judge(**{"tls.crt": mesh.issue(other, "server0", now=NOW).cert})
    # server auth only: no client auth for the outbound side
    only_server = _sign(CA, "server0", eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    assert "client auth" in judge(**{"tls.crt": only_server})


def test_judge_expired_and_failed_renewal() -> None:
    old = _sign(CA, "server0", days=1, now=NOW - dt.timedelta(days=5))
    g = issued(CA, "server0")
    assert g.secret is not None
    st = certmgr.judge("server0", certmgr.Issued(g.certificate, {**g.secret, "tls.crt": old}), NOW)
    assert st.state == "Pending" and st.reason.startswith("expired")
    cond = {"type": "Issuing", "status": "False", "reason": "Failed", "message": "denied"}
    failing = {"status": {"conditions": [cond]}}
    st = certmgr.judge("server0", certmgr.Issued(failing, g.secret), NOW)
    assert (st.state, st.reason) == ("Ready", "renewal failed: Failed: denied")


def test_plan_when_every_identity_is_ready() -> None:
    obs = all_issued()
    plan = certmgr.plan_issued(ctx(), ISSUER, obs, NOW)
    assert plan.pending == ""
    assert plan.ca is None and plan.trust == CA.cert
    assert plan.operator is not None and plan.operator.identity == "operator"
    assert len(plan.hash) == 16
    st = plan.status
    assert st["issuer"] == "ClusterIssuer/mesh-ca"
    assert st["caSHA256"] == pki.sha256(CA.cert)
    assert [(c["identity"], c["state"]) for c in st["certificates"]] == [(i, "Ready") for i in certmgr.IDENTITIES]
    # a renewed server certificate changes the pods' restart trigger; the operator's does not
    renewed = {**obs, "server2": issued(CA, "server2")}
    assert certmgr.plan_issued(ctx(), ISSUER, renewed, NOW).hash != plan.hash
    op = {**obs, "operator": issued(CA, "operator")}
    assert certmgr.plan_issued(ctx(), ISSUER, op, NOW).hash == plan.hash


def test_plan_pending_names_each_identity_and_why() -> None:
    obs = all_issued()
    del obs["server1"]
    obs["endpoint"] = certmgr.Issued(
        {"status": {"conditions": [{"type": "Issuing", "status": "False", "reason": "Failed", "message": "denied"}]}},
        None,
    )
    plan = certmgr.plan_issued(ctx(), ISSUER, obs, NOW)
    assert plan.pending == ("server1: Certificate not created yet; endpoint: cert-manager: Failed: denied")
    assert plan.hash == "" and plan.operator is None
    states = {c["identity"]: c["state"] for c in plan.status["certificates"]}
    assert states["server1"] == "Pending" and states["endpoint"] == "Failed"
    assert states["server0"] == "Ready"


def test_plan_refuses_identities_from_different_cas() -> None:
    other = mesh.make_ca("other", now=NOW - dt.timedelta(days=1))
    obs = {**all_issued(), "coordinator": issued(other, "coordinator")}
    plan = certmgr.plan_issued(ctx(), ISSUER, obs, NOW)
    assert "different CAs" in plan.pending and plan.hash == ""


def test_operator_identity_needs_its_key() -> None:
    obs = all_issued()
    sec = dict(obs["operator"].secret or {})
    sec["tls.key"] = b""
    obs["operator"] = certmgr.Issued(obs["operator"].certificate, sec)
    assert "operator: no tls.key" in certmgr.plan_issued(ctx(), ISSUER, obs, NOW).pending


# ---------------------------------------------------------------- the handler


def _cert_manager_issues(fake: FakeApi, ca: mesh.KeyPair, owner_uid: str = "uid-1") -> None:
    """What cert-manager's CA issuer does for each Certificate: its Secret (here already
    carrying the EncryptedModel's ownerReference, as the operator's adoption leaves it)."""
    for path, cert in list(fake.objects.items()):
        if not path.startswith(CERTS + "/"):
            continue
        identity = cert["spec"]["commonName"]
        kp = mesh.issue(ca, identity, cert["spec"]["dnsNames"])
        enc = {
            k: base64.b64encode(v).decode()
            for k, v in {"tls.crt": kp.cert, "tls.key": kp.key, "ca.crt": ca.cert}.items()
        }
        name = cert["spec"]["secretName"]
        fake.objects[f"{SECRETS}/{name}"] = {
            "metadata": {"name": name, "ownerReferences": [{**OWNER, "uid": owner_uid}]},
            "type": "kubernetes.io/tls",
            "data": enc,
        }
        cert["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}


def test_handler_waits_for_cert_manager_then_proceeds(api: FakeApi) -> None:  # noqa: F811
    api.objects["/api/v1/namespaces/ml/configmaps/digits-model"] = {"metadata": {"name": "digits-model"}}
    b = body(SPEC)
    patch = run(b, kopf.Memo())
    # Certificates written, nothing else: no CA of the operator's own, no workers yet
    assert sorted(p for p in api.objects if p.startswith(CERTS)) == sorted(
        f"{CERTS}/digits-mesh-{i}" for i in certmgr.IDENTITIES
    )
    assert f"{SECRETS}/digits-mesh-ca" not in api.objects
    assert STS not in api.objects
    st = patch["status"]
    assert st["phase"] == "Pending"
    assert st["message"].startswith("mesh certificates not ready: server0: Certificate not")
    assert {c["state"] for c in st["mesh"]["certificates"]} == {"Pending"}

    _cert_manager_issues(api, LIVE_CA)
    patch = run(body(SPEC, st), kopf.Memo())
    assert STS in api.objects
    assert len(_mesh_hash(api)) == 16
    mesh_st = patch["status"]["mesh"]
    assert mesh_st["issuer"] == "ClusterIssuer/mesh-ca"
    assert mesh_st["caSHA256"] == pki.sha256(LIVE_CA.cert)
    assert {c["state"] for c in mesh_st["certificates"]} == {"Ready"}
    # the worker pods mount the Secrets cert-manager wrote, under the same names
    vol = next(v for v in api.objects[STS]["spec"]["template"]["spec"]["volumes"] if v["name"] == "mesh-pki")
    assert [s["secret"]["name"] for s in vol["projected"]["sources"]] == [f"digits-mesh-server{i}" for i in range(3)]


def test_handler_adopts_issued_secrets_and_deletes_an_earlier_models(api: FakeApi) -> None:  # noqa: F811
    api.objects["/api/v1/namespaces/ml/configmaps/digits-model"] = {"metadata": {"name": "digits-model"}}
    b = body(SPEC)
    run(b, kopf.Memo())
    _cert_manager_issues(api, LIVE_CA, owner_uid="uid-0")  # left by an earlier EncryptedModel
    api.objects[f"{SECRETS}/digits-mesh-endpoint"]["metadata"].pop("ownerReferences")
    api.writes.clear()
    run(b, kopf.Memo())
    deleted = sorted(p for op, p in api.writes if op == "delete")
    assert deleted == sorted(f"{SECRETS}/digits-mesh-{i}" for i in certmgr.IDENTITIES if i != "endpoint")
    owned = api.objects[f"{SECRETS}/digits-mesh-endpoint"]["metadata"]["ownerReferences"]
    assert owned == [ADOPTER]
    assert STS not in api.objects  # waits for the reissued ones


def test_handler_reads_the_certificate_requests_while_waiting(api: FakeApi) -> None:  # noqa: F811
    api.objects["/api/v1/namespaces/ml/configmaps/digits-model"] = {"metadata": {"name": "digits-model"}}
    b = body(SPEC)
    run(b, kopf.Memo())
    cr = _cr("digits-mesh-server1-1", "1", "Pending", 'Referenced "ClusterIssuer" not found')
    cr["metadata"]["labels"] = {"tfe.dev/model": "digits", "app.kubernetes.io/component": "mesh"}
    api.objects["/apis/cert-manager.io/v1/namespaces/ml/certificaterequests/digits-mesh-server1-1"] = cr
    st = run(b, kopf.Memo())["status"]
    row = next(c for c in st["mesh"]["certificates"] if c["identity"] == "server1")
    assert row["reason"].endswith('Pending: Referenced "ClusterIssuer" not found'), row
    assert (
        'server1: cert-manager: CertificateRequest digits-mesh-server1-1: Pending: Referenced "Cluster' in st["message"]
    )


def test_handler_without_cert_manager_says_so(api: FakeApi) -> None:  # noqa: F811
    real = api.__call__

    def no_crd(method: str, path: str, *a: Any, **kw: Any) -> tuple[int, bytes]:
        if "/cert-manager.io/" in path:
            return 404, b'{"message": "the server could not find the requested resource"}'
        return real(method, path, *a, **kw)

    api.objects["/api/v1/namespaces/ml/configmaps/digits-model"] = {"metadata": {"name": "digits-model"}}
    from tfe_operator import handlers
    from tfe_operator.kube import Kube

    handlers.RUNTIME.kube = Kube(no_crd)
    patch = run(body(SPEC), kopf.Memo())
    assert "is cert-manager installed?" in patch["status"]["message"]
    assert patch["status"]["phase"] == "Pending"


def test_share_job_gets_a_certificate_and_loses_it_with_its_secret(api: FakeApi) -> None:  # noqa: F811
    from tfe_operator import handlers
    from tfe_operator.reconcile import Plan, Ref

    c = ctx()
    job = {"kind": "Job", "metadata": {"labels": {api_mod.LABEL_GENERATION: "4"}}}
    plan = Plan(apply=[job], delete=[Ref("v1", "Secret", "digits-mesh-share-g3")])
    mesh_plan = pki.MeshPlan(None, [], "h", {}, "")
    assert handlers.ensure_share_identities(handlers.RUNTIME.kube, c, mesh_plan, plan, NOW) == []  # type: ignore[arg-type]
    assert f"{CERTS}/digits-mesh-share-g4" in api.objects
    assert f"{SECRETS}/digits-mesh-share-g4" not in api.objects  # cert-manager writes it
    assert ("delete", f"{CERTS}/digits-mesh-share-g3") in api.writes
    # once cert-manager has written it, the next reconcile makes the model its owner
    api.objects[f"{SECRETS}/digits-mesh-share-g4"] = {"metadata": {"name": "digits-mesh-share-g4"}}
    plan = Plan(apply=[job])
    assert handlers.ensure_share_identities(handlers.RUNTIME.kube, c, mesh_plan, plan, NOW) == []  # type: ignore[arg-type]
    assert api.objects[f"{SECRETS}/digits-mesh-share-g4"]["metadata"]["ownerReferences"] == [ADOPTER]
