"""The party mesh against an attacker (issue 9): real players, real tfe-guard, real TLS.

Each attack runs twice where it can: against the default stack (TLS on, every party in a
network namespace of its own behind tfe-guard) it must fail; against the insecure stack
(`tls=False`, what the first release did) the same attack must succeed, so these tests can fail.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading

import pytest
from conftest import relay

from tfe_client import mesh, wire
from tfe_worker.local import TF_PORTS, _UnixTLSConnection, free_ports, new_stack

ATTACK = os.path.join(os.path.dirname(__file__), "mesh_attack.py")
READY_TIMEOUT = 300.0


def _players(tmp_path_factory, tls: bool):
    stack = new_stack(str(tmp_path_factory.mktemp(f"mesh-{'on' if tls else 'off'}")), "digits", tls=tls)
    try:
        stack.start_players(READY_TIMEOUT)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    yield from _players(tmp_path_factory, tls=True)


@pytest.fixture(scope="module")
def insecure(tmp_path_factory):
    yield from _players(tmp_path_factory, tls=False)


def key_digest(stack, i: int) -> str:
    with open(os.path.join(stack.state, f"server{i}", "keys", "x25519.key"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run(cmd: list[str], timeout: float = 120.0) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("READ", "REFUSED", "CODE"))]
    assert "tfe-guard exited" not in out.stderr, f"the attacker's own guard did not start: {out.stderr[-800:]}"
    if not lines and out.returncode != 0:  # TF aborts the process when a remote context cannot be made
        errs = [ln for ln in out.stderr.splitlines() if "rror" in ln or "closed" in ln]
        return f"REFUSED (attacker died, rc {out.returncode}): {' | '.join(errs[-3:])[:500]}"
    assert lines, f"attacker printed no verdict (rc {out.returncode}): {out.stdout[-500:]} {out.stderr[-1500:]}"
    print(lines[-1])
    return lines[-1]


def as_identity(stack, tmp_path, identity: str, pki: dict[str, str], targets: dict[int, str],
                cmd: list[str]) -> list[str]:
    """`cmd` in a namespace of its own whose guard (holding `identity`'s certificate) forwards
    127.0.0.1:<port> to the given parties."""
    cfg = {"identity": identity, **pki, "devices": mesh.DEVICES, "inbound": [],
           "outbound": [{"listen": f"127.0.0.1:{port}", "dial": stack.mesh.dial(name, "grpc"), "expect": name}
                        for port, name in targets.items()]}
    path = tmp_path / "intruder.guard.json"
    path.write_text(json.dumps(cfg))
    return [sys.executable, "-m", "tfe_worker.party", "--guard", str(path), "--isolate", "--", *cmd]


def read_key_cmd(addrs: list[str]) -> list[str]:
    return [sys.executable, ATTACK, "read-key", *addrs, f"127.0.0.1:{free_ports(1)[0]}", "2", "keys/x25519.key"]


def test_without_tls_an_outsider_reads_a_workers_private_key(insecure):
    """The insecure baseline: what the attacks below must not achieve."""
    verdict = run(read_key_cmd([p.tf for p in insecure.config.players]))
    assert verdict == f"READ {key_digest(insecure, 2)}"


def test_a_process_without_a_certificate_cannot_join(secure, tmp_path):
    """Plain gRPC to the guards' sockets (TCP forwarders so TF can dial them): the TLS handshake fails."""
    fwd = [_forward(secure.mesh.dial(n, "grpc")[len("unix:"):]) for n in mesh.SERVERS]
    verdict = run(read_key_cmd([f"127.0.0.1:{p}" for p in fwd]))
    assert verdict.startswith("REFUSED"), verdict


def test_worker_1s_identity_cannot_run_ops_on_worker_2(secure, tmp_path):
    every = {p: f"server{i}" for i, p in enumerate(TF_PORTS)}
    cmd = as_identity(secure, tmp_path, "server1", secure.pki("server1"), every,
                      read_key_cmd([f"127.0.0.1:{p}" for p in TF_PORTS]))
    verdict = run(cmd)
    assert verdict.startswith("REFUSED"), verdict
    assert key_digest(secure, 2) not in verdict


def test_a_certificate_from_another_ca_is_refused(secure, tmp_path):
    ca = mesh.make_ca("elsewhere")
    kp = mesh.issue(ca, mesh.COORDINATOR)
    for name, data in (("ca.crt", ca.cert), ("c.crt", kp.cert), ("c.key", kp.key)):
        (tmp_path / name).write_bytes(data)
    pki = {"ca": str(tmp_path / "ca.crt"), "cert": str(tmp_path / "c.crt"), "key": str(tmp_path / "c.key")}
    cmd = as_identity(secure, tmp_path, mesh.COORDINATOR, pki, {TF_PORTS[i]: f"server{i}" for i in range(3)},
                      read_key_cmd([f"127.0.0.1:{p}" for p in TF_PORTS]))
    # our guard refuses the servers' certificates (other CA) or theirs refuse ours: either way no key
    verdict = run(cmd)
    assert verdict.startswith("REFUSED"), verdict


def test_worker_1_cannot_take_a_tensor_addressed_to_worker_0(secure, tmp_path):
    cmd = as_identity(secure, tmp_path, "server1", secure.pki("server1"), {TF_PORTS[2]: "server2"},
                      [sys.executable, ATTACK, "recv-tensor", f"127.0.0.1:{TF_PORTS[2]}", "0"])
    verdict = run(cmd)
    assert verdict.startswith("CODE PERMISSION_DENIED"), verdict
    assert "server1" in verdict and "task:0" in verdict
    # its own tensors it may ask for: the guard lets the call through to TF
    cmd = as_identity(secure, tmp_path, "server1", secure.pki("server1"), {TF_PORTS[2]: "server2"},
                      [sys.executable, ATTACK, "recv-tensor", f"127.0.0.1:{TF_PORTS[2]}", "1"])
    assert not run(cmd).startswith("CODE PERMISSION_DENIED")


def test_without_the_guard_tf_does_not_check_who_asks_for_a_tensor(insecure):
    """TF itself checks nothing about the caller: the forged request is not refused for who sent it
    (TF objects only to the source incarnation, and its error message names the right one)."""
    verdict = run([sys.executable, ATTACK, "recv-tensor", insecure.config.players[2].tf, "0"])
    assert not verdict.startswith("CODE PERMISSION_DENIED"), verdict
    assert "incarnation" in verdict, verdict  # TF's only objection, and it names the number it wants


def _refusals(stack, i: int) -> list[dict]:
    """What worker i's guard reports having refused (read as `operator`, as the operator does)."""
    code, body = stack.worker_get(i, mesh.REFUSALS_PATH)
    assert code == 200, (code, body)
    return wire.GuardRefusals.parse(body).to_json()["refusals"]


def test_expired_and_wrong_identity_certificates_are_refused_and_reported(secure, tmp_path):
    """The guard names the identity and the reason; the operator copies this into status.mesh.refused."""
    ca_dir = os.path.dirname(secure.pki("server1")["ca"])
    with open(os.path.join(ca_dir, "ca.crt"), "rb") as f, open(os.path.join(ca_dir, "ca.key"), "rb") as g:
        ca = mesh.KeyPair(f.read(), g.read())
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)
    expired = mesh.issue(ca, "server1", ["server1"], days=1, now=old)
    (tmp_path / "e.crt").write_bytes(expired.cert)
    (tmp_path / "e.key").write_bytes(expired.key)
    pki = {"ca": secure.pki("server1")["ca"], "cert": str(tmp_path / "e.crt"), "key": str(tmp_path / "e.key")}
    conn = _UnixTLSConnection(secure.mesh.dial("server2", "http")[len("unix:"):], pki, "server2", 10.0)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        conn.request("GET", "/v1/public-key")
        conn.getresponse().read()
    conn.close()
    # a valid certificate, but server1 may not use worker 2's HTTP side at all
    code, body = secure.call("server2", "GET", "/v1/public-key", identity="server1")
    assert code == 403, (code, body)
    seen = {(r["identity"], r["reason"].split(" (")[0]) for r in _refusals(secure, 2)}
    assert ("server1", "handshake: certificate has expired") in seen, seen
    assert ("server1", "request GET /v1/public-key: no rule admits it") in seen, seen
    assert not any(r["identity"] == "operator" for r in _refusals(secure, 2))  # its own reads are admitted


def _forward(unix_path: str) -> int:
    """A plain TCP -> Unix socket forwarder on loopback (no TLS): what a pod without a certificate has."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def accept() -> None:
        while True:
            c, _ = srv.accept()
            u = socket.socket(socket.AF_UNIX)
            u.connect(unix_path)
            relay(c, u)

    threading.Thread(target=accept, daemon=True).start()
    return int(srv.getsockname()[1])
