"""spec.mesh.issuerRef on the cluster (issue 9 item 1): cert-manager issues the mesh identities.

cert-manager's controller (built from its Go module by ``hack/cluster/build.sh cert-manager``)
runs on the host against the cluster's kubeconfig, as the operator does here; its webhook and
cainjector are not run (nothing here needs them: the CRDs are applied as they are, without
conversion or defaulting webhooks). A self-signed ClusterIssuer signs a CA Certificate, which a CA
Issuer in the model's namespace uses for the model's identities.

One EncryptedModel is created *before* its Issuer exists: it must wait (phase Pending, the status
naming each identity and cert-manager's reason, no pods), then reach Serving once the Issuer is
there, predict as plaintext Keras does, and its guards must serve exactly the certificates
cert-manager issued. A peer with a certificate from another CA, and one whose certificate comes
from the right CA but names another identity, are refused; the model's own coordinator
certificate, by the same probe, is admitted (the control).
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clusterlib import (
    KUBECONFIG,
    NS_PREFIX,
    REPO,
    InProcessOperator,
    dump,
    em_status,
    get_json,
    kubectl,
    model_configmap,
    stop_process,
    wait_for,
)
from test_mesh_cluster import CONTROLLER_LABELS, attacker_pod, pod_ready, probe
from test_operator_cluster import SERVING_TIMEOUT, apply, plaintext, predict

pytestmark = [pytest.mark.cluster, pytest.mark.worker_image]

MODEL = "cm"
ISSUER = "mesh-ca"
GUARD_GRPC = 5440
IDENTITIES = ("server0", "server1", "server2", "coordinator", "endpoint", "operator")
CM_NAMESPACE = "tfe-cert-manager"  # the controller's --cluster-resource-namespace


def _build_dir() -> Path:
    out = subprocess.run(
        [str(REPO / "hack" / "cluster" / "build.sh"), "path"], check=True, capture_output=True, text=True
    ).stdout.strip()
    version = subprocess.run(
        ["bash", "-c", f". {REPO}/hack/cluster/versions.sh; echo $CERT_MANAGER_VERSION"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return Path(out) / f"cert-manager-{version}"


@pytest.fixture(scope="module")
def cert_manager(operator: InProcessOperator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """cert-manager's CRDs applied and its controller running on the host (built if missing)."""
    d = _build_dir()
    if not (d / "controller").exists():
        subprocess.run([str(REPO / "hack" / "cluster" / "build.sh"), "cert-manager"], check=True, timeout=3600)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(d / "crds.yaml"), timeout=120)
    for crd in ("certificates", "certificaterequests", "issuers", "clusterissuers"):
        kubectl("wait", "--for=condition=Established", f"crd/{crd}.cert-manager.io", "--timeout=60s")
    kubectl("create", "namespace", CM_NAMESPACE, check=False)
    log = tmp_path_factory.mktemp("cert-manager") / "controller.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [
                str(d / "controller"),
                f"--kubeconfig={KUBECONFIG}",
                f"--cluster-resource-namespace={CM_NAMESPACE}",
                "--v=2",
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        time.sleep(2)
        assert proc.poll() is None, log.read_text()[-3000:]
        yield log
    finally:
        stop_process(proc)
        print(f"cert-manager controller log: {log}")


def _apply(ns: str | None, doc: dict[str, Any]) -> None:
    args = ["apply", "-f", "-"] if ns is None else ["apply", "-n", ns, "-f", "-"]
    kubectl(*args, input=json.dumps(doc))


def _ready(kind: str, name: str, ns: str | None = None) -> bool:
    args = [kind, name] + (["-n", ns] if ns else [])
    doc = get_json(*args) or {}
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (doc.get("status") or {}).get("conditions") or []
    )


