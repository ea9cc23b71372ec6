"""The embedded default: three players, the share job and the coordinator on one machine.

TF's gRPC servers listen on every interface and have no authentication. So, where the
kernel allows it (root, or unprivileged user namespaces), everything runs inside a private
network namespace of its own, and only the client endpoint is reachable: its listening
socket is opened on the host's loopback first and handed to the coordinator inside.
One Ctrl-C (or SIGTERM) stops every process.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tfe_client import mesh as mesh_mod
from tfe_worker.config import PLAYER_NAMES, Config

log = logging.getLogger("tfe_worker.local")

# TLS on: the loopback ports inside every party's namespace (docs/mesh.md)
TF_PORTS = (4440, 4441, 4442)
HTTP_PORTS = (8081, 8082, 8083)
COORD_PORTS = (4450, 4451)
SHARE_PORTS = (4460,)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def loopback_up() -> None:
    """ip link set lo up, without iproute2 (SIOCGIFFLAGS / SIOCSIFFLAGS)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, struct.pack("16sh", b"lo", 0)))[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 1))
    finally:
        s.close()


def isolation_cmd() -> list[str] | None:
    """The unshare prefix that gives a private network namespace here, or None."""
    exe = shutil.which("unshare")
    if exe is None:
        return None
    for cmd in ([exe, "-n"], [exe, "-rn"]) if os.geteuid() == 0 else ([exe, "-rn"],):
        try:
            if subprocess.run([*cmd, "true"], capture_output=True, timeout=10, check=False).returncode == 0:
                return cmd
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def worker_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tfe_worker.cli", *args]


