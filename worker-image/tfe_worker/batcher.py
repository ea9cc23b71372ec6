"""The coordinator's dynamic batcher: pure queueing logic (no TF, no HTTP, an injected clock).

Requests are admitted (or refused with a reason), wait in FIFO order, and leave in batches
of at most max_batch rows padded to the smallest bucket that fits. A batch forms as soon as
it is full, the next request would not fit (it is carried to the head of the next batch), or
its oldest request waited max_wait. A request whose client gave up or whose deadline passed
is cancelled: if it is still queued it never runs; if it is running its result is discarded;
either way it stops counting toward admission (maxRequests). A batch the workers failed goes
back to the head of the queue in its order, until a request has failed max_attempts times.

Answering a batch has two phases so that a count can be recorded elsewhere (on the workers)
before any answer is released: settle() picks the successful answers whose clients still wait
(from then on they can no longer be cancelled), the caller records them, then complete()
releases them (or fail() puts them back when they could not be recorded). sync_served() raises
the count to what was recorded elsewhere (a previous coordinator's count, another coordinator's).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

QUEUED, RUNNING, SETTLING, DONE = "queued", "running", "settling", "done"


def default_buckets(max_batch: int) -> tuple[int, ...]:
    return tuple([x for x in (1, 4, 16, 64, 256) if x < max_batch] + [max_batch])


@dataclass(frozen=True)
class BatcherOptions:
    max_batch: int = 32  # rows per batch (and per request)
    buckets: tuple[int, ...] = ()  # graph sizes; default 1, 4, 16, 64, 256 below max_batch, and max_batch
    max_wait: float = 0.005  # seconds the oldest queued request waits for company
    timeout: float = 120.0  # seconds from admission to answer, else 504 and dropped
    max_queue: int = 1024  # requests waiting (not running); beyond that 503 overloaded
    max_requests: int | None = None  # successful predictions before the endpoint stops
    max_attempts: int = 3  # worker failures a request may see before 503 workers_unavailable

    def resolved_buckets(self) -> tuple[int, ...]:
        b = sorted(set(self.buckets or default_buckets(self.max_batch)) | {self.max_batch})
        if b[0] < 1 or b[-1] > self.max_batch:
            raise ValueError("buckets must lie within 1..max_batch")
        return tuple(b)


class Rejected(Exception):
    """Admission refused: code is a wire error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(eq=False)
class Ticket(Generic[T]):
    """One admitted request."""

    request_id: str
    rows: int
    payload: T
    enqueued: float
    deadline: float
    state: str = QUEUED
    attempts: int = 0
    cancelled: str | None = None  # "timeout" or "gone"
    result: tuple[int, Any] | None = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Batch(Generic[T]):
    tickets: list[Ticket[T]]
    bucket: int

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tickets)


