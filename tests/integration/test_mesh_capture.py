"""A sniffer between the parties sees no cleartext (issue 9): share a model, serve 20 predictions,
and look at every byte that travelled between two parties.

TLS on: every party is in a network namespace of its own and the only links between them are the
guards' Unix sockets; the test puts a recording relay in front of each one (peers dial the relay).
TLS off (the first release): the parties talk over loopback in one namespace; the test reads every
loopback packet with an AF_PACKET socket. The same markers must be absent from the first capture
and present in the second, so the test can fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading

import pytest
from conftest import READY_TIMEOUT, Deployment, relay

from tfe_worker.local import new_stack

# What cleartext between parties would show: the HTTP/2 preface of TF's gRPC, TF service names,
# the coordinator<->worker JSON (ingress/egress), a client's ephemeral key field.
MARKERS = (b"PRI * HTTP/2.0", b"/tensorflow.", b"/v1/ingress", b"/v1/egress", b"ephemeralKey", b"batchId")
NAMES = [(n, k) for n in ("server0", "server1", "server2") for k in ("grpc", "http")]
NAMES += [("coordinator", "grpc"), ("coordinator", "http"), ("coordinator-1", "grpc"),
          ("coordinator-1", "http"), ("share", "grpc")]


class UnixTap:
    """Recording relays: <tap>/<name>.<kind>.sock -> <mesh>/<name>.<kind>.sock."""

    def __init__(self, tap_dir: str, mesh_dir: str) -> None:
        self.data = bytearray()
        self.lock = threading.Lock()
        self.servers = []
        for name, kind in NAMES:
            path = os.path.join(tap_dir, f"{name}.{kind}.sock")
            srv = socket.socket(socket.AF_UNIX)
            srv.bind(path)
            srv.listen(64)
            self.servers.append(srv)
            target = os.path.join(mesh_dir, f"{name}.{kind}.sock")
            threading.Thread(target=self._accept, args=(srv, target), daemon=True).start()

    def _accept(self, srv: socket.socket, target: str) -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            u = socket.socket(socket.AF_UNIX)
            try:
                u.connect(target)
            except OSError:
                c.close()
                continue
            relay(c, u, self._record)

    def _record(self, data: bytes) -> None:
        with self.lock:
            self.data += data

    def close(self) -> None:
        for s in self.servers:
            s.close()


class LoopbackSniffer:
    """Every TCP payload on this namespace's loopback (the client's hop too: the markers checked
    below occur only between parties)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.5)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                frame, addr = self.sock.recvfrom(262144)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] == socket.PACKET_OUTGOING:  # loopback shows each packet twice
                continue
            ip = frame[14:]
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
                continue
            ihl = (ip[0] & 0xF) * 4
            total = int.from_bytes(ip[2:4], "big")
            tcp = ip[ihl:total]
            self.data += tcp[(tcp[12] >> 4) * 4:]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def share_and_predict(stack, models, data) -> None:
    """Share the digits MLP, start the endpoint, 20 private predictions."""
    stack.start_players(READY_TIMEOUT)
    assert stack.share(models["mlp"]) == 0
    dep = Deployment(stack)
    dep.start_serve()
    _, x_te, _, _ = data
    client = dep.client()
    for k in range(20):
        assert client.predict("digits", x_te[k:k + 1]).shape == (1, 10)


@pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("TFE_NETNS") != "1", reason="needs AF_PACKET")
def test_without_tls_a_sniffer_sees_the_parties_cleartext(tmp_path, models, data):
    stack = new_stack(str(tmp_path / "state"), "digits", tls=False)
    sniffer = LoopbackSniffer()
    try:
        share_and_predict(stack, models, data)
    finally:
        stack.stop()
        sniffer.close()
    seen = [m for m in MARKERS if m in sniffer.data]
    assert b"PRI * HTTP/2.0" in seen and b"/tensorflow." in seen and b"/v1/ingress" in seen, seen


def test_with_tls_a_sniffer_between_parties_sees_only_ciphertext(tmp_path, models, data):
    stack = new_stack(str(tmp_path / "state"), "digits", tls=True)
    tap_dir = tempfile.mkdtemp(prefix="tfe-tap-", dir="/tmp")
    stack.tap_dir = tap_dir
    os.makedirs(stack.mesh_dir, exist_ok=True)
    tap = UnixTap(tap_dir, stack.mesh_dir)
    try:
        share_and_predict(stack, models, data)
    finally:
        stack.stop()
        tap.close()
        shutil.rmtree(tap_dir, ignore_errors=True)
    captured = bytes(tap.data)
    assert len(captured) > 200_000, f"the tap saw only {len(captured)} bytes: it is not on the path"
    assert b"\x16\x03\x01" in captured  # TLS handshake records: the tap saw the connections being made
    seen = [m for m in MARKERS if m in captured]
    assert not seen, f"cleartext between parties: {seen}"
