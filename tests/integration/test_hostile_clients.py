"""A data plane no request can hurt (issue 8): hostile and careless clients against the real stack.

Every malformed predict request gets a 4xx at the endpoint, the coordinator never reconnects
because of one, and honest requests sent at the same time all succeed. Workers refuse
malformed coordinator messages with 4xx, never 500. Idle and slow connections cost no thread.
SIGTERM drains: every admitted request gets its answer.
"""

import base64
import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import http_json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfe_client import Client, mesh, wire
from tfe_client.client import seal_request
from tfe_client.fixedpoint import DEFAULT

PREDICT = "/v1/models/digits:predict"
DELETE = object()


def as_coordinator(deployment, i, method, path, body=None, timeout=30.0):
    """A worker's HTTP side, called as the coordinator would (through its guard, as `coordinator`)."""
    return deployment.stack.call(f"server{i}", method, path, body, identity=mesh.COORDINATOR, timeout=timeout)


def reconnects(deployment):
    text = deployment.coordinator_metrics()
    return float(re.search(r"^tfe_serve_reconnects_total ([0-9.e+]+)$", text, re.MULTILINE).group(1))


def fresh_body(info, x):
    req, _ = seal_request("digits", list(info.worker_keys), DEFAULT.encode(x))
    return req.to_json()


class Honest:
    """Honest clients predicting in a loop while the test does something hostile."""

    def __init__(self, url, x, threads=2, pins=None):
        self.url, self.x, self.pins = url, x, pins
        self.stop = threading.Event()
        self.ok = 0
        self.errors = []
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self):
        c = Client(self.url, timeout=120, pins=self.pins)
        while not self.stop.is_set():
            try:
                assert c.predict("digits", self.x).shape == (1, 10)
                self.ok += 1
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.errors.append(repr(e))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=180)


@pytest.fixture(scope="module")
def info(deployment):
    return deployment.client().model_info("digits")


def test_low_order_ephemeral_key_is_a_400_and_no_worker_failure(deployment, info, data):
    """Released code: workers answered 500 (X25519 raised ValueError), the coordinator reconnected
    (31-43 s) and retried the request three times. Now: refused at the endpoint, and by each worker."""
    _, x_te, _, _ = data
    before = reconnects(deployment)
    for point in wire.LOW_ORDER_POINTS[:7]:
        body = fresh_body(info, x_te[:1])
        body["ephemeralKey"] = base64.b64encode(point).decode()
        status, payload = http_json(deployment.port, "POST", PREDICT, body, timeout=30)
        assert (status, payload["error"]["code"]) == (400, "bad_request"), payload
        assert "low-order" in payload["error"]["message"]
    assert reconnects(deployment) == before
    assert deployment.client().predict("digits", x_te[:1]).shape == (1, 10)


def test_worker_refuses_a_low_order_key_for_that_item_alone(deployment, info, data):
    """Straight to a worker (as a coordinator would): the item fails alone, with a 200 ack."""
    _, x_te, _, _ = data
    good = wire.PredictRequest.parse(fresh_body(info, x_te[:1]), (64,), 8)
    bad = wire.PredictRequest.parse(fresh_body(info, x_te[1:2]), (64,), 8)
    items = [wire.IngressItem(r.request_id, r.shape, k, r.bundles[0].sealed)
             for r, k in ((good, good.ephemeral_key), (bad, wire.LOW_ORDER_POINTS[2]))]
    msg = wire.IngressRequest("ab" * 8, "digits", 1, 2, (64,), tuple(items))
    status, ack = as_coordinator(deployment, 0, "POST", "/v1/ingress", msg.to_json())
    assert status == 200, ack
    ack = wire.IngressAck.parse(ack)
    assert ack.accepted == (0,) and [(f.index, f.code) for f in ack.failed] == [(1, "bad_request")]
    assert as_coordinator(deployment, 0, "DELETE", f"/v1/batches/{'ab' * 8}")[0] == 200


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8)
PATHS = ([["requestId"], ["shape"], ["shape", 0], ["shape", 1], ["ephemeralKey"], ["bundles"]]
         + [["bundles", i] for i in range(3)]
         + [["bundles", i, f] for i in range(3) for f in ("worker", "nonce", "ciphertext")])


