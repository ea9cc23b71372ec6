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
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from tfe_worker.config import PLAYER_NAMES, Config
from tfe_worker.workers import wait_ready

log = logging.getLogger("tfe_worker.local")


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
        """A fresh coordinator address: each coordinator process binds its own TF port."""
        return f"127.0.0.1:{free_ports(1)[0]}"

    def config_path(self) -> str:
        return os.path.join(self.state, "tfe.json")

    def start_player(self, i: int) -> subprocess.Popen:  # type: ignore[type-arg]
        name = PLAYER_NAMES[i]
        return self._spawn(name, worker_cmd("player", name, "--config", self.config_path(),
                                            "--state", os.path.join(self.state, name),
                                            "--spool", os.path.join(self.state, "spool", name),
                                            "--http-bind", "127.0.0.1"))

    def start_players(self, ready_timeout: float = 120.0) -> None:
        os.makedirs(self.state, exist_ok=True)
        with open(self.config_path(), "w") as f:
            f.write(self.config.to_json())
        for i in range(3):
            self.start_player(i)
        wait_ready(self.config, ready_timeout)

    def share(self, model: str, generation: int = 1, sha256: str | None = None) -> int:
        cmd = worker_cmd("share", "--config", self.config_path(), "--model", model, "--name", self.name,
                         "--generation", str(generation), "--coordinator-address", self.coordinator(),
                         "--termination-log", os.path.join(self.state, "share.termination-log"))
        if sha256:
            cmd += ["--sha256", sha256]
        p = self._spawn(f"share-{self.name}-g{generation}", cmd)
        return p.wait()

    def start_serve(self, port: int, extra: list[str], listen_fd: int | None = None) -> subprocess.Popen:  # type: ignore[type-arg]
        cmd = worker_cmd("serve", "--config", self.config_path(), "--name", self.name, "--port", str(port),
                         "--host", "127.0.0.1", "--coordinator-address", self.coordinator(), *extra)
        fds: tuple = ()
        if listen_fd is not None:
            cmd += ["--listen-fd", str(listen_fd)]
            fds = (listen_fd,)
        return self._spawn(f"serve-{self.name}", cmd, pass_fds=fds)

    def kill(self, key: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs.get(key)
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            p.wait(timeout=30)

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


def new_stack(state: str, name: str) -> Stack:
    tf_ports = free_ports(3)
    http_ports = free_ports(3)
    return Stack(os.path.abspath(state), name, Config.loopback(tf_ports, http_ports))


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
    stack = new_stack(a.state, a.name)
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
        serve = stack.start_serve(a.port, extra, listen_fd=a.listen_fd)
        print(f"tfe-worker local: model {a.name} shared; coordinator starting on http://127.0.0.1:{a.port} "
              f"(logs in {stack.state}/logs)", flush=True)
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
