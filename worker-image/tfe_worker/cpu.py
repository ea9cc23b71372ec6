"""CPU time of a local stack's processes by role, read from /proc (Linux).

The benchmark takes a snapshot before and after its batch-1 loop and reports milliseconds of CPU
per request for each role: on a machine with fewer cores than busy processes the stack is
CPU-bound, and what mutual TLS costs in latency is what it costs in CPU (docs in the README's
Performance section).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

ROLES = ("players", "coordinator", "endpoint", "guards", "client", "share", "other")
_CLI_ROLES = {"player": "players", "serve": "coordinator", "endpoint": "endpoint", "share": "share"}


def role(argv: Sequence[str]) -> str:
    """The role of a process of the stack, from its command line."""
    if not argv:
        return "other"
    if os.path.basename(argv[0]) == "tfe-guard":
        return "guards"
    if "tfe_worker.cli" in argv:
        i = argv.index("tfe_worker.cli")
        if i + 1 < len(argv):
            return _CLI_ROLES.get(argv[i + 1], "other")
    return "other"


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after "pid (comm)" (comm may hold spaces): index 0 is the
    state, 1 the parent pid, 11/12 user/system ticks, 19 the start time in ticks after boot.
    None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of user + system) of a live process, None if it is gone."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def descendants(root: int) -> dict[int, float]:
    """CPU seconds of every live process below `root` (not root itself)."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                parent[int(name)], cpu[int(name)] = st
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[int, float] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out[pid] = cpu[pid]
        todo.extend(children.get(pid, []))
    return out


def snapshot(root: int | None = None) -> dict[int, tuple[str, float]]:
    """Role and CPU seconds of each process below `root` (default: this process), and of
    `root` itself as the "client" (the benchmark's own process sends the requests)."""
    root = os.getpid() if root is None else root
    out = {pid: (role(_argv(pid)), s) for pid, s in descendants(root).items()}
    st = _stat(root)
    if st is not None:
        out[root] = ("client", st[1])
    return out


def per_request_ms(before: Mapping[int, tuple[str, float]], after: Mapping[int, tuple[str, float]],
                   n: int) -> dict[str, float]:
    """CPU milliseconds per request by role between two snapshots of the same processes (a
    process that started in between counts from zero, one that ended is left out)."""
    out = dict.fromkeys(ROLES, 0.0)
    for pid, (r, s) in after.items():
        out[r] += s - before.get(pid, (r, 0.0))[1]
    return {r: round(1000.0 * v / n, 2) for r, v in out.items() if v > 0 or r in ROLES[:5]}