def _set(body, path, value):
    cur = body
    for p in path[:-1]:
        cur = cur[p]
    if value is DELETE:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value


def _b64_edit(s, how, k):
    raw = bytearray(base64.b64decode(s))
    if how == "flip":
        raw[k % len(raw)] ^= 1 << (k % 8)
    elif how == "truncate":
        raw = raw[: k % len(raw)]
    elif how == "extend":
        raw += bytes(1 + k % 40)
    return base64.b64encode(bytes(raw)).decode()


MUTATION = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(PATHS), JSON),
    st.tuples(st.just("delete"), st.sampled_from(PATHS), st.none()),
    st.tuples(st.just("bytes"), st.sampled_from([["ephemeralKey"]] + [["bundles", i, f] for i in range(3)
                                                                        for f in ("nonce", "ciphertext")]),
              st.tuples(st.sampled_from(["flip", "truncate", "extend"]), st.integers(0, 10 ** 6))),
    st.tuples(st.just("low-order"), st.just(["ephemeralKey"]), st.sampled_from(wire.LOW_ORDER_POINTS)),
    st.tuples(st.just("rows"), st.just(["shape", 0]), st.sampled_from([0, -1, 9, 2 ** 31, 2 ** 64, True, 1.0])),
    st.tuples(st.just("whole"), st.just([]), JSON),
)


def _mutate(body, mutation):
    kind, path, arg = mutation
    out = copy.deepcopy(body)
    if kind == "whole":
        return arg
    try:
        if kind == "set" or kind == "rows":
            _set(out, path, arg)
        elif kind == "delete":
            _set(out, path, DELETE)
        elif kind == "low-order":
            _set(out, path, base64.b64encode(arg).decode())
        elif kind == "bytes":
            cur = out
            for p in path[:-1]:
                cur = cur[p]
            cur[path[-1]] = _b64_edit(cur[path[-1]], *arg)
    except (KeyError, IndexError, TypeError):
        pass
    return out


def test_fuzzed_predict_requests_get_4xx_without_reconnects_while_honest_ones_succeed(deployment, info, data):
    _, x_te, _, _ = data
    before = reconnects(deployment)
    seen = {}

    @settings(max_examples=int(os.environ.get("TFE_FUZZ_EXAMPLES", "150")), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutation=MUTATION)
    def one(mutation):
        body = fresh_body(info, x_te[:1])
        bad = _mutate(body, mutation)
        raw = json.dumps(bad).encode()
        status, payload = http_json(deployment.port, "POST", PREDICT, raw=raw, timeout=60)
        if raw == json.dumps(body).encode():  # (not bad == body: True == 1 in Python, not on this wire)
            assert status == 200
            return
        assert 400 <= status < 500, (mutation[0], mutation[1], status, payload)
        code = payload["error"]["code"]
        assert code in wire.ERRORS and wire.ERRORS[code][0] == status
        seen[code] = seen.get(code, 0) + 1

    with Honest(deployment.url, x_te[:1], pins=deployment.pins) as honest:
        one()
    assert not honest.errors, honest.errors[:3]
    assert honest.ok > 0
    assert reconnects(deployment) == before
    assert seen.get("bad_request", 0) > 0, seen


INGRESS_PATHS = ([["batchId"], ["model"], ["generation"], ["bucket"], ["featureShape"], ["items"], ["items", 0]]
                 + [["items", 0, f] for f in ("requestId", "shape", "ephemeralKey", "nonce", "ciphertext")])


