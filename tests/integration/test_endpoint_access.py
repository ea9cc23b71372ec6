"""Issue 10 (items 3, 5) with real processes: the endpoint behind tfe-guard's public TLS listener,
reached by the real CLI with a test CA (--ca); the Open Inference Protocol v2 health and metadata
routes; one JSON access-log line per request with metadata only, never a value."""

import datetime
import ipaddress
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import http_json

from tfe_client import Client, wire
from tfe_client.client import seal_request
from tfe_worker.local import free_ports
from tfe_worker.party import guard_binary

PREDICT = "/v1/models/digits:predict"


@pytest.fixture(scope="module", autouse=True)
def json_logs():
    """Every process of this module's stack logs JSON lines (TFE_LOG_FORMAT is inherited)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TFE_LOG_FORMAT", "json")
        yield


def make_pki(d):
    """A test CA and a server certificate for 127.0.0.1 (what cert-manager would put in the Secret)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tfe test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "digits")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False).sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (d / "ca.crt").write_bytes(ca.public_bytes(pem))
    (d / "tls.crt").write_bytes(leaf.public_bytes(pem))
    (d / "tls.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return d / "ca.crt", d / "tls.crt", d / "tls.key"


@pytest.fixture(scope="module")
def https(deployment, tmp_path_factory):
    """tfe-guard with only a public listener (as in the endpoint pod with serving.tls) in front of the
    endpoint's plain port: https://127.0.0.1:PORT, and the CA that signed its certificate."""
    d = tmp_path_factory.mktemp("tls")
    ca, crt, key = make_pki(d)
    port = free_ports(1)[0]
    cfg = d / "guard.json"
    cfg.write_text(json.dumps({"public": {"listen": f"tcp:127.0.0.1:{port}",
                                          "backend": f"127.0.0.1:{deployment.port}", "cert": str(crt),
                                          "key": str(key)}}))
    with open(d / "guard.log", "wb") as log:
        guard = subprocess.Popen([guard_binary(), "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert guard.poll() is None, (d / "guard.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "tfe-guard did not listen within 30 s"
                time.sleep(0.05)
        yield f"https://127.0.0.1:{port}", ca
    finally:
        guard.terminate()
        guard.wait(timeout=10)


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "tfe_client.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env={**os.environ, "NO_PROXY": "*"})


def test_https_endpoint_with_a_test_ca_and_the_cli(deployment, https, data, models, tmp_path):
    url, ca = https
    _, x_te, _, _ = data
    np.save(tmp_path / "x.npy", x_te[:5])
    pins = tmp_path / "pins.json"
    deployment.pins.save(str(pins))
    out = cli("predict", "--endpoint", url, "--model", "digits", "--pins", str(pins), "--ca", str(ca),
              "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"), "--proba")
    assert out.returncode == 0, out.stderr
    y = np.load(tmp_path / "y.npy")
    np.testing.assert_allclose(y, models["mlp_keras"].predict(x_te[:5], verbose=0), atol=2e-2)
    # without the CA the certificate is refused before anything is sent
    out = cli("predict", "--endpoint", url, "--model", "digits", "--pins", str(pins),
              "--input", str(tmp_path / "x.npy"))
    assert out.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in out.stderr, out.stderr
    # the library, and the OIP routes through TLS too
    c = Client(url, pins=deployment.pins, ca=ca)
    assert np.argmax(c.predict("digits", x_te[:1])) == np.argmax(models["mlp_keras"].predict(x_te[:1], verbose=0))
    info = cli("info", "--endpoint", url, "--model", "digits", "--ca", str(ca))
    assert info.returncode == 0 and json.loads(info.stdout)["name"] == "digits", info.stderr


def test_tls_cost_measured(deployment, https, data):
    """What TLS termination in the guard costs per prediction (reported, not asserted: no timing
    assertions). Kept-alive connections, sequential batch-1 requests, same endpoint behind both."""
    url, ca = https
    _, x_te, _, _ = data
    plain, tls = deployment.client(), Client(url, pins=deployment.pins, ca=ca)
    for c in (plain, tls):
        c.predict("digits", x_te[:1])  # warm: model info, connection
    lat: dict[str, list[float]] = {"http": [], "https": []}
    for k in range(40):
        for name, c in (("http", plain), ("https", tls)):  # interleaved: the same load on both
            t0 = time.perf_counter()
            c.predict("digits", x_te[k:k + 1])
            lat[name].append((time.perf_counter() - t0) * 1000)
    p50 = {k: statistics.median(v) for k, v in lat.items()}
    print(f"\nTLS cost (b1, keep-alive, 40 requests each): http p50 {p50['http']:.1f} ms, "
          f"https p50 {p50['https']:.1f} ms, difference {p50['https'] - p50['http']:+.1f} ms")
    assert len(lat["https"]) == 40


def test_oip_v2_health_and_metadata_routes(deployment):
    port = deployment.port
    st, body = http_json(port, "GET", "/v2/health/live")
    assert (st, wire.OipLive.parse(body)) == (200, wire.OipLive(True))
    st, body = http_json(port, "GET", "/v2/health/ready")
    assert (st, wire.OipReady.parse(body)) == (200, wire.OipReady(True))
    info = deployment.client().model_info("digits")
    st, body = http_json(port, "GET", "/v2/models/digits")
    assert st == 200
    meta = wire.OipModelMetadata.parse(body)
    assert meta == wire.OipModelMetadata.of(info)
    assert meta.inputs[0].shape == (-1, 64) and meta.outputs[0].shape == (-1, 10)
    assert meta.versions == (str(info.share_generation),)
    st, body = http_json(port, "GET", "/v2/models/digits/ready")
    assert (st, wire.OipModelReady.parse(body)) == (200, wire.OipModelReady("digits", True))
    st, body = http_json(port, "GET", "/v2/models/nope/ready")
    assert (st, body["error"]["code"]) == (404, "no_such_model")


def _json_lines(path):
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("{"):
                out.append(json.loads(line))
    return out


def test_access_log_lines_have_metadata_only(deployment):
    info = deployment.client().model_info("digits")
    x = np.full((2, 64), 3.14159)
    x[1, :] = -2.71828
    req, _ = seal_request("digits", list(info.worker_keys), info.fixed_point.encode(x))
    body = req.to_json()
    st, resp = http_json(deployment.port, "POST", PREDICT, body)
    assert st == 200, resp
    log = deployment.stack.logs["serve-digits"]  # the endpoint process (TLS on: its own namespace)
    deadline = time.monotonic() + 30
    while True:
        lines = [ln for ln in _json_lines(log) if ln.get("logger") == "tfe_worker.access"
                 and ln.get("request_id") == req.request_id]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(lines) == 1, "one access line per request"
    (line,) = lines
    assert line["route"] == "/v1/models/{}:predict" and line["method"] == "POST" and line["status"] == 200
    assert line["rows"] == 2 and line["generation"] == info.share_generation and line["latency_ms"] > 0
    assert line["level"] == "INFO" and line["time"].endswith("Z")
    # an error line carries its code, still no value
    st, _ = http_json(deployment.port, "POST", PREDICT, {**body, "shape": [3, 64]})
    assert st == 400
    # no process logged anything of the request or its answer: ciphertexts, nonces, the ephemeral
    # key, the inputs
    text = deployment.logs_text()
    for b in body["bundles"] + resp["outputs"]:
        assert b["ciphertext"][:24] not in text and b["nonce"] not in text
    assert body["ephemeralKey"] not in text
    for v in ("3.14159", "2.71828", "3.1415", "2.7182"):
        assert v not in text
    # and the access lines are all metadata: only these keys
    allowed = {"time", "level", "logger", "message", "app", "method", "route", "status", "latency_ms", "request_id",
               "rows", "generation", "code"}
    access = [ln for ln in _json_lines(log) if ln.get("logger") == "tfe_worker.access"]
    assert access and all(set(ln) <= allowed for ln in access), access[-3:]
    assert any(ln.get("code") == "bad_request" for ln in access)
