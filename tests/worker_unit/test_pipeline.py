"""The coordinator's batch pipeline (tfe_worker.pipeline) with recording stages: overlap,
order, bounds and what a failure hands back."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tfe_worker.pipeline import Failed, Pipeline


class Stages:
    """Stages that record what ran; `fail` maps (stage, batch) to an exception to raise."""

    def __init__(self, fail=None):
        self.log = []
        self.fail = fail or {}
        self.lock = threading.Lock()
        self.running = set()
        self.most = 0
        self.abandoned = []

    def _enter(self, stage, b):
        with self.lock:
            self.running.add((stage, b))
            self.most = max(self.most, len(self.running))
            self.log.append((stage, b))

    def _leave(self, stage, b):
        with self.lock:
            self.running.discard((stage, b))
        if (stage, b) in self.fail:
            raise self.fail[(stage, b)]

    def ingress(self, b):
        self._enter("ingress", b)
        self._leave("ingress", b)
        return ("ingressed", b)

    def graph(self, x):
        b = x[1]
        self._enter("graph", b)
        self._leave("graph", b)
        return ("graphed", b)

    def finish(self, x):
        b = x[1]
        self._enter("finish", b)
        self._leave("finish", b)

    def abandon(self, x):
        self.abandoned.append(x)

    def pipe(self, executor=None):
        return Pipeline(self.ingress, self.graph, self.finish, self.abandon, executor)


def run_all(pipe, batches):
    for b in batches:
        pipe.step(b)
    pipe.drain()


@pytest.fixture()
def executor():
    with ThreadPoolExecutor(2) as ex:
        yield ex


def test_every_stage_sees_the_batches_in_order_and_the_graphs_never_overlap(executor):
    s = Stages()
    run_all(s.pipe(executor), range(6))
    for stage in ("ingress", "graph", "finish"):
        assert [b for st, b in s.log if st == stage] == list(range(6))
    assert s.abandoned == []


def test_a_step_runs_finish_graph_and_ingress_of_three_batches_at_once(executor):
    """Each stage waits at a barrier until the two others of its step are running: the step
    completes only if all three run concurrently (a sequential runner would time out)."""
    s = Stages()
    barrier = threading.Barrier(3, timeout=10)
    order = []

    def at(stage, fn):
        def run(x):
            barrier.wait()
            order.append(stage)
            return fn(x)
        return run

    p = Pipeline(s.ingress, s.graph, s.finish, s.abandon, executor)
    p.step(0)
    p.step(1)
    assert p.in_flight() == [0, 1]
    p.ingress, p.graph, p.finish = at("ingress", s.ingress), at("graph", s.graph), at("finish", s.finish)
    p.step(2)  # finish 0, graph 1, ingress 2 together
    assert sorted(order) == ["finish", "graph", "ingress"]
    assert p.in_flight() == [1, 2]  # bounded: one batch per stage


def test_without_an_executor_one_batch_at_a_time_in_order():
    s = Stages()
    p = s.pipe(None)
    p.step(0)
    p.step(1)  # no executor: still stepwise, stages run one after another on this thread
    p.drain()
    assert s.most == 1
    assert [b for st, b in s.log if st == "finish"] == [0, 1]


def test_a_graph_failure_hands_back_every_unanswered_batch_oldest_first(executor):
    err = RuntimeError("worker gone")
    s = Stages(fail={("graph", 1): err})
    p = s.pipe(executor)
    p.step(0)
    p.step(1)
    with pytest.raises(Failed) as e:
        p.step(2)  # finish 0 succeeds, graph 1 fails, ingress 2 succeeds
    assert e.value.batches == [1, 2] and e.value.errors == [err]
    assert ("finish", 0) in s.log  # answered: not handed back
    assert s.abandoned == [("ingressed", 2)]  # the younger batch's spooled inputs are forgotten
    assert p.empty


def test_a_finish_failure_hands_back_that_batch_and_the_younger_ones(executor):
    err = RuntimeError("record failed")
    s = Stages(fail={("finish", 0): err})
    p = s.pipe(executor)
    p.step(0)
    p.step(1)
    with pytest.raises(Failed) as e:
        p.step(2)
    assert e.value.batches == [0, 1, 2]
    assert sorted(s.abandoned) == [("graphed", 1), ("ingressed", 2)]
    assert p.empty


def test_an_ingress_failure_keeps_the_older_answers(executor):
    err = RuntimeError("ingress")
    s = Stages(fail={("ingress", 2): err})
    p = s.pipe(executor)
    p.step(0)
    p.step(1)
    with pytest.raises(Failed) as e:
        p.step(2)
    assert e.value.batches == [1, 2] and s.abandoned == [("graphed", 1)]
    assert ("finish", 0) in s.log


def test_sequential_failure_stops_the_younger_stages():
    err = RuntimeError("finish")
    s = Stages(fail={("finish", 0): err})
    p = s.pipe(None)
    p.step(0)
    p.step(1)
    with pytest.raises(Failed) as e:
        p.step(2)  # inline: finish 0 fails first, graph 1 and ingress 2 never run
    assert e.value.batches == [0, 1, 2]
    assert ("graph", 1) not in s.log and ("ingress", 2) not in s.log
    assert s.abandoned == [("ingressed", 1)]  # 1 was ingressed in the previous step


def test_every_error_of_a_step_is_reported_oldest_first(executor):
    e0, e1 = RuntimeError("a"), ValueError("b")
    s = Stages(fail={("finish", 0): e0, ("ingress", 2): e1})
    p = s.pipe(executor)
    p.step(0)
    p.step(1)
    with pytest.raises(Failed) as e:
        p.step(2)
    assert e.value.errors == [e0, e1]


def test_after_a_failure_the_pipeline_runs_again(executor):
    s = Stages(fail={("graph", 0): RuntimeError("x")})
    p = s.pipe(executor)
    p.step(0)
    with pytest.raises(Failed):
        p.step(1)
    s.fail.clear()
    run_all(p, [0, 1])
    assert [b for st, b in s.log if st == "finish"] == [0, 1]


def coordinator():
    from prometheus_client import CollectorRegistry

    from tfe_worker.batcher import BatcherOptions
    from tfe_worker.config import Config
    from tfe_worker.endpoint import ServeMetrics
    from tfe_worker.serve import Coordinator, ServeOptions

    opts = ServeOptions("digits", "127.0.0.1:1", batch=BatcherOptions(max_batch=2, max_wait=0.0))
    return Coordinator(Config.loopback([1, 2, 3], [1, 2, 3]), opts, ServeMetrics(CollectorRegistry()))


def batches(c, n):
    """Admit 2n one-row requests and take them as n batches of two, in order."""
    tickets = [c.batcher.submit(f"{k:032x}", 1, None) for k in range(2 * n)]
    out = [c.batcher.take() for _ in range(n)]
    assert [t for b in out for t in b.tickets] == tickets
    return tickets, out


def test_a_worker_failure_retries_the_batches_in_flight_in_their_order():
    from tfe_worker.serve import WorkerFailure

    c = coordinator()
    tickets, (b0, b1, b2) = batches(c, 3)
    late = c.batcher.submit("f" * 32, 1, None)
    c._failed(Failed([b0, b1, b2], [WorkerFailure("server1 unreachable")]))
    assert c.engine is None and not c.is_ready  # reconnects
    assert list(c.batcher.queue) == [*tickets, late]  # the failed batches first, in their order
    assert all(t.attempts == 1 for t in tickets) and late.attempts == 0


def test_a_lost_generation_answers_every_batch_in_flight_and_the_queue_not_ready():
    from tfe_worker.serve import GenerationGone

    c = coordinator()
    tickets, (b0, b1) = batches(c, 2)
    late = c.batcher.submit("f" * 32, 1, None)
    c._failed(Failed([b0, b1], [RuntimeError("x"), GenerationGone("server2 lacks share generation 3")]))
    for t in [*tickets, late]:
        assert t.result is not None and t.result[0] == 503 and t.result[1].code == "not_ready"
    assert c.gone is not None and not c.batcher.queue
