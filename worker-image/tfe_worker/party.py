"""python -m tfe_worker.party --guard CONFIG [--isolate] -- CMD...: one party of the local mesh.

Runs CMD (a player, share job, coordinator or endpoint) next to its tfe-guard. With
--isolate (what `tfe-worker local` does) both run in a network namespace of their own, so
the raw TF and HTTP ports of CMD are reachable only from inside it: every other party
reaches them through the guard's Unix sockets, over mutual TLS, as the identity of its
certificate. The guard and CMD die with this process (SIGTERM/SIGINT are passed to CMD).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from tfe_worker.local import loopback_up

PR_SET_PDEATHSIG = 1
CLONE_NEWNET = 0x40000000


def _unshare_net() -> None:
    """A new network namespace for this process (needs CAP_SYS_ADMIN in its user namespace:
    root, or inside the `unshare -rn` namespace `tfe-worker local` runs in)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def guard_binary() -> str:
    """$TFE_GUARD, tfe-guard on PATH, or build/tfe-guard of this checkout."""
    env = os.environ.get("TFE_GUARD")
    if env:
        return env
    found = shutil.which("tfe-guard")
    if found:
        return found
    here = os.path.dirname(os.path.abspath(__file__))
    built = os.path.join(here, "..", "..", "build", "tfe-guard")
    if os.path.exists(built):
        return os.path.abspath(built)
    raise FileNotFoundError("tfe-guard not found: run `make guard` or set TFE_GUARD")


def _listening(addr: str) -> bool:
    kind, _, rest = addr.partition(":")
    try:
        if kind == "unix":
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(0.5)
                s.connect(rest)
        else:
            host, _, port = rest.rpartition(":")
            with socket.create_connection((host if host != "0.0.0.0" else "127.0.0.1", int(port)), timeout=0.5):
                pass
        return True
    except OSError:
        return False


def wait_listening(cfg: dict[str, Any], proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    addrs = [i["listen"] for i in cfg["inbound"]] + [f"tcp:{o['listen']}" for o in cfg["outbound"]]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tfe-guard exited with code {proc.returncode}")
        if all(_listening(a) for a in addrs):
            return
        time.sleep(0.05)
    raise TimeoutError(f"tfe-guard not listening after {timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tfe_worker.party")
    p.add_argument("--guard", required=True, help="tfe-guard config (JSON)")
    p.add_argument("--isolate", action="store_true", help="enter a new network namespace first")
    p.add_argument("--pass-fd", type=int, action="append", default=[], help="an inherited fd CMD keeps")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        p.error("no command given")
    if a.isolate:
        _unshare_net()
    with open(a.guard) as f:
        cfg = json.load(f)
    loopback_up()
    # One Go thread runs the guard's goroutines unless GOMAXPROCS says otherwise: every party and
    # guard share this machine's cores, and hand-offs between Go threads cost the guard 15-20% more
    # CPU per request (README, Performance).
    env = {**os.environ, "GOMAXPROCS": os.environ.get("GOMAXPROCS", "1")}
    guard = subprocess.Popen([guard_binary(), "--config", a.guard], env=env,
                             preexec_fn=_die_with_parent)  # noqa: PLW1509 - single-threaded here
    try:
        wait_listening(cfg, guard)
        child = subprocess.Popen(cmd, preexec_fn=_die_with_parent,  # noqa: PLW1509
                                 pass_fds=tuple(a.pass_fd))
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, _f: child.send_signal(s))
        return child.wait()
    finally:
        if guard.poll() is None:
            guard.terminate()
            try:
                guard.wait(timeout=5)
            except subprocess.TimeoutExpired:
                guard.kill()


if __name__ == "__main__":
    sys.exit(main())