def test_fuzzed_coordinator_messages_get_4xx_from_the_workers(deployment, info, data):
    """The workers trust nothing the coordinator says beyond their own manifest: every malformed
    ingress/egress body is a 4xx (an item it cannot open: a 200 ack that lists it), never a 500."""
    _, x_te, _, _ = data
    before = reconnects(deployment)
    req = wire.PredictRequest.parse(fresh_body(info, x_te[:1]), (64,), 8)
    item = wire.IngressItem(req.request_id, req.shape, req.ephemeral_key, req.bundles[1].sealed)
    base = wire.IngressRequest("cd" * 8, "digits", 1, 1, (64,), (item,)).to_json()

    @settings(max_examples=int(os.environ.get("TFE_FUZZ_EXAMPLES", "150")), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(INGRESS_PATHS), value=JSON | st.sampled_from([4097, 10 ** 9, [64, 64], [1]]),
           egress=st.booleans())
    def one(path, value, egress):
        body = copy.deepcopy(base)
        _set(body, path, value)
        status, payload = as_coordinator(deployment, 1, "POST", "/v1/ingress", body, timeout=60)
        assert status < 500, (path, value, payload)
        if status == 200:
            ack = wire.IngressAck.parse(payload)
            as_coordinator(deployment, 1, "DELETE", f"/v1/batches/{ack.batch_id}")
        if egress:
            e = {"batchId": value, "outputShape": [10]} if path == ["batchId"] else {"batchId": "ee" * 8,
                                                                                     "outputShape": value}
            assert as_coordinator(deployment, 1, "POST", "/v1/egress", e)[0] in (400, 404)

    with Honest(deployment.url, x_te[:1], threads=1, pins=deployment.pins) as honest:
        one()
    assert not honest.errors, honest.errors[:3]
    assert reconnects(deployment) == before
    for path in ("/v1/models/..%2f/generations", "/v1/models/digits/99999999999/manifest",
                 "/v1/models/digits/7/manifest", "/v1/batches/zz"):
        assert 400 <= as_coordinator(deployment, 1, "GET" if "models" in path else "DELETE", path)[0] < 500


