"""The mesh PKI: which Secrets plan_mesh writes and when, what is in the certificates, and
the operator's own mTLS client (against a real TLS server on loopback)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from operator_testlib import OWNER, make_ctx

from tfe_operator import pki
from tfe_operator.settings import Settings

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
LONG_LIVED = ["server0", "server1", "server2", "coordinator", "endpoint"]


def data(secret: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


def cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def existing(apply: list[dict[str, Any]], base: pki.Existing | None = None) -> pki.Existing:
    """What the handler would read back after writing `apply` (on top of `base`)."""
    ex = base or pki.Existing()
    ca, rotation, owner = ex.ca, ex.ca_rotation, ex.ca_owner
    leaves = dict(ex.leaves)
    for s in apply:
        if s["metadata"]["name"] == "digits-mesh-ca":
            ca, rotation, owner = pki.parse_ca_secret(s)
        else:
            info = pki.parse_leaf_metadata({"metadata": s["metadata"]})
            assert info is not None
            leaves[s["metadata"]["name"].removeprefix("digits-mesh-")] = info
    return pki.Existing(ca, rotation, owner, leaves)


def first(now: dt.datetime = NOW) -> pki.MeshPlan:
    return pki.plan_mesh(make_ctx(), pki.Existing(), "", now)


def live() -> pki.MeshPlan:
    """Certificates valid on the real clock (TLS handshakes check it)."""
    return first(dt.datetime.now(dt.UTC))


def test_first_plan_issues_a_ca_and_every_long_lived_identity() -> None:
    plan = first()
    names = [s["metadata"]["name"] for s in plan.apply]
    assert names == ["digits-mesh-ca", *(f"digits-mesh-{i}" for i in LONG_LIVED)]
    ca_secret = plan.apply[0]
    assert ca_secret["type"] == "Opaque"
    assert set(ca_secret["data"]) == {"ca.crt", "ca.key"}
    assert ca_secret["metadata"]["ownerReferences"] == [OWNER]
    assert ca_secret["metadata"]["labels"]["app.kubernetes.io/component"] == "mesh"
    assert ca_secret["metadata"]["annotations"] == {
        "tfe.dev/mesh-rotation": "",
        "tfe.dev/mesh-owner-uid": "uid-1",
        "tfe.dev/cert-sha256": pki.sha256(data(ca_secret, "ca.crt")),
        "tfe.dev/not-after": "2026-01-01T00:00:00Z",
    }
    ca = cert(data(ca_secret, "ca.crt"))
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.not_valid_after_utc == NOW + dt.timedelta(days=365)
    for s in plan.apply[1:]:
        identity = s["metadata"]["name"].removeprefix("digits-mesh-")
        assert s["type"] == "kubernetes.io/tls"
        assert set(s["data"]) == {"tls.crt", "tls.key", "ca.crt"}
        assert data(s, "ca.crt") == data(ca_secret, "ca.crt")
        assert s["metadata"]["ownerReferences"] == [OWNER]
        leaf = cert(data(s, "tls.crt"))
        leaf.verify_directly_issued_by(ca)  # the chain verifies
        assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == identity
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert leaf.not_valid_after_utc == NOW + dt.timedelta(days=90)
        assert s["metadata"]["annotations"] == {
            "tfe.dev/mesh-ca": pki.sha256(data(ca_secret, "ca.crt")),
            "tfe.dev/cert-sha256": pki.sha256(data(s, "tls.crt")),
            "tfe.dev/not-after": "2025-04-01T00:00:00Z",
        }
    assert plan.status == {
        "caNotAfter": "2026-01-01T00:00:00Z",
        "notAfter": "2025-04-01T00:00:00Z",
        "rotation": "",
        "caSHA256": pki.sha256(data(ca_secret, "ca.crt")),
    }
    assert plan.reason == "no CA yet"


@pytest.mark.parametrize(
    ("identity", "sans"),
    [
        ("server0", ["server0", "digits-worker-0.digits-workers.ml.svc"]),
        ("server2", ["server2", "digits-worker-2.digits-workers.ml.svc"]),
        (
            "coordinator",
            ["coordinator", "coordinator.digits-workers.ml.svc", "coordinator-1.digits-workers.ml.svc"],
        ),
        ("endpoint", ["endpoint"]),
    ],
)
def test_subject_alternative_names(identity: str, sans: list[str]) -> None:
    s = next(x for x in first().apply if x["metadata"]["name"] == f"digits-mesh-{identity}")
    ext = cert(data(s, "tls.crt")).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert ext.value.get_values_for_type(x509.DNSName) == sans


def test_nothing_is_reissued_while_valid() -> None:
    p1 = first()
    ex = existing(p1.apply)
    p2 = pki.plan_mesh(make_ctx(), ex, "", NOW + dt.timedelta(days=30))
    assert p2.apply == []
    assert p2.reason == ""
    assert p2.hash == p1.hash
    assert p2.ca == p1.ca
    assert p2.status == p1.status


@pytest.mark.parametrize(
    ("ctx_uid", "rotation", "later", "reason"),
    [
        ("uid-2", "", 0, "the EncryptedModel was re-created"),
        ("uid-1", "now-please", 0, "rotation requested (tfe.dev/rotate-mesh)"),
        ("uid-1", "", 340, "the CA is near its end"),
    ],
)
def test_a_new_ca_reissues_everything(ctx_uid: str, rotation: str, later: int, reason: str) -> None:
    p1 = first()
    ctx = make_ctx()
    ctx = type(ctx)(**{**ctx.__dict__, "uid": ctx_uid})
    now = NOW + dt.timedelta(days=later)
    p2 = pki.plan_mesh(ctx, existing(p1.apply), rotation, now)
    assert [s["metadata"]["name"] for s in p2.apply] == [s["metadata"]["name"] for s in p1.apply]
    assert p2.ca.cert != p1.ca.cert
    assert p2.hash != p1.hash
    assert p2.reason == reason
    new_ca = cert(p2.ca.cert)
    for s in p2.apply[1:]:
        cert(data(s, "tls.crt")).verify_directly_issued_by(new_ca)
    assert p2.apply[0]["metadata"]["annotations"]["tfe.dev/mesh-rotation"] == rotation
    assert p2.apply[0]["metadata"]["annotations"]["tfe.dev/mesh-owner-uid"] == ctx_uid


def test_a_leaf_near_its_end_or_from_another_ca_is_reissued_alone() -> None:
    p1 = first()
    ex = existing(p1.apply)
    leaves = dict(ex.leaves)
    leaves["server1"] = pki.LeafInfo(leaves["server1"].ca_sha, "x", NOW + dt.timedelta(days=10))
    leaves["coordinator"] = pki.LeafInfo("another-ca", "y", NOW + dt.timedelta(days=80))
    del leaves["endpoint"]
    p2 = pki.plan_mesh(make_ctx(), pki.Existing(ex.ca, "", "uid-1", leaves), "", NOW)
    assert [s["metadata"]["name"] for s in p2.apply] == [
        "digits-mesh-server1",
        "digits-mesh-coordinator",
        "digits-mesh-endpoint",
    ]
    assert p2.ca == p1.ca
    assert p2.hash != p1.hash
    assert p2.reason == "server1: near its end; coordinator: signed by another CA; endpoint: missing"


def test_share_identity_lives_for_the_job_deadline_plus_margin() -> None:
    ctx = make_ctx(settings=Settings(worker_image="w:1", share_deadline_seconds=1800))
    ca = first().ca
    s = pki.share_secret(ctx, ca, 3, NOW)
    assert s["metadata"]["name"] == "digits-mesh-share-g3"
    assert s["metadata"]["labels"]["tfe.dev/share-generation"] == "3"
    assert s["type"] == "kubernetes.io/tls"
    leaf = cert(data(s, "tls.crt"))
    leaf.verify_directly_issued_by(cert(ca.cert))
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "share-g3"
    assert leaf.not_valid_after_utc == NOW + dt.timedelta(minutes=30 + 15)
    assert leaf.not_valid_before_utc <= NOW
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["share-g3", "share.digits-workers.ml.svc"]


def test_operator_identity_is_short_lived() -> None:
    me = pki.operator_identity(first().ca, NOW)
    assert me.identity == "operator"
    assert me.not_after == NOW + dt.timedelta(days=1)


def test_parse_ca_secret_refuses_garbage() -> None:
    assert pki.parse_ca_secret(None) == (None, "", "")
    assert pki.parse_ca_secret({"data": {"ca.crt": "bm90IGEgY2VydA=="}}) == (None, "", "")


# ------------------------------------------------------------------ the operator's mTLS client


def _serve_once(plan: pki.MeshPlan, identity: str, body: bytes) -> tuple[int, list[str]]:
    """A TLS 1.3 server holding `identity`'s certificate that requires a client certificate
    from the mesh CA; answers one request and records the client's CN."""
    leaf = next(s for s in plan.apply if s["metadata"]["name"] == f"digits-mesh-{identity}")
    d = Path(tempfile.mkdtemp())
    (d / "tls.crt").write_bytes(data(leaf, "tls.crt"))
    (d / "tls.key").write_bytes(data(leaf, "tls.key"))
    sc = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sc.minimum_version = ssl.TLSVersion.TLSv1_3
    sc.verify_mode = ssl.CERT_REQUIRED
    sc.load_verify_locations(cadata=plan.ca.cert.decode())
    sc.load_cert_chain(d / "tls.crt", d / "tls.key")
    lsock = socket.create_server(("127.0.0.1", 0))
    seen: list[str] = []

    def run() -> None:
        conn, _ = lsock.accept()
        try:
            with sc.wrap_socket(conn, server_side=True) as tls:
                peer = tls.getpeercert() or {}
                seen.extend(v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName")
                tls.recv(65536)
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        except (ssl.SSLError, OSError):
            pass
        finally:
            lsock.close()

    threading.Thread(target=run, daemon=True).start()
    return lsock.getsockname()[1], seen


def test_mtls_get_as_operator() -> None:
    plan = live()
    doc = {"name": "server0", "publicKey": "k0"}
    port, seen = _serve_once(plan, "server0", json.dumps(doc).encode())
    sc = pki.client_context(plan.trust, pki.operator_identity(plan.ca, dt.datetime.now(dt.UTC)))
    raw = pki.mtls_get("127.0.0.1", port, "/v1/public-key", sc, "server0", 5.0)
    assert json.loads(raw) == doc
    assert seen == ["operator"]


def test_mtls_get_refuses_the_wrong_server_identity() -> None:
    plan = live()
    port, _ = _serve_once(plan, "server1", b"{}")
    sc = pki.client_context(plan.trust, pki.operator_identity(plan.ca, dt.datetime.now(dt.UTC)))
    with pytest.raises(ssl.SSLCertVerificationError):
        pki.mtls_get("127.0.0.1", port, "/v1/public-key", sc, "server0", 5.0)


def test_mtls_get_refuses_another_ca() -> None:
    plan, other = live(), live()
    port, _ = _serve_once(other, "server0", b"{}")
    sc = pki.client_context(plan.trust, pki.operator_identity(plan.ca, dt.datetime.now(dt.UTC)))
    with pytest.raises(ssl.SSLCertVerificationError):
        pki.mtls_get("127.0.0.1", port, "/v1/public-key", sc, "server0", 5.0)


# ------------------------------------------------------------------ against the real guard

GUARD = Path(__file__).resolve().parents[3] / "build" / "tfe-guard"


@pytest.mark.skipif(not GUARD.exists(), reason="build/tfe-guard not built (make guard)")
def test_every_party_config_and_certificate_passes_tfe_guard_check_config(tmp_path: Path) -> None:
    """What the operator mounts (the m-mesh ConfigMap, the share Job's env, the Secrets)
    is accepted by tfe-guard itself: schema, identity == certificate CN, chain, key usages."""
    import subprocess

    from tfe_operator import builders

    ctx = make_ctx()
    plan = live()
    share = pki.share_secret(ctx, plan.ca, 2, dt.datetime.now(dt.UTC))

    def pki_dir(secret: dict[str, Any]) -> dict[str, str]:
        d = tmp_path / secret["metadata"]["name"]
        d.mkdir()
        for k in ("ca.crt", "tls.crt", "tls.key"):
            (d / k).write_bytes(data(secret, k))
        return {"ca": str(d / "ca.crt"), "cert": str(d / "tls.crt"), "key": str(d / "tls.key")}

    secrets = {s["metadata"]["name"]: s for s in [*plan.apply, share]}
    configs = {k: json.loads(v) for k, v in builders.mesh_config_map(ctx)["data"].items()}
    configs["share-g2.json"] = json.loads(
        builders.share_job(ctx, 2)["spec"]["template"]["spec"]["initContainers"][1]["env"][0]["value"]
    )
    assert sorted(configs) == [
        "coordinator-1.json",
        "coordinator.json",
        "endpoint.json",
        "server0.json",
        "server1.json",
        "server2.json",
        "share-g2.json",
    ]
    dirs = {name: pki_dir(s) for name, s in secrets.items() if s["type"] == "kubernetes.io/tls"}
    for key, cfg in configs.items():
        cfg.update(dirs[f"digits-mesh-{cfg['identity']}"])
        path = tmp_path / key
        path.write_text(json.dumps(cfg))
        cmd = [str(GUARD), "--config", str(path), "--check-config"]
        r = subprocess.run(cmd, check=False, capture_output=True, text=True)
        assert r.returncode == 0, (key, r.stdout, r.stderr)
        assert f"identity {cfg['identity']}" in r.stdout
