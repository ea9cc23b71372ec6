"""The coordinator's Batcher, without processes: an injected clock, no TF, no HTTP."""

import threading

import pytest

from tfe_worker.batcher import DONE, QUEUED, RUNNING, SETTLING, Batcher, BatcherOptions, Rejected, default_buckets


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t

    def advance(self, dt):
        self.t += dt


def make(**kw):
    clock = Clock()
    opts = {"max_batch": 8, "buckets": (1, 4, 8), "max_wait": 0.005, "timeout": 120.0}
    opts.update(kw)
    return Batcher(BatcherOptions(**opts), clock), clock


def rid(i):
    return f"{i:032x}"


def test_default_buckets():
    assert default_buckets(32) == (1, 4, 16, 32)
    assert default_buckets(1) == (1,)
    assert BatcherOptions(max_batch=10, buckets=(2, 4)).resolved_buckets() == (2, 4, 10)
    with pytest.raises(ValueError):
        BatcherOptions(max_batch=4, buckets=(8,)).resolved_buckets()


def test_a_lone_request_leaves_at_once():
    """Nobody else is live (a sequential client): waiting max_wait would only add latency."""
    b, _clock = make()
    b.submit(rid(1), 1, "a")
    batch = b.take()
    assert [t.payload for t in batch.tickets] == ["a"] and batch.bucket == 1


def test_waits_max_wait_for_company_then_picks_the_smallest_bucket():
    b, clock = make()
    b.submit(rid(9), 1, "running")
    assert b.take() is not None  # alone: leaves at once, and stays live while it runs
    b.submit(rid(1), 1, "a")
    assert b.take() is None  # another request is live: the oldest waited 0 s of its 5 ms
    clock.advance(0.002)
    b.submit(rid(2), 2, "b")
    assert b.take() is None
    clock.advance(0.004)
    batch = b.take()
    assert [t.payload for t in batch.tickets] == ["a", "b"] and batch.rows == 3 and batch.bucket == 4
    assert all(t.state == RUNNING for t in batch.tickets)
    assert b.take() is None


def test_a_full_batch_leaves_at_once_and_the_next_request_is_carried_in_order():
    b, clock = make()
    for i, rows in enumerate([3, 4, 2, 1]):
        b.submit(rid(i), rows, i)
    first = b.take()  # 3 + 4 = 7 rows; the 2-row request would not fit: carried, no waiting
    assert [t.payload for t in first.tickets] == [0, 1] and first.bucket == 8
    assert b.take() is None  # the carried request heads the next batch, which waits its max_wait
    clock.advance(0.01)
    second = b.take()
    assert [t.payload for t in second.tickets] == [2, 3] and second.bucket == 4


def test_exactly_full_batch_needs_no_wait():
    b, _clock = make()
    b.submit(rid(1), 8, "x")
    assert b.take().bucket == 8


def test_ordering_is_fifo_and_a_failed_batch_goes_back_to_the_head():
    b, _clock = make(max_batch=2, buckets=(1, 2))
    for i in range(4):
        b.submit(rid(i), 1, i)
    first = b.take()
    assert [t.payload for t in first.tickets] == [0, 1]
    b.fail(first, "gave up")
    assert all(t.state == QUEUED and t.attempts == 1 for t in first.tickets)
    assert [t.payload for t in b.take().tickets] == [0, 1]  # before 2 and 3
    assert [t.payload for t in b.take().tickets] == [2, 3]


def test_a_request_failed_max_attempts_times_gets_503_and_frees_admission():
    b, _ = make(max_batch=1, buckets=(1,), max_attempts=3, max_requests=1)
    t = b.submit(rid(1), 1, "x")
    for _ in range(3):
        batch = b.take()
        assert batch.tickets == [t]
        b.fail(batch, "the workers failed")
    assert t.state == DONE and t.result == (503, "the workers failed") and b.take() is None
    assert b.submit(rid(2), 1, "y")  # the failure did not use up maxRequests


def test_deadline_expires_queued_requests_which_never_run():
    b, clock = make(timeout=10.0)
    t = b.submit(rid(1), 1, "late")
    clock.advance(11)
    assert b.take() is None  # expired: never handed to the workers
    assert t.state == DONE and t.cancelled == "timeout" and t.result[0] == 504
    assert b.outstanding == 0


def test_cancelled_requests_never_run_and_do_not_count_toward_admission():
    b, clock = make(max_requests=2)
    gone = b.submit(rid(1), 1, "gone")
    b.submit(rid(2), 1, "stays")
    with pytest.raises(Rejected) as e:
        b.submit(rid(3), 1, "over")
    assert e.value.code == "limit_reached"
    b.cancel(gone, "gone")  # the client hung up while queued
    b.submit(rid(3), 1, "now fits")
    clock.advance(1)
    batch = b.take()
    assert [t.payload for t in batch.tickets] == ["stays", "now fits"]


def test_a_running_request_cancelled_is_discarded_and_not_counted_as_served():
    b, clock = make(max_requests=5)
    t1, t2 = b.submit(rid(1), 1, 1), b.submit(rid(2), 1, 2)
    clock.advance(1)
    batch = b.take()
    b.cancel(t1, "timeout")  # its client already got 504
    assert b.complete(t1, 200, "late answer") is False
    assert b.complete(t2, 200, "answer") is True
    assert b.served == 1 and t1.result == (504, None) and t2.result == (200, "answer")
    assert batch.rows == 2


