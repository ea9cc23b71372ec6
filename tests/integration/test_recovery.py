"""Issue 14 with real players: a player loses its disk and gets fresh pairs from its two peers
(no model file), then a proactive refresh; the pairs on disk and the private predictions are checked."""

import os
import shutil
import signal
import time

import numpy as np
import pytest
from conftest import READY_TIMEOUT, Deployment

from tfe_client import RemoteError
from tfe_worker.local import new_stack
from tfe_worker.player import read_tensorproto_int64

N_WEIGHTS = 4  # the digits MLP: two Dense layers, kernel and bias each


def pairs(stack, gen):
    """{weight k: [pair of server0, server1, server2]} read from the players' disks."""
    out = {}
    for k in range(N_WEIGHTS):
        out[k] = [read_tensorproto_int64(os.path.join(stack.state, f"server{i}", "models", "digits", str(gen),
                                                      f"w{k}.tp")) for i in range(3)]
    return out


def check_consistent(ps):
    """Replicated components agree: server i's second component is server i+1's first."""
    for k, three in ps.items():
        for i in range(3):
            assert np.array_equal(three[i][1], three[(i + 1) % 3][0]), f"w{k}: server{i} and server{(i + 1) % 3}"


def log_tail(stack, key):
    with open(stack.logs[key], errors="replace") as f:
        return f.read()[-2000:]


def secret(three):
    return three[0][0] + three[1][0] + three[2][0]  # int64 wraps: the ring Z/2^64


@pytest.fixture(scope="module")
def lost_stack(tmp_path_factory, models):
    state = tmp_path_factory.mktemp("recovery")
    stack = new_stack(str(state), "digits", tls=os.environ.get("TFE_TEST_TLS", "1") != "0")
    try:
        stack.start_players(READY_TIMEOUT)
        copy = str(state / "upload.h5")
        shutil.copy(models["mlp"], copy)
        assert stack.share(copy) == 0
        os.unlink(copy)  # nothing below can use the model file
        yield stack
    finally:
        stack.stop()


def predict(stack, generation, x):
    dep = Deployment(stack)
    dep.start_serve("--generation", str(generation))
    try:
        client = dep.client()
        assert client.model_info("digits").share_generation == generation
        return client.predict_proba("digits", x)
    finally:
        stack.kill("serve-digits", signal.SIGTERM)


def test_recovery_then_refresh(lost_stack, models, data):
    stack = lost_stack
    _, x_te, _, _ = data
    x = x_te[:8]  # the deployment's max batch
    plain = models["mlp_keras"].predict(x, verbose=0)
    old = Deployment(stack)  # a coordinator on generation 1 that lives through the loss
    old.start_serve("--generation", "1")
    before = old.client().predict_proba("digits", x)
    np.testing.assert_allclose(before, plain, atol=2e-2)
    g1 = pairs(stack, 1)
    check_consistent(g1)
    key1 = stack.pins().keys[1]

    # server1 loses its disk: a new, empty state directory and a new X25519 key
    stack.kill("server1")
    shutil.rmtree(os.path.join(stack.state, "server1"))
    stack.start_player(1)
    stack.wait_players(READY_TIMEOUT)
    assert stack.pins().keys[1] != key1
    assert stack.worker_get(1, "/v1/models/digits/generations")[1]["generations"] == []
    # the generation-1 coordinator cannot serve any more: 503 not_ready (which clients retry), not a 502
    with pytest.raises(RemoteError) as e:
        old.client(retry_for=0).predict_proba("digits", x[:1])
    assert (e.value.status, e.value.code) == (503, "not_ready"), e.value
    stack.kill("serve-digits", signal.SIGTERM)

    t0 = time.monotonic()
    assert stack.reshare(1, 2, lost=1) == 0, log_tail(stack, "reshare-digits-g2")
    print(f"\nrecovery job (server1 from its peers, generation 2): {time.monotonic() - t0:.1f}s")
    for i in range(3):
        assert 2 in stack.worker_get(i, "/v1/models/digits/generations")[1]["generations"]
    g2 = pairs(stack, 2)
    check_consistent(g2)
    for k in range(N_WEIGHTS):
        assert np.array_equal(secret(g2[k]), secret(g1[k]))  # a zero sharing added: exactly the same weights
        for i in range(3):
            if i != 1:  # server1's old pair is gone; the survivors' pairs changed
                assert not np.array_equal(g2[k][i][0], g1[k][i][0])
                assert not np.array_equal(g2[k][i][1], g1[k][i][1])
        # the recovered pair is not the lost one either
        assert not np.array_equal(g2[k][1][0], g1[k][1][0]) and not np.array_equal(g2[k][1][1], g1[k][1][1])
    after_recovery = predict(stack, 2, x)
    np.testing.assert_allclose(after_recovery, before, atol=2e-2)  # ABY3 truncation differs per run

    t0 = time.monotonic()
    assert stack.reshare(2, 3) == 0, log_tail(stack, "reshare-digits-g3")
    print(f"refresh job (generation 3): {time.monotonic() - t0:.1f}s")
    g3 = pairs(stack, 3)
    check_consistent(g3)
    for k in range(N_WEIGHTS):
        assert np.array_equal(secret(g3[k]), secret(g1[k]))
        for i in range(3):
            assert not np.array_equal(g3[k][i][0], g2[k][i][0]) and not np.array_equal(g3[k][i][1], g2[k][i][1])
    after_refresh = predict(stack, 3, x)
    np.testing.assert_allclose(after_refresh, plain, atol=2e-2)
    assert np.mean(after_refresh.argmax(1) == plain.argmax(1)) >= 0.9


def test_recovery_refused_when_a_survivor_lacks_the_generation(lost_stack):
    """Two parties without the source generation: the job fails, and no new generation appears."""
    stack = lost_stack
    gens = [stack.worker_get(i, "/v1/models/digits/generations")[1]["generations"] for i in range(3)]
    assert all(1 not in g for g in gens[1:2])  # server1 lost generation 1 above
    rc = stack.reshare(1, 9, lost=0)  # server0 "lost", but survivor server1 lacks generation 1
    assert rc != 0
    for i in range(3):
        assert 9 not in stack.worker_get(i, "/v1/models/digits/generations")[1]["generations"]
