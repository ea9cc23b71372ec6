"""End to end on one machine: share -> serve -> client over HTTP, with real TF Encrypted."""

import base64
import http.client
import json
import os
import signal
import threading
import time

import numpy as np
import pytest
from conftest import READY_TIMEOUT, http_json, wait_http_ready

from tfe_client import RemoteError, sharing, wire
from tfe_client.client import seal_request
from tfe_client.fixedpoint import DEFAULT
from tfe_worker.local import free_ports


def test_private_predictions_agree_with_plaintext(deployment, models, data):
    _, x_te, _, _ = data
    x = x_te[:60]
    client = deployment.client()
    single = np.stack([client.predict_proba("digits", row)[0] for row in x[:52]])
    batched = client.predict_proba("digits", x[52:60])
    priv = np.concatenate([single, batched])
    plain = models["mlp_keras"].predict(x, verbose=0)
    assert priv.shape == (60, 10)
    np.testing.assert_allclose(priv, plain, atol=2e-2)
    assert np.mean(priv.argmax(1) == plain.argmax(1)) >= 0.99
    info = client.model_info("digits")
    got = (info.input_shape, info.output_shape, info.postprocess, info.share_generation)
    assert got == ((64,), (10,), "softmax", 1)


def test_concurrent_clients_each_get_their_own_answer(deployment, models, data):
    _, x_te, _, _ = data
    plain = models["mlp_keras"].predict(x_te[:40], verbose=0)
    results, errors = {}, []

    def worker(k):
        try:
            c = deployment.client()
            for j in range(k, 40, 4):
                results[j] = c.predict_proba("digits", x_te[j:j + 1])[0]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    got = np.stack([results[j] for j in range(40)])
    np.testing.assert_allclose(got, plain, atol=2e-2)


def _raw_request(info, x, model="digits"):
    """A predict body built as the client builds it, so that tests can tamper with it."""
    req, sess = seal_request(model, list(info.worker_keys), DEFAULT.encode(x))
    return req.to_json(), sess, req.request_id


def _open(sess, rid, resp, shape, model="digits"):
    return [wire.pair_from_bytes(sess.open_response(i, wire.Bundle.parse(o, w, "out").sealed,
                                                    wire.aad("resp", model, rid, w, shape), w), shape, w)
            for i, (o, w) in enumerate(zip(resp["outputs"], wire.WORKERS))]


def test_masks_are_fresh_on_every_call(deployment, data):
    """The same request twice: the same reconstruction (up to ABY3's probabilistic truncation, a few
    units of 2^-16), different output shares.
    Stock ABY3 reuses its masks on every call of a compiled graph, so its output shares would be
    identical here (see test_stock_aby3_reuses_masks); FreshABY3 mixes a per-call counter in."""
    _, x_te, _, _ = data
    info = deployment.client().model_info("digits")
    body, sess, rid = _raw_request(info, x_te[:1])
    s1, r1 = http_json(deployment.port, "POST", "/v1/models/digits:predict", body)
    s2, r2 = http_json(deployment.port, "POST", "/v1/models/digits:predict", body)
    assert (s1, s2) == (200, 200)
    p1, p2 = _open(sess, rid, r1, (1, 10)), _open(sess, rid, r2, (1, 10))
    diff = sharing.reconstruct(p1) - sharing.reconstruct(p2)
    assert np.abs(diff).max() <= 8, "reconstructions differ beyond truncation error"
    for i in range(3):
        assert not np.array_equal(p1[i], p2[i]), f"server{i} returned the same output share twice"