def make_issuer(ns: str, suffix: str) -> str:
    """self-signed ClusterIssuer -> CA Certificate (in ns) -> CA Issuer ISSUER in ns."""
    selfsigned = f"tfe-selfsigned-{suffix}"
    _apply(
        None,
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "ClusterIssuer",
            "metadata": {"name": selfsigned},
            "spec": {"selfSigned": {}},
        },
    )
    _apply(
        ns,
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": {"name": "mesh-root"},
            "spec": {
                "isCA": True,
                "commonName": f"tfe mesh test root {suffix}",
                "secretName": "mesh-root",
                "duration": "2160h",
                "privateKey": {"algorithm": "ECDSA", "size": 256},
                "issuerRef": {"name": selfsigned, "kind": "ClusterIssuer", "group": "cert-manager.io"},
            },
        },
    )
    wait_for("CA Certificate mesh-root Ready", lambda: _ready("certificate", "mesh-root", ns), 120)
    _apply(
        ns,
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": {"name": ISSUER},
            "spec": {"ca": {"secretName": "mesh-root"}},
        },
    )
    wait_for(f"Issuer {ISSUER} Ready", lambda: _ready("issuer", ISSUER, ns), 120)
    return selfsigned


def secret_pem(ns: str, name: str, key: str) -> str:
    return base64.b64decode(get_json("secret", name, "-n", ns)["data"][key]).decode()


# Run in a pod (the worker image's python3 with TF's grpc): the server certificate the guard
# presents, then one gRPC call with our client certificate. argv: ADDR CA CERT KEY EXPECT METHOD
TLS_CALL = r"""
import hashlib, os, socket, ssl, sys, tempfile
addr, ca, cert, key, expect, method = sys.argv[1:7]
host, port = addr.rsplit(":", 1)
d = tempfile.mkdtemp()
for n, v in (("cert", cert), ("key", key)):
    with open(os.path.join(d, n), "w") as f:
        f.write(v)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.load_verify_locations(cadata=ca)
ctx.load_cert_chain(os.path.join(d, "cert"), os.path.join(d, "key"))
ctx.set_alpn_protocols(["h2"])
try:
    with socket.create_connection((host, int(port)), timeout=10) as raw, ctx.wrap_socket(raw) as c:
        der = c.getpeercert(binary_form=True)
        c.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        got = c.recv(64)
    peer = hashlib.sha256(der).hexdigest()
    hs = f"answered {len(got)}" if got else "closed -"
except (ssl.SSLError, OSError) as e:
    peer, hs = "-", f"refused {type(e).__name__}"
import grpc
creds = grpc.ssl_channel_credentials(ca.encode(), key.encode(), cert.encode())
ch = grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", expect)])
rpc = ch.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
try:
    rpc(b"", timeout=15.0)
    code = "OK -"
except grpc.RpcError as e:
    code = f"{e.code().name} {(e.details() or '').replace(' ', '_')[:200]}"
print(f"PEER {peer} HS {hs} CODE {code}", flush=True)
"""


def tls_call(ns: str, pod: str, addr: str, ca: str, cert: str, key: str, expect: str, method: str) -> dict[str, str]:
    out = probe(
        ns, pod, [{"op": "run", "code": TLS_CALL, "args": [addr, ca, cert, key, expect, method], "timeout": 60}]
    )
    words = out[0].split()
    assert words[0] == "PEER", out
    return {"peer": words[1], "handshake": " ".join(words[3:5]), "code": words[6], "details": words[7]}


