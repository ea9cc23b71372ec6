"""Share generations on a worker's disk across a recovery or refresh (docs/recovery.md): pruning of the
replaced generation, and the coordinator answering 503 not_ready while its generation is gone."""

import json
import os
import threading
import time

import pytest
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


def test_waiting_for_a_generation_being_shared_ends_when_all_three_hold_it(workers):  # noqa: F811
    from tfe_worker import workers as workers_mod

    config, seen, done, told = workers.config(), [], threading.Event(), threading.Event()
    assert workers_mod.lacking(config, "digits", 2) == ["server0", "server1", "server2"]
    with pytest.raises(TimeoutError, match="share generation 2 of digits not on server0, server1, server2"):
        workers_mod.wait_generation(config, "digits", 2, timeout=0.0)

    def wait():
        workers_mod.wait_generation(config, "digits", 2, 60.0, waiting=lambda names: (seen.append(names), told.set()),
                                    poll=0.05)
        done.set()

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    assert told.wait(30)
    for i in range(3):
        make(workers.state(i), 2, complete=False)  # the share Job is still writing it
    make(workers.state(0), 2)
    make(workers.state(1), 2)
    assert not done.wait(0.5) and workers_mod.lacking(config, "digits", 2) == ["server2"]
    make(workers.state(2), 2)
    assert done.wait(30)
    assert seen == [["server0", "server1", "server2"]]  # told once, with who lacked it first


def test_a_coordinator_waits_quietly_for_the_generation_it_is_told_to_serve(workers, caplog):  # noqa: F811
    """The operator starts a model's first serve pod beside its share Job (--generation N of a share
    still being written): the coordinator waits, says so once, and neither fails, nor marks the
    generation gone, nor repeats a warning while it waits; a stop ends the wait."""
    import logging

    from prometheus_client import CollectorRegistry

    from tfe_worker.endpoint import ServeMetrics
    from tfe_worker.serve import Coordinator, ServeOptions

    opts = ServeOptions("digits", "127.0.0.1:1", generation=2, batch=BatcherOptions(max_batch=8), worker_timeout=5.0)
    c = Coordinator(workers.config(), opts, ServeMetrics(CollectorRegistry()))
    caplog.set_level(logging.INFO, logger="tfe_worker")
    errors = []

    def connect():
        try:
            c._wait_generation(2)
        except TimeoutError as e:
            errors.append(e)

    t = threading.Thread(target=connect, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not any("waiting for share generation 2" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "no 'waiting' line"
        time.sleep(0.05)
    make(workers.state(0), 2)
    time.sleep(2.5)  # more than one poll: a repeated line would show
    assert t.is_alive() and not c.ready() and c.gone is None and c.fatal is None
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("tfe_worker")]
    assert lines == ["waiting for share generation 2 of model digits: not (yet) complete on server0, server1, server2"]
    c.stop.set()
    t.join(10)
    assert not t.is_alive() and len(errors) == 1 and "not on server1, server2" in str(errors[0])
