"""maxRequests across coordinator restarts, without TF: the workers' ServedStore on disk, three real
player HTTP sides on loopback, and Coordinators that record, release and reload served counts."""

import json
import os
import threading

import pytest

from tfe_client import wire
from tfe_worker.batcher import DONE, QUEUED, SETTLING, BatcherOptions, Rejected
from tfe_worker.config import Config
from tfe_worker.endpoint import ServeMetrics
from tfe_worker.httpapp import HTTPError, HTTPOptions, Server
from tfe_worker.player import Player, PlayerOptions, ServedStore
from tfe_worker.serve import Coordinator, ServeOptions, WorkerFailure


def report(add, total=0, rid=None, scope="maxRequests=3"):
    return wire.ServedReport(scope, rid or os.urandom(6).hex(), add, total)


# -- ServedStore ------------------------------------------------------------------------------------
def test_store_adds_persists_and_survives_a_new_process(tmp_path):
    s = ServedStore(str(tmp_path))
    assert s.counts("digits") == wire.ServedCounts("digits", ())
    assert s.report("digits", report(2)) == 2
    assert s.report("digits", report(1)) == 3
    with open(tmp_path / "served" / "digits.json") as f:
        assert wire.ServedCounts.parse(json.load(f)).served("maxRequests=3") == 3
    assert not [p for p in os.listdir(tmp_path / "served") if p.endswith(".tmp")]
    assert ServedStore(str(tmp_path)).counts("digits").served("maxRequests=3") == 3  # a restarted worker


def test_a_retried_report_counts_once_and_a_lagging_worker_catches_up(tmp_path):
    s = ServedStore(str(tmp_path))
    r = report(2, 2)
    assert s.report("digits", r) == 2
    assert s.report("digits", r) == 2  # the same report id again: not added twice
    assert s.report("digits", report(1, 10)) == 10  # it missed reports: the coordinator's total wins
    assert s.report("digits", report(1, 4)) == 11  # a total below its own count never lowers it
    assert s.report("digits", report(0, 0)) == 11


def test_scopes_are_separate_and_bounded(tmp_path):
    s = ServedStore(str(tmp_path))
    s.report("digits", report(5, scope="unlimited"))
    s.report("digits", report(1, scope="maxRequests=3"))
    s.report("other", report(2, scope="maxRequests=3"))
    c = s.counts("digits")
    assert c.served("unlimited") == 5 and c.served("maxRequests=3") == 1 and s.counts("other").served(
        "maxRequests=3") == 2
    for i in range(wire.MAX_SCOPES + 2):
        s.report("digits", report(1, scope=f"s{i}"))
    c = s.counts("digits")
    assert len(c.scopes) == wire.MAX_SCOPES and c.served("unlimited") == 0  # the least recently reported went
    assert c.scopes[-1].scope == f"s{wire.MAX_SCOPES + 1}"


