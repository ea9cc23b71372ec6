"""Share generations on a worker's disk across a recovery or refresh (docs/recovery.md): pruning of the
replaced generation, and the coordinator answering 503 not_ready while its generation is gone."""

import json
import os

from test_served_count import coordinator, workers  # noqa: F401 - `workers` is a fixture

from tfe_client import wire
from tfe_client.fixedpoint import DEFAULT
from tfe_worker.batcher import Batcher, BatcherOptions
from tfe_worker.player import ShareStore, generations, prune


def manifest(gen):
    return wire.Manifest("digits", gen, (64,), (10,), "softmax", "0" * 64, DEFAULT, (), "ABY3", 1, {}).to_json()


def make(state, gen, complete=True):
    d = os.path.join(state, "models", "digits", str(gen))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "w0.tp"), "wb") as f:
        f.write(b"x")
    if complete:
        with open(os.path.join(d, "manifest.json"), "w") as f:
            json.dump(manifest(gen), f)


def on_disk(state):
    return sorted(int(g) for g in os.listdir(os.path.join(state, "models", "digits")))


def test_without_usage_the_two_newest_complete_generations_stay(tmp_path):
    s = str(tmp_path)
    for g in (1, 2, 3):
        make(s, g)
    make(s, 4, complete=False)  # a generation being written: never touched
    assert prune(s) == ["digits/1"]
    assert on_disk(s) == [2, 3, 4]
    assert generations(s, "digits") == [3, 2]


def test_an_older_generation_nobody_reads_goes_once_a_newer_one_is_complete(tmp_path):
    s = str(tmp_path)
    clock = [1000.0]
    store = ShareStore(s, clock=lambda: clock[0])
    make(s, 1)
    make(s, 2)
    clock[0] += 10
    assert store.prune(idle=60) == []  # just started: everything counts as used at start
    clock[0] += 100
    assert store.prune(idle=60) == ["digits/1"]
    assert on_disk(s) == [2]
    clock[0] += 1000
    assert store.prune(idle=60) == []  # the newest complete generation always stays
    assert on_disk(s) == [2]


def test_a_generation_in_use_stays(tmp_path):
    s = str(tmp_path)
    clock = [0.0]
    store = ShareStore(s, clock=lambda: clock[0])
    make(s, 1)
    make(s, 2)
    for _ in range(5):
        clock[0] += 50
        assert store.manifest("digits", 1).generation == 1  # ingress of a coordinator still on generation 1
        assert store.prune(idle=60) == []
    clock[0] += 60
    assert store.prune(idle=60) == ["digits/1"]


def test_reject_queued_answers_every_waiting_request():
    b = Batcher(BatcherOptions(max_batch=4))
    t1 = b.submit("a" * 32, 1, None)
    t2 = b.submit("b" * 32, 1, None)
    assert b.reject_queued(503, "gone") == 2
    assert t1.result == (503, "gone") and t2.result == (503, "gone")
    assert b.queued() == 0 and b.outstanding == 0
    assert b.reject_queued(503, "gone") == 0


def test_a_coordinator_whose_generation_is_gone_answers_503_not_ready(workers):  # noqa: F811
    c = coordinator(workers)
    c._generation_gone("server1 lacks share generation 1")
    status, body = c.predict(None, lambda: False)
    assert status == 503 and isinstance(body, wire.ErrorBody) and body.code == "not_ready"
    assert "server1 lacks share generation 1" in body.message
    assert not c.ready()
