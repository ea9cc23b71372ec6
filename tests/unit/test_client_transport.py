"""The client's transport: HTTPS with a custom CA, HTTP(S)_PROXY/NO_PROXY, retries only on 503
not_ready (Retry-After), timeouts. Real sockets on loopback; the servers are stubs in threads."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tfe_client import wire
from tfe_client.client import Client
from tfe_client.crypto import WorkerKey
from tfe_client.errors import RemoteError
from tfe_client.fixedpoint import FixedPoint

INFO = wire.ModelInfo("digits", "ABY3", 1, (4,), (3,), "softmax", FixedPoint(), 8,
                      tuple(WorkerKey.generate().public for _ in range(3)), "0" * 64)


def make_ca(tmp: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (tmp / f"{name}.pem", tmp / f"{name}-server.pem", tmp / f"{name}-server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class Stub:
    """Answers GET /v1/models/digits from a script of (status, body, headers); records request lines."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.script: list[tuple[int, Any, dict[str, str]]] = []
        self.seen: list[str] = []
        stub = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                stub.seen.append(f"{self.command} {self.path}")
                status, body, headers = stub.script.pop(0) if stub.script else (200, INFO.to_json(), {})
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    yield s
    s.close()


NOT_READY = (503, wire.ErrorBody("not_ready", "still loading").to_json(), {"Retry-After": "0"})


def test_https_with_a_custom_ca(tmp_path: Path) -> None:
    ca, cert, key = make_ca(tmp_path, "test-ca")
    other, _, _ = make_ca(tmp_path, "other-ca")
    s = Stub(tls=(cert, key))
    try:
        url = f"https://127.0.0.1:{s.port}"
        assert Client(url, ca=ca).unverified_model_info("digits") == INFO
        with pytest.raises(ssl.SSLCertVerificationError):
            Client(url, ca=other).unverified_model_info("digits")
        with pytest.raises(ssl.SSLCertVerificationError):  # the system's CAs do not know the test CA
            Client(url).unverified_model_info("digits")
        with pytest.raises(ValueError, match="only for https"):
            Client(f"http://127.0.0.1:{s.port}", ca=ca)
        with pytest.raises(ValueError, match="does not exist"):
            Client(url, ca=tmp_path / "missing.pem")
    finally:
        s.close()


def test_not_ready_is_retried_after_retry_after(stub: Stub) -> None:
    stub.script = [NOT_READY, NOT_READY]
    c = Client(f"http://127.0.0.1:{stub.port}", retry_for=30)
    assert c.unverified_model_info("digits") == INFO
    assert len(stub.seen) == 3


def test_not_ready_gives_up_after_retry_for(stub: Stub) -> None:
    stub.script = [NOT_READY] * 3
    with pytest.raises(RemoteError) as e:
        Client(f"http://127.0.0.1:{stub.port}", retry_for=0).unverified_model_info("digits")
    assert e.value.code == "not_ready"
    assert len(stub.seen) == 1


@pytest.mark.parametrize("code", ["overloaded", "draining", "coordinator_unavailable", "workers_unavailable"])
def test_other_503s_are_not_retried(stub: Stub, code: str) -> None:
    stub.script = [(503, wire.ErrorBody(code, "no").to_json(), {"Retry-After": "0"})]
    with pytest.raises(RemoteError) as e:
        Client(f"http://127.0.0.1:{stub.port}", retry_for=30).unverified_model_info("digits")
    assert e.value.code == code
    assert len(stub.seen) == 1


def test_timeout_bounds_a_silent_server() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)  # accepts (the kernel does) but never answers
        c = Client(f"http://127.0.0.1:{srv.getsockname()[1]}", timeout=0.5)
        with pytest.raises(TimeoutError):
            c.unverified_model_info("digits")


class Proxy:
    """A forward proxy: plain HTTP requests (absolute URI) and CONNECT tunnels; records request lines."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(c,), daemon=True).start()

    def _handle(self, c: socket.socket) -> None:
        with c:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = c.recv(4096)
                if not chunk:
                    return
                head += chunk
            line = head.split(b"\r\n", 1)[0].decode()
            self.seen.append(line)
            method, target, _ = line.split(" ")
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up = socket.create_connection((host, int(port)))
                c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                hostport = target.split("/")[2]
                host, port = hostport.rsplit(":", 1)
                up = socket.create_connection((host, int(port)))
                up.sendall(head)
            with up:
                socks = [c, up]
                while True:
                    r, _, _ = select.select(socks, [], [], 5)
                    if not r:
                        return
                    for s in r:
                        data = s.recv(65536)
                        if not data:
                            return
                        (up if s is c else c).sendall(data)

    def close(self) -> None:
        self.sock.close()


def test_proxy_environment_is_honoured(stub: Stub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = Proxy()
    ca, cert, key = make_ca(tmp_path, "test-ca")
    tls = Stub(tls=(cert, key))
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        for var in ("http_proxy", "https_proxy"):
            monkeypatch.delenv(var, raising=False)
        assert Client(f"http://127.0.0.1:{stub.port}").unverified_model_info("digits") == INFO
        assert proxy.seen[-1] == f"GET http://127.0.0.1:{stub.port}/v1/models/digits HTTP/1.1"
        assert Client(f"https://127.0.0.1:{tls.port}", ca=ca).unverified_model_info("digits") == INFO
        assert proxy.seen[-1] == f"CONNECT 127.0.0.1:{tls.port} HTTP/1.0"  # TLS end to end through the tunnel
        n = len(proxy.seen)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert Client(f"http://127.0.0.1:{stub.port}").unverified_model_info("digits") == INFO
        assert len(proxy.seen) == n, "NO_PROXY was not honoured"
    finally:
        proxy.close()
        tls.close()