def test_concurrent_reports_are_all_counted(tmp_path):
    s = ServedStore(str(tmp_path))

    def many():
        for _ in range(25):
            s.report("digits", report(1))

    threads = [threading.Thread(target=many) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ServedStore(str(tmp_path)).counts("digits").served("maxRequests=3") == 200


def test_an_unreadable_count_file_fails_closed(tmp_path):
    s = ServedStore(str(tmp_path))
    s.report("digits", report(1))
    (tmp_path / "served" / "digits.json").write_text("{not json")
    with pytest.raises(HTTPError) as e:
        s.report("digits", report(1))
    assert e.value.status == 500  # never silently back to zero


# -- three player HTTP sides and coordinators --------------------------------------------------------
class Workers:
    """The HTTP sides of three players (no TF server: ingress/egress are not used here)."""

    def __init__(self, root):
        self.root = root
        self.servers = [None, None, None]
        self.ports = [0, 0, 0]
        for i in range(3):
            self.start(i)

    def state(self, i):
        return os.path.join(self.root, f"server{i}")

    def start(self, i):
        mdir = os.path.join(self.state(i), "models", "digits", "1")
        os.makedirs(mdir, exist_ok=True)
        with open(os.path.join(mdir, "manifest.json"), "w") as f:
            json.dump({}, f)  # generations() only needs the file
        dummy = Config.loopback([1, 2, 3], [1, 2, 3])
        player = Player(PlayerOptions(f"server{i}", dummy, self.state(i), os.path.join(self.root, f"spool{i}")))
        srv = Server(player.app(), HTTPOptions(threads=2))
        port = srv.start("127.0.0.1", self.ports[i])
        self.servers[i], self.ports[i] = srv, port

    def stop(self, i):
        self.servers[i].stop(flush_timeout=0.5)
        self.servers[i] = None

    def stop_all(self):
        for i in range(3):
            if self.servers[i] is not None:
                self.stop(i)

    def config(self):
        return Config.loopback([1, 2, 3], self.ports)


@pytest.fixture()
def workers(tmp_path):
    w = Workers(str(tmp_path))
    yield w
    w.stop_all()


def coordinator(workers, max_requests=3, scope=None):
    from prometheus_client import CollectorRegistry

    opts = ServeOptions("digits", "127.0.0.1:1", batch=BatcherOptions(max_batch=8, max_requests=max_requests),
                        worker_timeout=5.0, count_scope=scope)
    c = Coordinator(workers.config(), opts, ServeMetrics(CollectorRegistry()))
    c._load_served()
    return c


def rid(i):
    return f"{i:032x}"


def serve(c, n, start=0, status=200):
    """Admit n one-row requests, run them as one batch whose answers are `status`, answer them."""
    tickets = [c.batcher.submit(rid(start + k), 1, None) for k in range(n)]
    batch = c.batcher.take() or c.batcher.next_batch(threading.Event())
    assert batch.tickets == tickets
    c._answer([(t, status, "out") for t in tickets])
    return tickets


def test_the_limit_holds_across_a_coordinator_restart(workers):
    a = coordinator(workers)
    assert a.batcher.served == 0 and a.status().requests_served == 0
    serve(a, 2)
    assert a.status().requests_served == 2 and not a.limit_event.is_set()
    b = coordinator(workers)  # a new process: its count starts from the workers'
    assert b.status().requests_served == 2 and b.ready() is False  # not connected; but not at its limit:
    assert not b.limit_event.is_set()
    serve(b, 1, start=10)
    assert b.limit_event.is_set() and b.status().limit_reached
    with pytest.raises(Rejected, match="served its 3 requests"):
        b.batcher.submit(rid(20), 1, None)
    c = coordinator(workers)
    assert c.limit_event.is_set() and c.status().requests_served == 3  # starts at its limit: serves nothing


def test_admission_counts_what_was_recorded_before(workers):
    serve(coordinator(workers), 2)
    b = coordinator(workers)
    b.batcher.submit(rid(1), 1, None)  # 2 served + 1 admitted = 3
    with pytest.raises(Rejected) as e:
        b.batcher.submit(rid(2), 1, None)
    assert e.value.code == "limit_reached"


def test_failed_answers_and_other_limits_do_not_count(workers):
    a = coordinator(workers)
    serve(a, 2, status=400)
    assert a.status().requests_served == 0
    serve(a, 2, start=5)
    assert coordinator(workers, max_requests=5).status().requests_served == 0  # a changed limit: a new count
    assert coordinator(workers, max_requests=None).status().requests_served == 0
    assert coordinator(workers, scope="em-uid-1").status().requests_served == 0
    assert coordinator(workers).status().requests_served == 2


def test_the_largest_count_of_the_three_wins(workers):
    a = coordinator(workers)
    workers.stop(0)
    serve(a, 2)  # server0 is down: recorded on server1 and server2 only
    workers.start(0)
    assert coordinator(workers).status().requests_served == 2
    # server1 and server2 lose their disks (e.g. emptyDir): server0 alone still holds the count
    serve(a, 1, start=10)  # all three record 3 (server0 catches up from the total)
    for i in (1, 2):
        workers.stop(i)
        os.unlink(os.path.join(workers.state(i), "served", "digits.json"))
        workers.start(i)
    assert coordinator(workers).status().requests_served == 3


def test_two_coordinators_at_once_lose_no_count(workers):
    a, b = coordinator(workers, max_requests=100), coordinator(workers, max_requests=100)
    serve(a, 2)
    serve(b, 3, start=10)  # b learns a's 2 from the workers' answer
    assert b.status().requests_served == 5
    serve(a, 1, start=20)
    assert a.status().requests_served == 6
    assert coordinator(workers, max_requests=100).status().requests_served == 6


def test_nothing_is_released_unless_a_worker_recorded_it(workers):
    a = coordinator(workers)
    tickets = [a.batcher.submit(rid(k), 1, None) for k in range(2)]
    batch = a.batcher.next_batch(threading.Event())
    workers.stop_all()
    with pytest.raises(WorkerFailure, match="no worker recorded"):
        a._answer([(t, 200, "out") for t in tickets])
    assert all(t.state == SETTLING and not t.done.is_set() for t in tickets)  # no answer went out
    a.batcher.fail(batch)  # what the batch loop does with a failure: retried after the reconnect
    assert all(t.state == QUEUED for t in tickets) and a.status().requests_served == 0


def test_a_settling_request_is_no_longer_cancelled(workers):
    a = coordinator(workers)
    t = a.batcher.submit(rid(1), 1, None)
    batch = a.batcher.next_batch(threading.Event())
    assert a.batcher.settle([(t, 200, "out")]) == 1
    a.batcher.cancel(t, "gone")  # the client left while its answer was being recorded: it still counts
    assert t.state == SETTLING
    a.batcher.complete(t, 200, "out")
    assert t.state == DONE and t.result == (200, "out") and a.batcher.served == 1
    assert batch.tickets == [t]