class Batcher(Generic[T]):
    def __init__(self, opts: BatcherOptions, clock: Callable[[], float] = time.monotonic) -> None:
        self.opts = opts
        self.buckets = opts.resolved_buckets()
        self.clock = clock
        self.cond = threading.Condition()
        self.queue: collections.deque[Ticket[T]] = collections.deque()
        self.live: dict[str, Ticket[T]] = {}  # request id -> queued or running ticket
        self.served = 0
        self.draining = False
        self.limit_event = threading.Event()

    # -- admission ----------------------------------------------------------------------------
    @property
    def outstanding(self) -> int:
        """Admitted requests not answered yet (queued or running, not cancelled)."""
        with self.cond:
            return len(self.live)

    def queued(self) -> int:
        with self.cond:
            return len(self.queue)

    def submit(self, request_id: str, rows: int, payload: T) -> Ticket[T]:
        if not 1 <= rows <= self.opts.max_batch:
            raise ValueError(f"rows {rows} outside 1..{self.opts.max_batch}")  # validated at the endpoint
        with self.cond:
            if self.draining:
                raise Rejected("draining", "the endpoint is shutting down")
            mr = self.opts.max_requests
            if mr is not None and self.served + len(self.live) >= mr:
                raise Rejected("limit_reached", f"this endpoint has served its {mr} requests")
            if request_id in self.live:
                raise Rejected("duplicate_request", f"request {request_id} is already queued or running")
            if len(self.queue) >= self.opts.max_queue:
                raise Rejected("overloaded", f"{len(self.queue)} requests are waiting; retry later")
            now = self.clock()
            t = Ticket(request_id, rows, payload, now, now + self.opts.timeout)
            self.queue.append(t)
            self.live[request_id] = t
            self.cond.notify_all()
            return t

    def drain(self) -> None:
        """Admit nothing more; what is admitted still runs."""
        with self.cond:
            self.draining = True
            self.cond.notify_all()

    # -- ending a ticket ----------------------------------------------------------------------
    def _finish(self, t: Ticket[T], status: int, payload: Any) -> None:
        if t.state == DONE:
            return
        t.state = DONE
        t.result = (status, payload)
        if self.live.get(t.request_id) is t:
            del self.live[t.request_id]
        t.done.set()
        self.cond.notify_all()

    def cancel(self, t: Ticket[T], reason: str) -> None:
        """The client gave up (reason "gone") or the deadline passed ("timeout"). A settling ticket
        is past cancelling: it counts, and its answer follows within one record call."""
        with self.cond:
            if t.state in (DONE, SETTLING):
                return
            t.cancelled = reason
            if t.state == QUEUED:
                try:
                    self.queue.remove(t)
                except ValueError:
                    pass
            self._finish(t, 504, None)

    def settle(self, answers: list[tuple[Ticket[T], int, Any]]) -> int:
        """Phase one of answering a batch: the successful answers whose clients still wait become
        settling (no longer cancellable); returns how many. Record that many, then complete() each
        answer, or fail() the batch when they could not be recorded (settling tickets go back)."""
        with self.cond:
            n = 0
            for t, status, _ in answers:
                if status == 200 and t.state == RUNNING:
                    t.state = SETTLING
                    n += 1
            return n

    def complete(self, t: Ticket[T], status: int, payload: Any) -> bool:
        """A batch's answer for one ticket. False when nobody waits for it any more (discarded)."""
        with self.cond:
            if t.state == DONE:
                return False
            if status == 200:
                self.served += 1
                self._check_limit()
            self._finish(t, status, payload)
            return True

    def sync_served(self, served: int) -> None:
        """Raise the count of successful predictions to one recorded elsewhere (never lowers it)."""
        with self.cond:
            self.served = max(self.served, served)
            self._check_limit()
            self.cond.notify_all()

    def _check_limit(self) -> None:
        mr = self.opts.max_requests
        if mr is not None and self.served >= mr:
            self.limit_event.set()

    def fail(self, batch: Batch[T], give_up: Any = None) -> None:
        """The workers failed this batch: retry it first, in order; a request that failed
        max_attempts times is answered 503 with give_up."""
        with self.cond:
            back = []
            for t in batch.tickets:
                if t.state == DONE:
                    continue
                t.attempts += 1
                if t.attempts >= self.opts.max_attempts:
                    self._finish(t, 503, give_up)
                else:
                    t.state = QUEUED
                    back.append(t)
            self.queue.extendleft(reversed(back))
            self.cond.notify_all()

    # -- forming batches ----------------------------------------------------------------------
    def reject_queued(self, status: int, payload: Any) -> int:
        """Answer every queued request now with (status, payload); how many were answered."""
        with self.cond:
            n = 0
            while self.queue:
                t = self.queue.popleft()
                if t.state != DONE:
                    self._finish(t, status, payload)
                    n += 1
            return n

    def _expire(self, now: float) -> None:
        for t in [t for t in self.queue if now >= t.deadline]:
            self.queue.remove(t)
            t.cancelled = "timeout"
            self._finish(t, 504, None)

    def _candidate(self) -> tuple[list[Ticket[T]], bool]:
        """The head of the queue that fits one batch, and whether the next request was left over."""
        out: list[Ticket[T]] = []
        rows = 0
        for t in self.queue:
            if rows + t.rows > self.opts.max_batch:
                return out, True
            out.append(t)
            rows += t.rows
        return out, False

    def take(self) -> Batch[T] | None:
        """A batch if one is ready now, else None (never blocks)."""
        with self.cond:
            now = self.clock()
            self._expire(now)
            if not self.queue:
                return None
            tickets, carried = self._candidate()
            rows = sum(t.rows for t in tickets)
            # wait for company only while someone could join: with every live request already in
            # this batch (e.g. one sequential client), waiting max_wait only adds latency
            alone = len(tickets) >= len(self.live)
            if not (carried or alone or rows >= self.opts.max_batch
                    or now - self.queue[0].enqueued >= self.opts.max_wait or self.draining):
                return None
            for t in tickets:
                self.queue.popleft()
                t.state = RUNNING
            return Batch(tickets, next(b for b in self.buckets if b >= rows))

    def next_batch(self, stop: threading.Event, poll: float = 0.5) -> Batch[T] | None:
        """Block until a batch is ready (or stop is set: None)."""
        with self.cond:
            while not stop.is_set():
                b = self.take()
                if b is not None:
                    return b
                delay = poll
                if self.queue:
                    delay = min(poll, max(0.0005, self.queue[0].enqueued + self.opts.max_wait - self.clock()))
                self.cond.wait(delay)
        return None

    def wait(self, t: Ticket[T], gone: Callable[[], bool] = lambda: False, poll: float = 0.25) -> tuple[int, Any]:
        """Block a handler until its ticket is answered, its client goes away, or its deadline passes
        (a settling ticket is answered shortly after its deadline rather than cancelled)."""
        while not t.done.wait(max(0.01, min(poll, t.deadline - self.clock()))):
            if gone():
                self.cancel(t, "gone")
            elif self.clock() >= t.deadline:
                self.cancel(t, "timeout")
        assert t.result is not None
        return t.result

    def idle(self) -> bool:
        with self.cond:
            return not self.live
