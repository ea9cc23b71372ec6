"""Issue 10 items 3 and 5 on the cluster: the endpoint over HTTPS from a kubernetes.io/tls Secret
(what a cert-manager Certificate writes), reached by the client with a test CA; a replaced Secret
(a renewal) is served without a restart; /metrics of the worker, serve and endpoint pods on their
own port (9090), scrapeable as Prometheus would (through the API server's pod proxy here).
Item 2 on the same model: a proxy in the path that swaps one worker's public key gets no input
from a client pinned from the cluster (Client.from_kubernetes, `tfe-client keys pull`, TOFU's
record), and does get it from an unpinned one."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from clusterlib import KUBECONFIG, KeySwappingProxy, em_status, get_json, kubectl, model_configmap, wait_for, wait_phase
from test_operator_cluster import SERVING_TIMEOUT, apply, plaintext, port_forward

pytestmark = [pytest.mark.cluster, pytest.mark.worker_image]
MODEL = "digits"


def make_pki(d: Path, name: str, ns: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for the Service's names and 127.0.0.1 (port-forward)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    sans = [x509.DNSName(f"{MODEL}.{ns}.svc"), x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, MODEL)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False).sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    d.mkdir(parents=True, exist_ok=True)
    (d / "ca.crt").write_bytes(ca.public_bytes(pem))
    (d / "tls.crt").write_bytes(leaf.public_bytes(pem))
    (d / "tls.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return d / "ca.crt", d / "tls.crt", d / "tls.key"


def tls_secret(ns: str, crt: Path, key: Path) -> None:
    """kubectl create secret tls (type kubernetes.io/tls), created or replaced."""
    manifest = kubectl("create", "secret", "tls", "digits-tls", "-n", ns, f"--cert={crt}", f"--key={key}",
                       "--dry-run=client", "-o", "json")
    kubectl("apply", "-n", ns, "-f", "-", input=manifest)


def server_cert_issuer(port: int) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw) as s:
        der = s.getpeercert(binary_form=True)
    from cryptography import x509

    assert der is not None
    return x509.load_der_x509_certificate(der).issuer.rfc4514_string()


def pod_metrics(ns: str, pod: str) -> dict[str, float]:
    raw = kubectl("get", "--raw", f"/api/v1/namespaces/{ns}/pods/{pod}:9090/proxy/metrics")
    return {k: float(v) for line in raw.splitlines() if line and not line.startswith("#")
            for k, _, v in [line.rpartition(" ")]}


def ready_pods(ns: str, component: str) -> list[str]:
    doc = get_json("pods", "-n", ns, "-l", f"tfe.dev/model={MODEL},app.kubernetes.io/component={component}") or {}
    return [p["metadata"]["name"] for p in doc.get("items", [])
            if any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in p.get("status", {}).get("conditions", []))]


def key_swapping_proxy(ns: str, upstream: str, ca: Path, keys: list[str], x: Any, want: Any, tmp: Path) -> None:
    """A proxy between the client and the endpoint (here in front of the port-forward; TLS to the
    endpoint, as an Ingress terminating TLS would be) swaps server1's key: clients pinned from the
    cluster refuse before sending anything; unpinned first use sends, and the proxy opens the share
    pair meant for server1."""
    import numpy as np

    from tfe_client.client import Client
    from tfe_client.crypto import b64e
    from tfe_client.errors import RemoteError
    from tfe_client.pins import KeyMismatchError, Pins

    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG)}
    tmp.mkdir(parents=True, exist_ok=True)
    with KeySwappingProxy(upstream, ca) as proxy:
        # pins from the cluster: the CLI's pin file, and Client.from_kubernetes, both from the status
        pulled = tmp / "pins.json"
        out = subprocess.run([sys.executable, "-m", "tfe_client.cli", "keys", "pull", f"em/{MODEL}", "-n", ns],
                             capture_output=True, text=True, timeout=120, env=env, check=False)
        assert out.returncode == 0, out.stderr
        pulled.write_text(out.stdout)
        assert [b64e(k) for k in Pins.load(pulled).keys] == keys
        # honest proxy: pinned clients predict through it, TOFU records the real keys
        tofu = tmp / "tofu.json"
        for c in (Client.from_kubernetes(MODEL, ns, endpoint=proxy.url, timeout=120, retry_for=120),
                  Client(proxy.url, trust_on_first_use=tofu, timeout=120)):
            np.testing.assert_allclose(c.predict_proba(MODEL, x), want, atol=3e-2)
            c.close()
        assert [b64e(k) for k in Pins.load(tofu).keys] == keys
        assert len(proxy.posts()) == 2

        proxy.swap = "server1"
        attacker = b64e(proxy.attacker.public)
        swapped = f"server1: pinned {keys[1]}, endpoint says {attacker}"
        for how, c in (("from_kubernetes", Client.from_kubernetes(MODEL, ns, endpoint=proxy.url, timeout=120)),
                       ("keys pull", Client(proxy.url, pins=pulled, timeout=120)),
                       ("TOFU record", Client(proxy.url, trust_on_first_use=tofu, timeout=120))):
            with pytest.raises(KeyMismatchError) as e:
                c.predict(MODEL, x)
            c.close()
            msg = str(e.value)
            assert swapped in msg and "nothing was sent" in msg, (how, msg)
            assert "server0:" not in msg and "server2:" not in msg, (how, msg)
            # how to verify the new set: from the cluster, in the model's namespace where the pins know it
            where = f"-n {ns}" if how != "TOFU record" else "-n <namespace>"
            assert f"kubectl get encryptedmodel {MODEL} {where}" in msg, (how, msg)
        np.save(tmp / "x.npy", x)
        cli = subprocess.run([sys.executable, "-m", "tfe_client.cli", "predict", "--endpoint", proxy.url, "--model",
                              MODEL, "--pins", str(pulled), "--input", str(tmp / "x.npy")],
                             capture_output=True, text=True, timeout=120, env=env, check=False)
        assert cli.returncode == 2 and swapped in cli.stderr, cli.stderr
        assert len(proxy.posts()) == 2 and proxy.stolen == [], "a pinned client sent input to the proxy"
        assert [b64e(k) for k in Pins.load(tofu).keys] == keys, "the TOFU record was overwritten"

        # unpinned (a fresh TOFU file: first use; the explicit insecure switch): the request is
        # sent, sealed to the proxy's key for server1, which opens it
        fresh = tmp / "tofu-first-use.json"
        with pytest.warns(UserWarning, match="INSECURE"):
            insecure = Client(proxy.url, insecure_trust_endpoint_keys=True, timeout=120)
        for c in (Client(proxy.url, trust_on_first_use=fresh, timeout=120), insecure):
            with pytest.raises(RemoteError, match="502"):
                c.predict(MODEL, x)
            c.close()
        assert len(proxy.posts()) == 4 and len(proxy.stolen) == 2
        assert all(p.shape == (2, *x.shape) for p in proxy.stolen)
        assert b64e(Pins.load(fresh).keys[1]) == attacker  # first use records whatever it is handed


def test_https_endpoint_from_a_secret_and_metrics_ports(namespace: str, models: Path, tmp_path: Path) -> None:
    import numpy as np

    from tfe_client.client import Client

    ns = namespace
    ca, crt, key = make_pki(tmp_path / "pki1", "tfe e2e CA 1", ns)
    tls_secret(ns, crt, key)
    model_configmap(ns, "digits-model", models / "digits.h5")
    apply(ns, MODEL, {"model": {"configMap": {"name": "digits-model", "key": "model.h5"}},
                      "serving": {"tls": {"secretName": "digits-tls"}}})
    st = wait_phase(ns, MODEL, "Serving", SERVING_TIMEOUT)
    assert st["endpoint"] == f"https://{MODEL}.{ns}.svc:443"
    svc = get_json("service", MODEL, "-n", ns)
    assert svc["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}]
    keys = [w["publicKey"] for w in st["workers"]]
    x = np.random.default_rng(0).random((4, 64), dtype=np.float32)
    want = plaintext(models / "digits.h5", x, tmp_path)

    with port_forward(ns, f"svc/{MODEL}", 443) as port:
        url = f"https://127.0.0.1:{port}"
        c = Client(url, expected_keys=keys, ca=ca, timeout=120, retry_for=120)
        np.testing.assert_allclose(c.predict_proba(MODEL, x), want, atol=3e-2)
        c.close()
        # the CLI with --ca; without it the certificate is refused
        np.save(tmp_path / "x.npy", x)
        cmd = [sys.executable, "-m", "tfe_client.cli", "predict", "--endpoint", url, "--model", MODEL,
               "--expected-keys", ",".join(keys), "--input", str(tmp_path / "x.npy"), "--output",
               str(tmp_path / "y.npy"), "--proba"]
        out = subprocess.run([*cmd, "--ca", str(ca)], capture_output=True, text=True, timeout=300, check=False)
        assert out.returncode == 0, out.stderr
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, atol=3e-2)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in out.stderr, out.stderr
        # plain HTTP on the TLS port gets no answer from the endpoint
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.settimeout(10)
            s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                got = s.recv(4096)
            except (TimeoutError, ConnectionResetError):
                got = b""
        assert b'"ready"' not in got
        # OIP v2 readiness over TLS
        from tfe_client import wire

        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30,
                                           context=ssl.create_default_context(cafile=str(ca)))
        conn.request("GET", "/v2/health/ready")
        r = conn.getresponse()
        assert (r.status, wire.OipReady.parse(json.loads(r.read()))) == (200, wire.OipReady(True))
        conn.close()

        key_swapping_proxy(ns, url, ca, keys, x, want, tmp_path / "proxy")

        # A renewed certificate (another CA here, so that the change is visible): the Secret is
        # replaced as cert-manager would, and the guard serves the new one without a restart.
        endpoint_pods = ready_pods(ns, "endpoint")
        ca2, crt2, key2 = make_pki(tmp_path / "pki2", "tfe e2e CA 2", ns)
        tls_secret(ns, crt2, key2)
        wait_for("the renewed certificate served", lambda: "tfe e2e CA 2" in server_cert_issuer(port) or None,
                 timeout=240, interval=2)
        c2 = Client(url, expected_keys=keys, ca=ca2, timeout=120)
        np.testing.assert_allclose(c2.predict_proba(MODEL, x), want, atol=3e-2)
        c2.close()
        assert ready_pods(ns, "endpoint") == endpoint_pods, "the endpoint pods were replaced, not reloaded"

    # Metrics on port 9090 of every kind of pod, and the NetworkPolicies admit scrapes there.
    (ep,) = ready_pods(ns, "endpoint")[:1]
    m = pod_metrics(ns, ep)
    assert m.get('tfe_serve_requests_total{result="ok"}', 0) >= 3, m
    (serve,) = ready_pods(ns, "serve")[:1]
    m = pod_metrics(ns, serve)
    assert m.get('tfe_serve_stage_seconds_count{stage="graph"}', 0) >= 1, m
    assert m.get("tfe_serve_requests_served", 0) >= 3, m
    for w in ready_pods(ns, "worker"):
        m = pod_metrics(ns, w)
        assert m.get('tfe_worker_ingress_items_total{result="ok"}', 0) >= 3, (w, m)
    for pol in ("digits-workers", "digits-coordinator", "digits-endpoint"):
        ingress = get_json("networkpolicy", pol, "-n", ns)["spec"]["ingress"]
        assert {"ports": [{"port": 9090, "protocol": "TCP"}]} in ingress, (pol, json.dumps(ingress))
    ep_ingress = get_json("networkpolicy", "digits-endpoint", "-n", ns)["spec"]["ingress"]
    assert {"ports": [{"port": 8443, "protocol": "TCP"}]} in ep_ingress
    assert em_status(ns, MODEL)["phase"] == "Serving"