def der_sha256(pem: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


@pytest.fixture(scope="module")
def issued_model(
    request: pytest.FixtureRequest, operator: InProcessOperator, cert_manager: Path, models: Path
) -> Iterator[tuple[str, dict[str, Any]]]:
    suffix = uuid.uuid4().hex[:5]
    ns = f"{NS_PREFIX}certmgr-{suffix}"
    failed_before = request.session.testsfailed
    kubectl("create", "namespace", ns)
    selfsigned = ""
    try:
        model_configmap(ns, "digits-model", models / "digits.h5")
        spec = {
            "model": {"configMap": {"name": "digits-model", "key": "model.h5"}},
            "mesh": {"issuerRef": {"name": ISSUER, "kind": "Issuer"}},
        }
        t0 = time.monotonic()
        apply(ns, MODEL, spec)

        # No issuer yet: the operator writes the Certificates and waits, saying why.
        def waiting() -> dict[str, Any] | None:
            st = em_status(ns, MODEL)
            certs = (st.get("mesh") or {}).get("certificates") or []
            return (
                st if len(certs) == len(IDENTITIES) and "mesh certificates not ready" in st.get("message", "") else None
            )

        st = wait_for("Pending, naming the identities cert-manager has not issued", waiting, 120)
        print(json.dumps(st, indent=1))
        assert st["phase"] == "Pending"
        assert [c["identity"] for c in st["mesh"]["certificates"]] == list(IDENTITIES)
        assert {c["state"] for c in st["mesh"]["certificates"]} <= {"Pending", "Failed"}
        assert "server0: " in st["message"]
        assert not kubectl("get", "pods", "-n", ns, "-o", "name"), "pods before the certificates"
        for i in IDENTITIES:
            cert = get_json("certificate", f"{MODEL}-mesh-{i}", "-n", ns)
            assert cert["spec"]["commonName"] == i and cert["spec"]["issuerRef"]["name"] == ISSUER

        selfsigned = make_issuer(ns, suffix)
        st = em_status(ns, MODEL)
        deadline = time.monotonic() + SERVING_TIMEOUT
        while st.get("phase") != "Serving":
            assert time.monotonic() < deadline, f"not Serving: {st}"
            assert st.get("phase") != "Failed", st
            time.sleep(2)
            st = em_status(ns, MODEL)
        print(f"\ncreate -> Serving (issuer made after the model): {time.monotonic() - t0:.1f}s")
        yield ns, st
    finally:
        if request.session.testsfailed > failed_before:
            dump(ns)
            print(kubectl("get", "certificates,certificaterequests,issuers", "-n", ns, "-o", "wide", check=False))
            print(Path(cert_manager).read_text()[-4000:])
        kubectl("delete", "encryptedmodels", "--all", "-n", ns, "--timeout=90s", check=False)
        kubectl("delete", "namespace", ns, "--wait=false", check=False)
        if selfsigned:
            kubectl("delete", "clusterissuer", selfsigned, check=False)


def test_issued_identities_serve_and_predict(
    issued_model: tuple[str, dict[str, Any]], models: Path, tmp_path: Path
) -> None:
    import numpy as np

    ns, st = issued_model
    mesh = st["mesh"]
    assert mesh["issuer"] == f"Issuer/{ISSUER}"
    assert [(c["identity"], c["state"]) for c in mesh["certificates"]] == [(i, "Ready") for i in IDENTITIES]
    root = secret_pem(ns, "mesh-root", "tls.crt")
    # No CA of the operator's own; the issued Secrets belong to the model and carry cert-manager's CA.
    assert get_json("secret", f"{MODEL}-mesh-ca", "-n", ns) is None
    uid = get_json("encryptedmodel", MODEL, "-n", ns)["metadata"]["uid"]
    for c in mesh["certificates"]:
        sec = get_json("secret", f"{MODEL}-mesh-{c['identity']}", "-n", ns)
        assert sec["metadata"]["annotations"]["cert-manager.io/certificate-name"] == f"{MODEL}-mesh-{c['identity']}"
        assert uid in [o["uid"] for o in sec["metadata"].get("ownerReferences", [])]
        ca_pem = base64.b64decode(sec["data"]["ca.crt"])
        assert der_sha256(ca_pem.decode()) == der_sha256(root)  # the issuer's CA is the trust anchor
        assert mesh["caSHA256"] == hashlib.sha256(ca_pem).hexdigest()
        from cryptography import x509

        leaf = x509.load_pem_x509_certificate(base64.b64decode(sec["data"]["tls.crt"]))
        assert f"{leaf.serial_number:x}" == c["serial"]
        assert leaf.issuer.rfc4514_string() == f"CN=tfe mesh test root {ns.rsplit('-', 1)[1]}"

    x = np.random.default_rng(0).random((4, 64), dtype=np.float32)
    want = plaintext(models / "digits.h5", x, tmp_path)
    got = np.asarray(predict(ns, MODEL, x))
    assert got.shape == (4, 10)
    assert (np.argmax(got, axis=1) == np.argmax(want, axis=1)).all()


def test_guards_present_the_issued_certificates_and_refuse_foreign_and_wrong_identities(
    issued_model: tuple[str, dict[str, Any]],
) -> None:
    """From a pod in the model's namespace with the workers' labels (the worker image, no mesh
    certificate of its own):
    worker 1's guard presents exactly the tls.crt of Secret cm-mesh-server1 (cert-manager's);
    the model's coordinator certificate is admitted to GetStatus (control); a coordinator
    certificate from another CA fails the handshake; a certificate from the model's own issuer
    for another identity completes the handshake but is refused the call (PERMISSION_DENIED)."""
    from tfe_client import mesh

    ns, _ = issued_model
    # The workers' labels: where NetworkPolicy is enforced (kind) only such a pod reaches the guard
    # port, and what is tested here is the guard's TLS and rules, not the policy.
    worker = get_json("pod", f"{MODEL}-worker-0", "-n", ns)
    labels = {k: v for k, v in worker["metadata"]["labels"].items() if k not in CONTROLLER_LABELS}
    kubectl("apply", "-n", ns, "-f", "-", input=attacker_pod("attacker", labels))
    wait_for("probe pod ready", lambda: pod_ready(ns, "attacker"), 120)
    # An identity the mesh does not know, issued by the model's own CA Issuer.
    _apply(
        ns,
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": {"name": "intruder"},
            "spec": {
                "secretName": "intruder",
                "commonName": "intruder",
                "dnsNames": ["intruder"],
                "usages": ["digital signature", "client auth", "server auth"],
                "privateKey": {"algorithm": "ECDSA", "size": 256},
                "issuerRef": {"name": ISSUER, "kind": "Issuer"},
            },
        },
    )
    wait_for("Certificate intruder Ready", lambda: _ready("certificate", "intruder", ns), 120)

    ca = secret_pem(ns, f"{MODEL}-mesh-server1", "ca.crt")
    server1 = secret_pem(ns, f"{MODEL}-mesh-server1", "tls.crt")
    ip1 = get_json("pod", f"{MODEL}-worker-1", "-n", ns)["status"]["podIP"]
    addr = f"{ip1}:{GUARD_GRPC}"
    method = "/tensorflow.WorkerService/GetStatus"
    foreign = mesh.issue(mesh.make_ca("intruder"), "coordinator", days=30)
    who = {
        "coordinator": (
            secret_pem(ns, f"{MODEL}-mesh-coordinator", "tls.crt"),
            secret_pem(ns, f"{MODEL}-mesh-coordinator", "tls.key"),
        ),
        "foreign CA": (foreign.cert.decode(), foreign.key.decode()),
        "intruder": (secret_pem(ns, "intruder", "tls.crt"), secret_pem(ns, "intruder", "tls.key")),
    }
    results = {k: tls_call(ns, "attacker", addr, ca, c, key, "server1", method) for k, (c, key) in who.items()}
    print(json.dumps(results, indent=1))

    own = results["coordinator"]
    assert own["peer"] == der_sha256(server1), "worker 1's guard does not serve cert-manager's certificate"
    assert own["handshake"].startswith("answered"), own
    assert own["code"] != "PERMISSION_DENIED" and own["code"] != "UNAVAILABLE", own
    bad = results["foreign CA"]
    assert bad["code"] == "UNAVAILABLE", bad  # the handshake fails: no call reaches the guard's rules
    assert not bad["handshake"].startswith("answered"), bad
    wrong = results["intruder"]
    assert wrong["peer"] == own["peer"] and wrong["handshake"].startswith("answered"), wrong
    assert wrong["code"] == "PERMISSION_DENIED" and "intruder" in wrong["details"], wrong

    log = kubectl("logs", "-n", ns, f"{MODEL}-worker-1", "-c", "guard", check=False)
    assert any("refused handshake" in ln and "unknown authority" in ln for ln in log.splitlines()), log[-3000:]
    assert any("refused call" in ln and "identity=intruder" in ln for ln in log.splitlines()), log[-3000:]
