"""Default memory of the worker and coordinator containers (issue 8 item 5; docs/operator.md, Memory)."""

from __future__ import annotations

from typing import Any

import pytest
from operator_testlib import make_ctx

from tfe_operator import builders
from tfe_operator.builders import COORDINATOR_MEMORY, WORKER_MEMORY, with_memory


def _mib(q: str) -> int:
    assert q.endswith(("Mi", "Gi")), q
    return int(q[:-2]) * (1024 if q.endswith("Gi") else 1)


def test_defaults_cover_the_measured_peaks_with_margin() -> None:
    # measured peak RSS (docs/operator.md, "Memory"): a player 585 MiB, the coordinator 883 MiB
    # (1288 MiB after an in-process reconnect: within the limit), the share Job 427 MiB
    assert _mib(WORKER_MEMORY["requests"]) >= 585 * 1.25
    assert _mib(COORDINATOR_MEMORY["requests"]) >= 883 * 1.25
    assert _mib(COORDINATOR_MEMORY["limits"]) >= 1288 * 2
    for d in (WORKER_MEMORY, COORDINATOR_MEMORY):
        assert _mib(d["limits"]) >= 2 * _mib(d["requests"])


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ({}, {"requests": {"memory": "R"}, "limits": {"memory": "L"}}),
        (
            {"limits": {"nvidia.com/gpu": 1}},
            {"requests": {"memory": "R"}, "limits": {"nvidia.com/gpu": 1, "memory": "L"}},
        ),
        ({"requests": {"cpu": "1"}}, {"requests": {"cpu": "1", "memory": "R"}, "limits": {"memory": "L"}}),
        # a memory of the spec's own is kept as it is (Kubernetes makes the missing request = the limit)
        ({"limits": {"memory": "8Gi"}}, {"limits": {"memory": "8Gi"}}),
        ({"requests": {"memory": "3Gi"}}, {"requests": {"memory": "3Gi"}}),
    ],
)
def test_with_memory(spec: dict[str, Any], want: dict[str, Any]) -> None:
    before = repr(spec)
    assert with_memory(spec, {"requests": "R", "limits": "L"}) == want
    assert repr(spec) == before  # the spec is not modified


def test_every_party_with_tf_gets_the_defaults() -> None:
    ctx = make_ctx()
    sts = builders.worker_statefulset(ctx)
    worker = next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "player")
    assert worker["resources"] == {"requests": {"memory": WORKER_MEMORY["requests"]},
                                   "limits": {"memory": WORKER_MEMORY["limits"]}}
    coord = {"requests": {"memory": COORDINATOR_MEMORY["requests"]}, "limits": {"memory": COORDINATOR_MEMORY["limits"]}}
    job = builders.share_job(ctx, 1)
    assert next(c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == "share")["resources"] == coord
    dep = builders.serve_deployment(ctx, 1)
    assert next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "serve")["resources"] == coord