@dataclass
class Stack:
    """Child processes of one local deployment, started and stopped together."""

    state: str
    name: str
    config: Config
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)  # type: ignore[type-arg]
    logs: dict[str, str] = field(default_factory=dict)
    tls: bool = True
    slots: dict[str, list[str | None]] = field(default_factory=lambda: {"coordinator": [None, None],
                                                                        "share": [None]})
    relays: dict[str, tuple[int, int]] = field(default_factory=dict)  # model -> (coordinator slot, relay port)
    tap_dir: str | None = None  # tests only: where peers dial instead of the guards' own sockets

    def _spawn(self, key: str, cmd: list[str], pass_fds: tuple = ()) -> subprocess.Popen:  # type: ignore[type-arg]
        logdir = os.path.join(self.state, "logs")
        os.makedirs(logdir, exist_ok=True)
        path = os.path.join(logdir, f"{key}.log")
        self.logs[key] = path
        with open(path, "ab") as out:
            p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, pass_fds=pass_fds,
                                 start_new_session=False)
        self.procs[key] = p
        return p

    def for_model(self, name: str) -> Stack:
        """The same players (and process table) acting for another model name."""
        return dataclasses.replace(self, name=name)

    def coordinator(self) -> str:
        """A fresh coordinator address: each coordinator process binds its own TF port (TLS off)."""
        return f"127.0.0.1:{free_ports(1)[0]}"

    # -- the mesh (TLS on): every party in a network namespace of its own, behind tfe-guard --------
    @property
    def mesh_dir(self) -> str:
        """Unix sockets of the guards (short: a socket path has at most 107 bytes)."""
        d = os.path.join(self.state, "mesh")
        return d if len(d) < 80 else os.path.join("/tmp", "tfe-mesh-" + hashlib.sha256(d.encode()).hexdigest()[:12])

    @property
    def mesh(self) -> mesh_mod.Mesh:
        listen, dial = mesh_mod.unix_addressing(self.mesh_dir)
        if self.tap_dir is not None:  # tests: peers dial a recording relay in front of each guard
            dial = mesh_mod.unix_addressing(self.tap_dir)[1]
        ports = mesh_mod.Ports.from_addresses([p.tf for p in self.config.players],
                                              [p.http for p in self.config.players],
                                              coordinators=tuple(COORD_PORTS[:len(self.slots["coordinator"])]),
                                              shares=tuple(SHARE_PORTS[:len(self.slots["share"])]))
        return mesh_mod.Mesh(ports, listen, dial)

    def pki(self, identity: str) -> dict[str, str]:
        """Paths of the CA and of `identity`'s certificate and key (created on first use)."""
        with _PKI_LOCK:
            return self._pki(identity)

    def _pki(self, identity: str) -> dict[str, str]:
        d = os.path.join(self.state, "pki")
        os.makedirs(d, mode=0o700, exist_ok=True)
        ca_crt, ca_key = os.path.join(d, "ca.crt"), os.path.join(d, "ca.key")
        if not os.path.exists(ca_key):
            _write_private(ca_key, (ca := mesh_mod.make_ca(f"local {self.state}")).key)
            _write_private(ca_crt, ca.cert)
        crt, key = os.path.join(d, f"{identity}.crt"), os.path.join(d, f"{identity}.key")
        if not os.path.exists(key):
            with open(ca_crt, "rb") as f, open(ca_key, "rb") as g:
                ca = mesh_mod.KeyPair(f.read(), g.read())
            kp = mesh_mod.issue(ca, identity, days=30)
            _write_private(key, kp.key)
            _write_private(crt, kp.cert)
        return {"ca": ca_crt, "cert": crt, "key": key}

    def _slot(self, role: str, owner: str) -> int:
        """A coordinator/share slot for `owner` (reused by the same owner, freed when its process ends)."""
        slots = self.slots[role]
        for k, o in enumerate(slots):
            if o == owner:
                return k
        for k, o in enumerate(slots):
            p = self.procs.get(o) if o is not None else None
            if o is None or (p is not None and p.poll() is not None):
                slots[k] = owner
                return k
        raise RuntimeError(f"all {len(slots)} local {role} slots are busy ({', '.join(map(str, slots))})")

    def release(self, role: str, owner: str) -> None:
        slots = self.slots[role]
        for k, o in enumerate(slots):
            if o == owner:
                slots[k] = None

    def party_cmd(self, identity: str, cmd: list[str], slot: int = 0, pass_fds: tuple[int, ...] = ()) -> list[str]:
        """`cmd` wrapped so it runs as `identity` of the mesh (unchanged with TLS off)."""
        if not self.tls:
            return cmd
        os.makedirs(self.mesh_dir, exist_ok=True)
        cfg = self.mesh.guard_config(identity, self.pki(identity), slot)
        path = os.path.join(self.state, "pki", f"{identity}-{slot}.guard.json")
        with open(path, "w") as f:
            json.dump(cfg, f, indent=1)
        fds = [x for fd in pass_fds for x in ("--pass-fd", str(fd))]
        return [sys.executable, "-m", "tfe_worker.party", "--guard", path, "--isolate", *fds, "--", *cmd]

    def as_coordinator(self, owner: str, cmd: Callable[[str], list[str]]) -> list[str]:
        """A command that joins the players as job `coordinator` (given its TF address)."""
        if not self.tls:
            return cmd(self.coordinator())
        k = self._slot("coordinator", owner)
        return self.party_cmd(mesh_mod.COORDINATOR, cmd(f"127.0.0.1:{COORD_PORTS[k]}"), slot=k)

    def call(self, party: str, method: str, path: str, body: Any = None, identity: str = mesh_mod.OPERATOR,
             timeout: float = 10.0) -> tuple[int, Any]:
        """HTTP to a party's HTTP side: `serverI` (a player) or `coordinator:<model>` (its relay API).
        With TLS on it goes through the party's guard as `identity` (which must be allowed there)."""
        if party.startswith("coordinator:"):
            slot, relay = self.relays[party.split(":", 1)[1]]
            target, addr = mesh_mod.party("coordinator", slot), f"127.0.0.1:{relay}"
            expect = mesh_mod.COORDINATOR
        else:
            target, addr, expect = party, self.config.player(party).http, party
        if not self.tls:
            host, port = addr.rsplit(":", 1)
            conn: http.client.HTTPConnection = http.client.HTTPConnection(host, int(port), timeout=timeout)
        else:
            conn = _UnixTLSConnection(self.mesh.dial(target, "http")[len("unix:"):], self.pki(identity), expect,
                                      timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
            r = conn.getresponse()
            raw = r.read()
            ctype = r.getheader("Content-Type") or ""
            return r.status, (json.loads(raw) if raw and ctype.startswith("application/json") else raw)
        finally:
            conn.close()

    def worker_get(self, i: int, path: str, timeout: float = 10.0) -> tuple[int, Any]:
        """GET a player's HTTP side as the `operator` identity."""
        return self.call(PLAYER_NAMES[i], "GET", path, timeout=timeout)

    def pins(self, model: str | None = None) -> Any:
        """The workers' public keys as client pins (tfe_client.pins.Pins), read from each worker's HTTP
        side (as `operator`, through its guard with TLS on), never from the endpoint."""
        from tfe_client import wire
        from tfe_client.pins import Pins

        keys = []
        for i, n in enumerate(PLAYER_NAMES):
            status, body = self.worker_get(i, "/v1/public-key")
            r = wire.PublicKeyResponse.parse(body) if status == 200 else None
            if r is None or r.name != n:
                raise RuntimeError(f"{n} /v1/public-key: HTTP {status} {str(body)[:200]}")
            keys.append(r.public_key)
        return Pins(tuple(keys), model, f"tfe-worker local {self.state}: read from the workers")

    def wait_players(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            bad = []
            for i, n in enumerate(PLAYER_NAMES):
                try:
                    if self.worker_get(i, "/readyz", timeout=2.0)[0] != 200:
                        bad.append(n)
                except OSError:
                    bad.append(n)
            if not bad:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers not ready after {timeout:.0f}s: {', '.join(bad)}")
            time.sleep(0.25)

    def config_path(self) -> str:
        return os.path.join(self.state, "tfe.json")

    def start_player(self, i: int) -> subprocess.Popen:  # type: ignore[type-arg]
        name = PLAYER_NAMES[i]
        return self._spawn(name, self.party_cmd(name, worker_cmd(
            "player", name, "--config", self.config_path(), "--state", os.path.join(self.state, name),
            "--spool", os.path.join(self.state, "spool", name), "--http-bind", "127.0.0.1")))

    def start_players(self, ready_timeout: float = 120.0) -> None:
        os.makedirs(self.state, exist_ok=True)
        with open(self.config_path(), "w") as f:
            f.write(self.config.to_json())
        for i in range(3):
            self.start_player(i)
        self.wait_players(ready_timeout)

    def share(self, model: str, generation: int = 1, sha256: str | None = None) -> int:
        key = f"share-{self.name}-g{generation}"
        addr = self.coordinator() if not self.tls else f"127.0.0.1:{SHARE_PORTS[self._slot('share', key)]}"
        cmd = worker_cmd("share", "--config", self.config_path(), "--model", model, "--name", self.name,
                         "--generation", str(generation), "--coordinator-address", addr,
                         "--termination-log", os.path.join(self.state, "share.termination-log"))
        if sha256:
            cmd += ["--sha256", sha256]
        if self.tls and model.startswith(("http://", "https://")):
            # the share job's namespace reaches only the parties: fetch (and check) the model out here
            local = os.path.join(self.state, f"{key}.model")
            fetch = worker_cmd("share", "--config", self.config_path(), "--model", model, "--name", self.name,
                               "--coordinator-address", addr, "--fetch-to", local,
                               "--termination-log", os.path.join(self.state, "share.termination-log"),
                               *(["--sha256", sha256] if sha256 else []))
            rc = self._spawn(f"fetch-{key}", fetch).wait()
            if rc != 0:
                self.release("share", key)
                return rc
            cmd[cmd.index(model)] = local
        if self.tls:
            cmd = self.party_cmd(mesh_mod.share_identity(generation), cmd, self._slot("share", key))
        p = self._spawn(key, cmd)
        try:
            return p.wait()
        finally:
            self.release("share", key)
            if os.path.exists(os.path.join(self.state, f"{key}.model")):
                os.unlink(os.path.join(self.state, f"{key}.model"))

    def reshare(self, source: int, generation: int, lost: int | None = None, timeout: float = 600.0) -> int:
        """A new generation from `source` without the model: `lost` recovers that player's pairs
        from its two peers, None refreshes all three (docs/recovery.md). The exit code."""
        key = f"reshare-{self.name}-g{generation}"
        addr = self.coordinator() if not self.tls else f"127.0.0.1:{SHARE_PORTS[self._slot('share', key)]}"
        mode = ["--refresh"] if lost is None else ["--recover", PLAYER_NAMES[lost]]
        cmd = worker_cmd("reshare", "--config", self.config_path(), "--name", self.name, "--from-generation",
                         str(source), "--generation", str(generation), *mode, "--coordinator-address", addr,
                         "--termination-log", os.path.join(self.state, "reshare.termination-log"))
        if self.tls:
            cmd = self.party_cmd(mesh_mod.share_identity(generation), cmd, self._slot("share", key))
        p = self._spawn(key, cmd)
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=30)
            return -9
        finally:
            self.release("share", key)

    def start_serve(self, port: int, extra: list[str], listen_fd: int | None = None,
                    split: bool | None = None) -> subprocess.Popen:  # type: ignore[type-arg]
        """The model's client endpoint on 127.0.0.1:`port` (returned: the client-facing process).

        split (default: with TLS on): the coordinator (TF, relay API on loopback only) and the
        endpoint (no TF, no identity that can talk to a worker) are separate processes, each in
        a namespace of its own; the endpoint relays ciphertext to the coordinator's relay through
        the guards. Otherwise one `serve` process is both.
        """
        split = self.tls if split is None else split
        key, ckey = f"serve-{self.name}", f"coordinator-{self.name}"
        for k in (key, ckey):  # one serve per model: a previous one (maybe still draining) ends first
            old = self.procs.get(k)
            if old is not None and old.poll() is None:
                old.terminate()
                old.wait(timeout=150)
        sock = None
        if self.tls and listen_fd is None:
            # the client-facing process runs in a namespace of its own: open its port out here
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(128)
            listen_fd = sock.fileno()
            os.set_inheritable(listen_fd, True)
        fds: tuple[int, ...] = () if listen_fd is None else (listen_fd,)
        listen = ["--listen-fd", str(listen_fd)] if listen_fd is not None else []
        ep_extra, co_extra = _split_args(extra) if split else ([], extra)
        slot = self._slot("coordinator", ckey if split else key) if self.tls else 0
        coord_addr = f"127.0.0.1:{COORD_PORTS[slot]}" if self.tls else self.coordinator()
        serve = worker_cmd("serve", "--config", self.config_path(), "--name", self.name, "--port", str(port),
                           "--host", "127.0.0.1", "--coordinator-address", coord_addr, *co_extra)
        try:
            if not split:
                cmd = serve + listen
                if self.tls:
                    cmd = self.party_cmd(mesh_mod.COORDINATOR, cmd, slot=slot, pass_fds=fds)
                return self._spawn(key, cmd, pass_fds=fds)
            relay = mesh_mod.RELAY_PORT if self.tls else free_ports(1)[0]
            self.relays[self.name] = (slot, relay)
            coord = serve + ["--relay-port", str(relay), "--relay-only"]
            endpoint = worker_cmd("endpoint", "--relay", f"127.0.0.1:{relay}", "--name", self.name,
                                  "--port", str(port), "--host", "127.0.0.1", *listen, *ep_extra)
            if self.tls:
                coord = self.party_cmd(mesh_mod.COORDINATOR, coord, slot=slot)
                endpoint = self.party_cmd(mesh_mod.ENDPOINT, endpoint, slot=slot, pass_fds=fds)
            c = self._spawn(ckey, coord)
            e = self._spawn(key, endpoint, pass_fds=fds)
            threading.Thread(target=_stop_with, args=(c, e), daemon=True).start()
            return e
        finally:
            if sock is not None:
                sock.close()

    def kill(self, key: str, sig: int = signal.SIGKILL) -> None:
        """Signal one process and wait for it; `serve-<model>` takes its coordinator along (split mode)."""
        keys = [key] + ([f"coordinator-{key[len('serve-'):]}"] if key.startswith("serve-") else [])
        procs = [p for k in keys if (p := self.procs.get(k)) is not None and p.poll() is None]
        for p in procs:
            p.send_signal(sig)
        for p in procs:
            p.wait(timeout=150)

    def stop(self) -> None:
        for key in sorted(self.procs, key=lambda k: not k.startswith("serve")):  # coordinators first
            p = self.procs.get(key)
            if p is not None and p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 15
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


def new_stack(state: str, name: str, tls: bool = True) -> Stack:
    """Three players' config. TLS on: fixed ports (each party has a namespace of its own)."""
    if tls:
        return Stack(os.path.abspath(state), name, Config.loopback(list(TF_PORTS), list(HTTP_PORTS)), tls=True)
    return Stack(os.path.abspath(state), name, Config.loopback(free_ports(3), free_ports(3)), tls=False)


_PKI_LOCK = threading.Lock()
ENDPOINT_FLAGS = ("--token-file", "--http-threads", "--max-connections", "--idle-timeout", "--max-body-bytes")


def _split_args(extra: list[str]) -> tuple[list[str], list[str]]:
    """serve's flags, split into the endpoint's (client-facing HTTP, token) and the coordinator's."""
    ep: list[str] = []
    co: list[str] = []
    it = iter(extra)
    for a in it:
        flag = a.split("=", 1)[0]
        if flag in ENDPOINT_FLAGS:
            ep.append(a)
            if "=" not in a:
                ep.append(next(it))
        else:
            co.append(a)
    return ep, co


def _stop_with(coordinator: subprocess.Popen, endpoint: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """Locally, a model's endpoint and coordinator end together (e.g. after --max-requests)."""
    while coordinator.poll() is None and endpoint.poll() is None:
        time.sleep(0.2)
    for p in (endpoint, coordinator):
        if p.poll() is None:
            p.terminate()


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)


class _UnixTLSConnection(http.client.HTTPConnection):
    """HTTPS over a guard's Unix socket, with a client certificate, checking the server's identity."""

    def __init__(self, path: str, pki: dict[str, str], expect: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path, self.expect = path, expect
        self.ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki["ca"])
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.ctx.load_cert_chain(pki["cert"], pki["key"])

    def connect(self) -> None:
        raw = socket.socket(socket.AF_UNIX)
        raw.settimeout(self.timeout)
        raw.connect(self.path)
        self.sock = self.ctx.wrap_socket(raw, server_hostname=self.expect)


@contextlib.contextmanager
def running(stack: Stack) -> Iterator[Stack]:
    try:
        yield stack
    finally:
        stack.stop()


def inner(a: argparse.Namespace) -> int:
    """Runs inside the network namespace (or directly, when isolation is unavailable)."""
    if a.isolated:
        loopback_up()
    if a.insecure_no_tls:
        print("tfe-worker local: WARNING: --insecure-no-tls: the parties talk plain, unauthenticated TF gRPC and HTTP; "
              "any local process that reaches a TF port can run ops on every worker and read its keys and shares. "
              "For tests and benchmark comparisons only.", file=sys.stderr, flush=True)
    stack = new_stack(a.state, a.name, tls=not a.insecure_no_tls)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with running(stack):
        stack.start_players()
        rc = stack.share(a.model)
        if rc != 0:
            with open(stack.logs[f"share-{a.name}-g1"]) as f:
                tail = f.read().strip().splitlines()[-1:]
            print(f"tfe-worker local: share job failed: {tail[0] if tail else rc}", file=sys.stderr)
            return rc
        extra = ["--max-batch-size", str(a.max_batch_size), "--max-wait-ms", str(a.max_wait_ms)]
        if a.max_requests:
            extra += ["--max-requests", str(a.max_requests)]
        pins_path = os.path.join(stack.state, "pins.json")
        stack.pins(a.name).save(pins_path)  # before the endpoint is up: whoever waits for it finds the pins
        serve = stack.start_serve(a.port, extra, listen_fd=a.listen_fd)
        print(f"tfe-worker local: model {a.name} shared; coordinator starting on http://127.0.0.1:{a.port} "
              f"(logs in {stack.state}/logs)", flush=True)
        print(f"tfe-worker local: the workers' public keys are pinned in {pins_path} (read from the workers, "
              f"not the endpoint): tfe-client predict --endpoint http://127.0.0.1:{a.port} --model {a.name} "
              f"--pins {pins_path} --input x.npy, or Client(url, pins={pins_path!r})", flush=True)
        while not stop.is_set():
            if serve.poll() is not None:
                return serve.returncode or 0
            if any(stack.procs[n].poll() is not None for n in PLAYER_NAMES):
                print("tfe-worker local: a player exited; stopping", file=sys.stderr)
                return 1
            stop.wait(0.5)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tfe-worker local", description="three local players + share + serve")
    p.add_argument("--model", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--state", default=".state/local")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-requests", type=int, default=None)
    p.add_argument("--no-isolation", action="store_true", help="do not use a private network namespace")
    p.add_argument("--insecure-no-tls", action="store_true",
                   help="INSECURE: no mutual TLS between the parties (tests and benchmark comparisons only)")
    p.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--isolated", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.model = os.path.abspath(a.model)
    if a.isolated or a.no_isolation:
        return inner(a)
    iso = isolation_cmd()
    if iso is None:
        log.warning("no private network namespace available: TF gRPC ports listen on all interfaces")
        return inner(a)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", a.port))
    sock.listen(128)
    fd = sock.fileno()
    os.set_inheritable(fd, True)
    args = [x for x in (argv if argv is not None else sys.argv[2:])]
    cmd = iso + worker_cmd("local", *args, "--isolated", "--listen-fd", str(fd))
    child = subprocess.Popen(cmd, pass_fds=(fd,))
    sock.close()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, _f: child.send_signal(s))
    return child.wait()