BAD = [
    ("not json", {"raw": b"{nope"}, 400, "bad_json"),
    ("wrong content type", {"raw": b"{}", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
    ("not an object", {"body": [1]}, 400, "bad_request"),
    ("missing bundles", {"body": {"requestId": "ab" * 16, "shape": [1, 64], "ephemeralKey": "AA=="}}, 400,
     "bad_request"),
]


@pytest.mark.parametrize("what,kw,status,code", BAD, ids=[b[0] for b in BAD])
def test_malformed_requests_get_4xx_and_serving_continues(deployment, data, what, kw, status, code):
    got, payload = http_json(deployment.port, "POST", "/v1/models/digits:predict", **kw)
    assert (got, payload["error"]["code"]) == (status, code), payload
    _, x_te, _, _ = data
    assert deployment.client().predict("digits", x_te[:1]).shape == (1, 10)


def test_wrong_shape_oversized_wrong_model_and_tampered(deployment, data):
    _, x_te, _, _ = data
    info = deployment.client().model_info("digits")
    body, _, _ = _raw_request(info, x_te[:1, :32])
    s, p = http_json(deployment.port, "POST", "/v1/models/digits:predict", body)
    assert s == 400 and "does not match the model input [B, 64]" in p["error"]["message"]
    body, _, _ = _raw_request(info, np.zeros((9, 64)))
    s, p = http_json(deployment.port, "POST", "/v1/models/digits:predict", body)
    assert s == 400 and "exceeds the maximum of 8" in p["error"]["message"]
    c = http.client.HTTPConnection("127.0.0.1", deployment.port, timeout=30)
    c.putrequest("POST", "/v1/models/digits:predict")
    c.putheader("Content-Type", "application/json")
    c.putheader("Content-Length", str(1 << 30))  # refused on the header, before any body is read
    c.endheaders()
    r = c.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"]["code"] == "too_large"
    c.close()
    body, _, _ = _raw_request(info, x_te[:1])
    s, p = http_json(deployment.port, "POST", "/v1/models/other:predict", body)
    assert s == 404 and p["error"]["code"] == "no_such_model"
    s, p = http_json(deployment.port, "GET", "/v1/models/digits:predict")
    assert s == 405
    # a bundle altered in transit: only server1 can tell, and the request fails alone
    body, _, _ = _raw_request(info, x_te[:1])
    ct = bytearray(base64.b64decode(body["bundles"][1]["ciphertext"]))
    ct[0] ^= 1
    body["bundles"][1]["ciphertext"] = base64.b64encode(bytes(ct)).decode()
    s, p = http_json(deployment.port, "POST", "/v1/models/digits:predict", body)
    assert s == 400 and p["error"]["code"] == "bad_bundle" and "server1 rejected its bundle" in p["error"]["message"]
    assert deployment.client().predict("digits", x_te[:1]).shape == (1, 10)
    m = deployment.coordinator_metrics()
    for series in ("tfe_serve_requests_total", "tfe_serve_request_seconds_bucket", "tfe_serve_batch_rows_bucket",
                   "tfe_serve_errors_total", "tfe_serve_ready 1.0", 'tfe_serve_stage_seconds_count{stage="graph"}'):
        assert series in m


def test_worker_killed_and_restarted_mid_run(deployment, data, models):
    _, x_te, _, _ = data
    client = deployment.client()
    assert client.predict("digits", x_te[:1]).shape == (1, 10)
    deployment.stack.kill("server1")
    result = {}

    def during():  # sent while server1 is down: queued, then served after the reconnect
        try:
            result["y"] = deployment.client().predict_proba("digits", x_te[1:2])
        except Exception as e:  # noqa: BLE001
            result["err"] = e

    t = threading.Thread(target=during)
    t.start()
    deployment.stack.start_player(1)
    t.join(timeout=300)
    assert "err" not in result, result.get("err")
    plain = models["mlp_keras"].predict(x_te[:10], verbose=0)
    np.testing.assert_allclose(result["y"], plain[1:2], atol=2e-2)
    np.testing.assert_allclose(client.predict_proba("digits", x_te[2:10]), plain[2:10], atol=2e-2)
    m = deployment.coordinator_metrics()
    assert "tfe_serve_reconnects_total" in m


def test_coordinator_restart_reloads_shares_without_the_model_file(deployment, data, models):
    _, x_te, _, _ = data
    assert not [f for f in os.listdir(deployment.stack.state) if f.endswith(".h5")]
    deployment.stack.kill("serve-digits", signal.SIGTERM)
    deployment.start_serve()
    y = deployment.client().predict_proba("digits", x_te[:8])
    np.testing.assert_allclose(y, models["mlp_keras"].predict(x_te[:8], verbose=0), atol=2e-2)


def test_cnn_served_next_to_the_mlp(deployment, models, data):
    _, x_te, _, _ = data
    assert deployment.stack.for_model("cnn").share(models["cnn"]) == 0
    cnn = type(deployment)(deployment.stack)
    cnn.start_serve(name="cnn")
    try:
        y = deployment.client(cnn.url).predict_proba("cnn", x_te[:8])
        plain = models["cnn_keras"].predict(x_te[:8], verbose=0)
        np.testing.assert_allclose(y, plain, atol=3e-2)
        assert (y.argmax(1) == plain.argmax(1)).all()
    finally:
        cnn.serve.terminate()
        cnn.serve.wait(timeout=30)


def test_unsupported_layer_fails_the_share_job_with_its_name(deployment, models):
    stack = deployment.stack
    rc = stack.for_model("bad").share(models["bad"])
    assert rc == 2
    with open(os.path.join(stack.state, "share.termination-log")) as f:
        msg = f.read()
    assert "unsupported layer 'lstm_encoder' (LSTM); supported: Dense, Conv2D" in msg


def test_max_requests_and_bearer_token(deployment, data, tmp_path):
    _, x_te, _, _ = data
    deployment.stack.kill("serve-digits", signal.SIGTERM)
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    port = deployment.start_serve("--max-requests", "3", "--token-file", str(token))
    with pytest.raises(RemoteError) as e:
        deployment.client().predict("digits", x_te[:1])
    assert e.value.status == 401
    client = deployment.client(token="s3cret-token")
    for k in range(3):
        assert client.predict("digits", x_te[k:k + 1]).shape == (1, 10)
    assert deployment.serve.wait(timeout=60) == 0  # served N, then stopped cleanly
    with pytest.raises(OSError):
        http_json(port, "GET", "/readyz", timeout=2)


def test_logs_hold_no_input_share_or_weight(deployment, data, models):
    """Run a recorded request, then scan every process's log for its bytes and values."""
    _, x_te, _, _ = data
    if deployment.serve.poll() is not None:
        deployment.start_serve()
    info = deployment.client().model_info("digits")
    body, _, _ = _raw_request(info, x_te[:1])
    assert http_json(deployment.port, "POST", "/v1/models/digits:predict", body)[0] == 200
    text = deployment.logs_text()
    assert "model digits generation 1 loaded" in text  # the logs are really there
    needles = [body["ephemeralKey"][:24]] + [b["ciphertext"][:24] for b in body["bundles"]]
    # input values with at least 6 characters: shorter ones ('0.5') occur in any timestamp
    needles += [r for v in x_te[0] if 0 < v < 1 and len(r := repr(float(v))[:8]) >= 6]
    w = models["mlp_keras"].get_weights()[0].ravel()[:20]
    needles += [f"{v:.5f}" for v in w]
    found = [n for n in needles if n in text]
    assert not found, f"secret material in logs: {found[:5]}"
    assert json.dumps(body["bundles"][0]) not in text


@pytest.mark.parametrize("kind,reused", [("stock", True), ("fresh", False)])
def test_stock_aby3_reuses_masks(deployment, kind, reused):
    """The bug, demonstrated on stock ABY3, and its fix: two calls of one compiled graph on
    identical input shares. Stock ABY3 draws the same zero-sharing masks on both calls (its
    nonces only advance while tracing); FreshABY3 draws fresh ones, and its output shares
    differ. Both reconstruct to the same values (up to truncation)."""
    import subprocess
    import sys

    stack = deployment.stack
    spools = [os.path.join(stack.state, "spool", f"server{i}") for i in range(3)]
    probe = stack.as_coordinator(f"mask-probe-{kind}", lambda addr: [
        sys.executable, os.path.join(os.path.dirname(__file__), "mask_probe.py"),
        stack.config_path(), addr, "digits", "1", kind, *spools])
    try:
        out = subprocess.run(probe, capture_output=True, text=True, timeout=300, check=False)
    finally:
        stack.release("coordinator", f"mask-probe-{kind}")
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["sameMasks"] is reused
    if not reused:
        assert res["sameShares"] is False
    assert res["maxDiff"] <= 8


def test_cli_predict_and_worker_metrics(deployment, data, models, tmp_path):
    import subprocess
    import sys

    _, x_te, _, _ = data
    if deployment.serve.poll() is not None:
        deployment.start_serve()
    np.save(tmp_path / "x.npy", x_te[:4])
    pins = tmp_path / "pins.json"
    deployment.pins.save(pins)
    cli = [sys.executable, "-m", "tfe_client.cli"]
    unpinned = subprocess.run([*cli, "predict", "--endpoint", deployment.url, "--model", "digits", "--input",
                               str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=120, check=False)
    assert unpinned.returncode == 2 and "no pinned worker keys" in unpinned.stderr
    cli_pinned = [*cli, "predict", "--pins", str(pins)]
    out = subprocess.run([*cli_pinned, "--endpoint", deployment.url, "--model", "digits", "--input",
                          str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"), "--proba"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), models["mlp_keras"].predict(x_te[:4], verbose=0),
                               atol=2e-2)
    plain_json = subprocess.run([*cli_pinned, "--endpoint", deployment.url, "--model", "digits", "--input",
                          str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "TFE_TOKEN": ""})
    assert plain_json.returncode == 0 and len(json.loads(plain_json.stdout)) == 4
    np.save(tmp_path / "wrong.npy", np.zeros((1, 3)))
    wrong = subprocess.run([*cli_pinned, "--endpoint", deployment.url, "--model", "digits", "--input",
                            str(tmp_path / "wrong.npy")], capture_output=True, text=True, timeout=120, check=False)
    assert wrong.returncode == 2 and "does not match the model input [B, 64]" in wrong.stderr
    for i in range(3):
        status, body = deployment.stack.worker_get(i, "/metrics")
        assert status == 200
        text = body.decode()
        assert 'tfe_worker_ingress_items_total{result="ok"}' in text and "tfe_worker_egress_items_total" in text


def test_share_from_url_checks_the_digest(deployment, models):
    """--model URL --sha256: downloaded, digest checked, then shared (a loopback HTTP server)."""
    import functools
    import hashlib
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    d = os.path.dirname(models["mlp"])
    handler = functools.partial(SimpleHTTPRequestHandler, directory=d)
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    stack = deployment.stack
    s = stack.for_model("from-url")
    url = f"http://127.0.0.1:{srv.server_address[1]}/mlp.h5"
    try:
        with open(models["mlp"], "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        assert s.share(url, sha256="0" * 64) == 2
        with open(os.path.join(stack.state, "share.termination-log")) as f:
            assert f"sha256 of the downloaded model is {digest}, expected {'0' * 64}" in f.read()
        assert s.share(url, generation=2, sha256=digest) == 0
        gens = [stack.worker_get(i, "/v1/models/from-url/generations")[1]["generations"] for i in range(3)]
        assert gens == [[2], [2], [2]]
    finally:
        srv.shutdown()
        srv.server_close()


def _read(path):
    with open(path, errors="replace") as f:
        return f.read()


def test_serve_started_before_the_share_waits_for_its_generation(deployment, models, data):
    """The operator starts a model's first serve pod beside its share Job: the coordinator, told to
    serve generation 1 before any worker holds it, waits without failing and without repeating
    itself in its log, then serves that generation once the share is complete."""
    _, x_te, _, _ = data
    stack = deployment.stack.for_model("early")
    early = type(deployment)(stack)
    early.port = free_ports(1)[0]
    early.serve = stack.start_serve(early.port, ["--max-batch-size", "8", "--buckets", "1,8", "--max-wait-ms", "5",
                                                 "--generation", "1"])
    log_path = stack.logs["coordinator-early" if stack.tls else "serve-early"]
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while "waiting for share generation 1 of model early" not in _read(log_path):
            assert early.serve.poll() is None and time.monotonic() < deadline, "the coordinator never said it waits"
            time.sleep(0.25)
        assert http_json(early.port, "GET", "/readyz")[0] == 503
        assert stack.share(models["mlp"]) == 0
        wait_http_ready(early.port, early.serve)
        y = deployment.client(early.url).predict_proba("early", x_te[:8])
        np.testing.assert_allclose(y, models["mlp_keras"].predict(x_te[:8], verbose=0), atol=2e-2)
        log = _read(log_path)
        assert log.count("waiting for share generation 1") == 1
        assert "WARNING tfe_worker" not in log and "ERROR tfe_worker" not in log, log[-3000:]
    finally:
        stack.kill("serve-early", signal.SIGTERM)
