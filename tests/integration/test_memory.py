"""Memory that stays bounded: a player's resident memory across coordinator reconnects.

Every process that joins the players leaves an eager context on each of them (its graphs,
kernels, variables: about 25 MB per player for the digits MLP with two buckets). Released code
kept a dead coordinator's context for TF's default 600 s, so every coordinator restart within
ten minutes grew every player for good (measured: 424 -> 602 MB over six restarts, linear).
Coordinators now ask for a short keep-alive (runtime.CONTEXT_KEEP_ALIVE_S, here shortened by
$TFE_CONTEXT_KEEP_ALIVE_S so that a context is gone before the next coordinator is up).
"""

import os
import signal

from conftest import wait_http_ready

from tfe_worker.local import free_ports

RESTARTS = 10
KEEP_ALIVE_S = "4"  # each coordinator takes far longer than this to start and warm up


def descendants(pid):
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except FileNotFoundError:
            continue
        for k in kids:
            out += [k, *descendants(k)]
    return out


def player_pid(stack, name):
    """The player process itself (with TLS on, procs[name] is its party wrapper beside a guard)."""
    root = stack.procs[name].pid
    for pid in [root, *descendants(root)]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except FileNotFoundError:
            continue
        if b"player" in argv and name.encode() in argv and b"tfe_worker.party" not in argv:
            return pid
    raise AssertionError(f"no player process under {name} ({root})")


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def restart_coordinator(deployment, sig, data):
    deployment.stack.kill("serve-digits", sig)
    deployment.port = free_ports(1)[0]
    deployment.serve = deployment.stack.start_serve(deployment.port, ["--max-batch-size", "8", "--buckets", "1,8"])
    wait_http_ready(deployment.port, deployment.serve)
    _, x_te, _, _ = data
    assert deployment.client().predict("digits", x_te[:3]).shape == (3, 10)  # every bucket's graph ran


def test_ten_coordinator_reconnects_grow_a_player_by_at_most_ten_percent(deployment, data, monkeypatch):
    monkeypatch.setenv("TFE_CONTEXT_KEEP_ALIVE_S", KEEP_ALIVE_S)  # inherited by the coordinators started here
    pids = [player_pid(deployment.stack, n) for n in ("server0", "server1", "server2")]
    restart_coordinator(deployment, signal.SIGTERM, data)  # warm-up reconnect
    base = [rss_mb(p) for p in pids]
    seen = []
    for k in range(RESTARTS):
        restart_coordinator(deployment, signal.SIGKILL if k % 2 else signal.SIGTERM, data)  # crashes and drains
        seen.append([round(rss_mb(p)) for p in pids])
    after = [rss_mb(p) for p in pids]
    assert [p for p in pids] == [player_pid(deployment.stack, n) for n in ("server0", "server1", "server2")]
    for name, b, a in zip(("server0", "server1", "server2"), base, after):
        assert a <= 1.10 * b, f"{name}: {b:.0f} MB after the warm-up reconnect, {a:.0f} MB after {RESTARTS} more; " \
                              f"per reconnect: {seen}"
