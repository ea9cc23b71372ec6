"""maxRequests across coordinator restarts: the count of successful predictions lives on the three
workers' disks, so a new coordinator (a replaced serve pod) serves only what is left of the limit."""

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import http_json

from tfe_client import mesh, wire
from tfe_client.errors import RemoteError


def status(deployment):
    code, body = http_json(deployment.port, "GET", "/v1/status")
    assert code == 200, body
    return wire.Status.parse(body)


def worker_counts(deployment, scope):
    out = []
    for i in range(3):
        code, body = deployment.stack.worker_get(i, "/v1/models/digits/served")  # as the operator
        assert code == 200, body
        out.append(wire.ServedCounts.parse(body).served(scope))
    return out


def test_max_requests_holds_across_coordinator_restarts(deployment, data):
    _, x_te, _, _ = data
    deployment.stack.kill("serve-digits", signal.SIGTERM)
    deployment.start_serve("--max-requests", "3", "--linger-after-limit")
    client = deployment.client()
    for k in range(2):
        assert client.predict("digits", x_te[k:k + 1]).shape == (1, 10)
    st = status(deployment)
    assert (st.requests_served, st.max_requests, st.limit_reached) == (2, 3, False)
    assert worker_counts(deployment, "maxRequests=3") == [2, 2, 2]

    # a crash, not a drain: every answered prediction was already on the workers' disks
    deployment.stack.kill("serve-digits", signal.SIGKILL)
    deployment.start_serve("--max-requests", "3", "--linger-after-limit")
    st = status(deployment)
    assert (st.requests_served, st.limit_reached) == (2, False)
    client = deployment.client()
    assert client.predict("digits", x_te[2:3]).shape == (1, 10)  # only one more
    with pytest.raises(RemoteError) as e:
        client.predict("digits", x_te[3:4])
    assert e.value.status == 503 and e.value.code == "limit_reached"
    st = status(deployment)
    assert (st.requests_served, st.limit_reached) == (3, True)
    assert worker_counts(deployment, "maxRequests=3") == [3, 3, 3]

    # a third coordinator starts at its limit: it serves nothing and stops (no --linger-after-limit)
    deployment.stack.kill("serve-digits", signal.SIGTERM)
    t0 = time.monotonic()
    proc = deployment.stack.start_serve(deployment.port, ["--max-batch-size", "8", "--buckets", "1,8",
                                                          "--max-requests", "3"])
    assert proc.wait(timeout=300) == 0
    assert time.monotonic() - t0 < 300
    assert "3 successful prediction(s) recorded in count scope maxRequests=3" in deployment.logs_text()
    assert worker_counts(deployment, "maxRequests=3") == [3, 3, 3]


def test_concurrent_requests_never_exceed_the_limit_and_the_count_survives(deployment, data):
    _, x_te, _, _ = data
    if deployment.serve.poll() is None:
        deployment.stack.kill("serve-digits", signal.SIGTERM)
    deployment.start_serve("--max-requests", "5", "--linger-after-limit")  # another limit: a count of its own
    assert status(deployment).requests_served == 0
    client = deployment.client()

    def one(k):
        try:
            client.predict("digits", x_te[k:k + 1])
            return 200
        except RemoteError as e:
            assert e.code == "limit_reached", e
            return e.status

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(one, range(8)))
    assert sorted(results) == [200] * 5 + [503] * 3
    assert status(deployment).requests_served == 5
    deployment.stack.kill("serve-digits", signal.SIGTERM)
    deployment.start_serve("--max-requests", "6", "--linger-after-limit")  # a changed limit counts anew
    assert status(deployment).requests_served == 0
    assert worker_counts(deployment, "maxRequests=5") == [5, 5, 5]


def test_workers_refuse_malformed_served_reports_and_keep_their_counts(deployment):
    """Straight to a worker as the coordinator: a malformed report is a 400 and changes nothing; the
    operator may read the counts but not write them."""
    before = worker_counts(deployment, "maxRequests=3")

    def post(i, body, identity=mesh.COORDINATOR, model="digits"):
        return deployment.stack.call(f"server{i}", "POST", f"/v1/models/{model}/served", body, identity=identity)

    good = wire.ServedReport("maxRequests=3", "ab" * 8, 0, 0).to_json()
    for bad in ({**good, "add": -1}, {**good, "add": True}, {**good, "scope": "../x"}, {**good, "reportId": "x"},
                {**good, "total": 1 << 63}, {"scope": "maxRequests=3"}, [], "x"):
        status, body = post(0, bad)
        assert status == 400 and body["error"]["code"] == "bad_batch", (bad, status, body)
    status, body = post(1, good, model="no-such-model")
    assert status == 404, body
    status, body = post(2, good)
    assert status == 200 and wire.ServedAck.parse(body).served == before[2]  # add 0: a read
    if deployment.stack.tls:  # the guard admits only GETs from the operator
        assert post(0, {**good, "add": 100, "total": 100}, identity=mesh.OPERATOR)[0] == 403
    assert worker_counts(deployment, "maxRequests=3") == before
