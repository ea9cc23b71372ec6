"""tfe_worker.cpu: roles from command lines, and CPU read from /proc for real processes."""

from __future__ import annotations

import subprocess
import sys
import threading

from tfe_worker import cpu


def test_roles_from_command_lines() -> None:
    py = "/usr/bin/python3"
    assert cpu.role([py, "-m", "tfe_worker.cli", "player", "server1", "--config", "c"]) == "players"
    assert cpu.role([py, "-m", "tfe_worker.cli", "serve", "--config", "c"]) == "coordinator"
    assert cpu.role([py, "-m", "tfe_worker.cli", "endpoint", "--relay", "x"]) == "endpoint"
    assert cpu.role([py, "-m", "tfe_worker.cli", "share", "m.h5"]) == "share"
    assert cpu.role(["/work/build/tfe-guard", "--config", "g.json"]) == "guards"
    assert cpu.role([py, "-m", "tfe_worker.party", "--guard", "g.json", "--", py]) == "other"
    assert cpu.role([py, "-m", "tfe_worker.cli"]) == "other"
    assert cpu.role([]) == "other"


def test_cpu_of_a_child_by_role() -> None:
    # A real child that burns CPU under a command line that reads as a player's.
    code = "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nsys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", code, "tfe_worker.cli", "player"], stdin=subprocess.PIPE)
    try:
        before = {child.pid: ("players", 0.0)}
        after: dict[int, tuple[str, float]] = {}
        tick = threading.Event()
        for _ in range(600):  # up to a minute, until /proc says the child used its 0.3 s
            after = cpu.snapshot()
            if after.get(child.pid, ("", 0.0))[1] >= 0.3:
                break
            tick.wait(0.1)
        assert after[child.pid][0] == "players"
        ms = cpu.per_request_ms(before, after, 3)
        assert ms["players"] >= 100.0  # >= 0.3 s over 3 requests
        assert "client" in ms and set(ms) <= set(cpu.ROLES)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