def test_hundreds_of_idle_and_slow_connections_do_not_delay_an_honest_prediction(deployment, data):
    _, x_te, _, _ = data
    held = []
    try:
        for i in range(300):
            s = socket.create_connection(("127.0.0.1", deployment.port), timeout=10)
            if i % 3 == 1:  # headers that never end
                s.sendall(b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nContent-Type: applic")
            elif i % 3 == 2:  # a body that never comes
                s.sendall(b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100000\r\n\r\n{\"requestId\": ")
            held.append(s)
        result = {}

        def honest():
            try:
                result["y"] = deployment.client(timeout=60).predict("digits", x_te[:2])
            except Exception as e:  # noqa: BLE001
                result["err"] = e

        t = threading.Thread(target=honest)
        t.start()
        t.join(timeout=60)  # generous: it takes well under a second on an idle stack
        assert not t.is_alive(), "an honest prediction waited behind idle connections"
        assert "err" not in result, result.get("err")
        assert result["y"].shape == (2, 10)
    finally:
        for s in held:
            s.close()


def test_sigterm_during_load_answers_every_admitted_request(deployment, info, data):
    _, x_te, _, _ = data
    outcomes = []
    lock = threading.Lock()
    started = threading.Event()

    def client(k):
        while True:
            body = fresh_body(info, x_te[k:k + 1])
            try:
                status, payload = http_json(deployment.port, "POST", PREDICT, body, timeout=120)
                res = status if status == 200 else (status, payload["error"]["code"])
            except ConnectionRefusedError:
                res = "refused"
            except OSError as e:
                res = type(e).__name__
            with lock:
                outcomes.append(res)
            started.set()
            if res == "refused":
                return

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(12)]
    for t in threads:
        t.start()
    assert started.wait(60)
    time.sleep(1.0)
    deployment.serve.send_signal(signal.SIGTERM)
    assert deployment.serve.wait(timeout=150) == 0
    for t in threads:
        t.join(timeout=30)
    with open(deployment.stack.logs["serve-digits"]) as f:
        log = f.read()
    # the client-facing process drained: `serve` says so in one line, a split-off `endpoint` in another
    assert re.search(r"stopping: every admitted request answered|drained \(all answered\)", log), log[-2000:]
    allowed = {200, (503, "draining"), "refused", "ConnectionResetError", "RemoteDisconnected"}
    bad = [o for o in outcomes if o not in allowed]
    assert not bad, bad
    assert outcomes.count(200) >= 12
    deployment.start_serve()


def _tree(pid):
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for t in os.listdir(f"/proc/{p}/task"):
            with open(f"/proc/{p}/task/{t}/children") as f:
                todo += [int(c) for c in f.read().split()]
    return out


def test_endpoint_process_relays_to_the_coordinator_without_tf(deployment, data, models, tmp_path):
    """Issue 9 item 4: the client-facing `tfe-worker endpoint` (no TF, identity `endpoint`) relays to the
    coordinator's relay API (`serve --relay-only`); in its own network namespace it cannot even reach a
    TF port, and its identity is good for the coordinator's relay only."""
    _, x_te, _, _ = data
    stack = deployment.stack
    stack.kill("serve-digits", signal.SIGTERM)
    token = tmp_path / "token"
    token.write_text("relay-token\n")
    port = deployment.start_serve("--token-file", str(token))
    ep = deployment.serve
    url = f"http://127.0.0.1:{port}"
    y = deployment.client(url, token="relay-token").predict_proba("digits", x_te[:3])
    np.testing.assert_allclose(y, models["mlp_keras"].predict(x_te[:3], verbose=0), atol=2e-2)
    info = deployment.client(url, token="relay-token").model_info("digits")
    body = fresh_body(info, x_te[:1])
    body["ephemeralKey"] = base64.b64encode(wire.LOW_ORDER_POINTS[3]).decode()
    status, payload = http_json(port, "POST", PREDICT, body, headers={"Authorization": "Bearer relay-token"})
    assert (status, payload["error"]["code"]) == (400, "bad_request")
    assert http_json(port, "POST", PREDICT, fresh_body(info, x_te[:1]))[0] == 401
    for pid in _tree(ep.pid):
        with open(f"/proc/{pid}/maps") as f:
            assert "tensorflow" not in f.read(), "the endpoint process loaded TensorFlow"
    status, st_body = http_json(port, "GET", "/v1/status")
    assert status == 200 and wire.Status.parse(st_body).requests_served >= 1
    if stack.tls:
        # from inside the endpoint's network namespace: no TF port, no worker, only the relay
        probe = ("import socket,sys\nfor p in map(int, sys.argv[1:]):\n    s = socket.socket()\n"
                 "    print(p, s.connect_ex(('127.0.0.1', p)))\n")
        ports = [4440, 4441, 4442, 4450, 8081, 8082, 8083, 8090]
        out = subprocess.run(["nsenter", f"--net=/proc/{_tree(ep.pid)[-1]}/ns/net", sys.executable, "-c", probe,
                              *map(str, ports)], capture_output=True, text=True, timeout=30, check=True)
        reachable = {int(ln.split()[0]) for ln in out.stdout.splitlines() if ln.split()[1] == "0"}
        assert reachable == {8090}, out.stdout
        # and its certificate opens no worker: the worker's guard refuses the endpoint identity
        status, body = stack.call("server0", "GET", "/v1/public-key", identity=mesh.ENDPOINT)
        assert status == 403, body
    stack.kill("serve-digits", signal.SIGTERM)
    deployment.start_serve()


def test_cli_lists_the_endpoint_command():
    out = subprocess.run([sys.executable, "-m", "tfe_worker.cli", "--help"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert "endpoint --relay" in out.stdout