def test_max_requests_counts_served_and_in_flight_and_sets_the_limit_event():
    b, clock = make(max_requests=2)
    t1, t2 = b.submit(rid(1), 1, 1), b.submit(rid(2), 1, 2)
    with pytest.raises(Rejected):
        b.submit(rid(3), 1, 3)
    clock.advance(1)
    b.take()
    b.complete(t1, 200, "ok")
    b.complete(t2, 400, "bad bundle")  # an error frees its slot
    assert not b.limit_event.is_set()
    t3 = b.submit(rid(3), 1, 3)
    clock.advance(1)
    b.take()
    b.complete(t3, 200, "ok")
    assert b.limit_event.is_set() and b.served == 2
    with pytest.raises(Rejected) as e:
        b.submit(rid(4), 1, 4)
    assert e.value.code == "limit_reached"


def test_duplicate_request_ids_are_refused_while_the_first_is_live():
    b, clock = make()
    t = b.submit(rid(7), 1, "first")
    with pytest.raises(Rejected) as e:
        b.submit(rid(7), 1, "second")
    assert e.value.code == "duplicate_request"
    clock.advance(1)
    b.take()
    b.complete(t, 200, "ok")
    assert b.submit(rid(7), 1, "again, later").payload == "again, later"


def test_queue_bound_and_draining():
    b, _ = make(max_queue=2)
    b.submit(rid(1), 1, 1)
    b.submit(rid(2), 1, 2)
    with pytest.raises(Rejected) as e:
        b.submit(rid(3), 1, 3)
    assert e.value.code == "overloaded"
    b.drain()
    with pytest.raises(Rejected) as e:
        b.submit(rid(4), 1, 4)
    assert e.value.code == "draining"
    batch = b.take()  # draining: no waiting for company
    assert len(batch.tickets) == 2


def test_rows_outside_the_batch_are_a_caller_bug():
    b, _ = make()
    with pytest.raises(ValueError):
        b.submit(rid(1), 9, "x")
    with pytest.raises(ValueError):
        b.submit(rid(1), 0, "x")


def test_wait_cancels_when_the_client_goes_away():
    b, _ = make()
    t = b.submit(rid(1), 1, "x")
    status, _ = b.wait(t, gone=lambda: True, poll=0.01)
    assert status == 504 and t.cancelled == "gone" and b.take() is None and b.idle()


def test_wait_returns_the_answer_from_another_thread():
    b, clock = make()
    t = b.submit(rid(1), 1, "x")
    stop = threading.Event()

    def loop():
        batch = b.next_batch(stop, poll=0.01)
        for tk in batch.tickets:
            b.complete(tk, 200, tk.payload.upper())

    clock.advance(1)
    th = threading.Thread(target=loop)
    th.start()
    assert b.wait(t, poll=0.01) == (200, "X")
    th.join(5)
    stop.set()
    assert b.next_batch(stop) is None


# -- two-phase answers and counts recorded elsewhere (maxRequests across coordinator restarts) --------
def test_sync_served_raises_the_count_never_lowers_it_and_sets_the_limit():
    b, _ = make(max_requests=3)
    b.sync_served(2)
    assert b.served == 2 and not b.limit_event.is_set()
    b.sync_served(1)
    assert b.served == 2
    b.submit(rid(1), 1, "a")
    with pytest.raises(Rejected) as e:  # 2 recorded + 1 admitted
        b.submit(rid(2), 1, "b")
    assert e.value.code == "limit_reached"
    b.sync_served(3)
    assert b.limit_event.is_set()


def test_settled_answers_are_not_cancelled_are_not_double_counted_and_go_back_on_failure():
    b, clock = make(max_requests=2)
    t1, t2 = b.submit(rid(1), 1, "a"), b.submit(rid(2), 1, "b")
    clock.advance(1)
    batch = b.take()
    assert b.settle([(t1, 200, "x"), (t2, 400, "bad")]) == 1  # only successes settle
    assert t1.state == SETTLING and t2.state == RUNNING
    b.cancel(t1, "timeout")
    assert t1.state == SETTLING and not t1.done.is_set()
    assert b.served == 0 and b.outstanding == 2  # admission counts it once (as outstanding)
    b.fail(batch)  # the count could not be recorded: both run again, in order
    assert [t.state for t in (t1, t2)] == [QUEUED, QUEUED] and b.served == 0
    clock.advance(1)
    batch = b.take()
    assert b.settle([(t1, 200, "x"), (t2, 200, "y")]) == 2
    b.complete(t1, 200, "x")
    b.complete(t2, 200, "y")
    assert b.served == 2 and b.limit_event.is_set()


def test_a_settling_ticket_past_its_deadline_waits_for_its_answer():
    b, clock = make(timeout=1.0)
    t = b.submit(rid(1), 1, "a")
    clock.advance(0.01)
    b.take()
    b.settle([(t, 200, "x")])
    clock.advance(5)  # past the deadline while its count is being recorded
    threading.Timer(0.1, lambda: b.complete(t, 200, "x")).start()
    assert b.wait(t) == (200, "x") and t.cancelled is None
