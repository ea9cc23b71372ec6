"""The serving coordinator's batch pipeline: pure stepping logic (no TF, no HTTP, injected stages).

A batch passes three stages: ingress (the workers open and spool its inputs), graph (the
private computation) and finish (the workers seal its outputs, the answers are released). One
step runs, at the same time, finish of the oldest batch in flight, graph of the next and
ingress of a new one: at most one batch per stage, so at most three in flight, and every
stage sees the batches in the order they entered (the graph strictly one after another,
answers released in batch order). With no executor, or one stage busy, a step runs inline.

A stage that raises fails the whole step: every batch still in flight that was not finished
is handed back in Failed (oldest first) and the pipeline is empty again; a batch that had
passed a stage without error is given to `abandon` (to forget its spooled data). The caller
decides what a failure means (retry the batches in order, or refuse them).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Generic, TypeVar

B = TypeVar("B")  # a batch as the caller knows it
X = TypeVar("X")  # a batch in flight (what ingress returns and graph passes on)


class Failed(Exception):
    """A step failed: `batches` were in flight and not finished (oldest first); `errors` are what
    the stages raised, oldest batch first."""

    def __init__(self, batches: list[Any], errors: list[BaseException]) -> None:
        super().__init__("; ".join(f"{type(e).__name__}: {e}" for e in errors))
        self.batches, self.errors = batches, errors


class _Outcome:
    __slots__ = ("error", "ran", "value")

    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.ran = False

    def run(self, fn: Callable[[], Any]) -> None:
        self.ran = True
        try:
            self.value = fn()
        except BaseException as e:  # noqa: BLE001 - handed back in Failed
            self.error = e


class Pipeline(Generic[B, X]):
    def __init__(self, ingress: Callable[[B], X], graph: Callable[[X], X], finish: Callable[[X], None],
                 abandon: Callable[[X], None], executor: Executor | None = None) -> None:
        self.ingress, self.graph, self.finish, self.abandon = ingress, graph, finish, abandon
        self.executor = executor
        self.front: tuple[B, X] | None = None  # ingressed, its graph next
        self.back: tuple[B, X] | None = None  # through its graph, its finish next

    @property
    def empty(self) -> bool:
        return self.front is None and self.back is None

    def in_flight(self) -> list[B]:
        """The batches in flight, oldest first."""
        return [s[0] for s in (self.back, self.front) if s is not None]

    def step(self, batch: B | None = None) -> None:
        """Finish the oldest batch, run the graph of the next, take `batch` in: all at once.
        Raises Failed (the pipeline is then empty)."""
        back, front = self.back, self.front
        jobs: list[tuple[_Outcome, Callable[[], Any]]] = []  # oldest batch first
        fin = gra = ing = None
        if back is not None:
            fin = _Outcome()
            jobs.append((fin, lambda: self.finish(back[1])))
        if front is not None:
            gra = _Outcome()
            jobs.append((gra, lambda: self.graph(front[1])))
        if batch is not None:
            ing = _Outcome()
            jobs.append((ing, lambda: self.ingress(batch)))
        if self.executor is None or len(jobs) <= 1:
            for out, fn in jobs:  # oldest first; after a failure the younger ones do not run
                out.run(fn)
                if out.error is not None:
                    break
        else:  # the graph (the longest stage) runs on this thread, the others beside it
            futs = [(o, self.executor.submit(o.run, fn)) for o, fn in jobs if o is not gra]
            for o, fn in jobs:
                if o is gra:
                    o.run(fn)
            for _, f in futs:
                f.result()  # _Outcome.run keeps what the stage raised
        errors = [o.error for o, _ in jobs if o.error is not None]
        if not errors:
            self.back = (front[0], gra.value) if front is not None and gra is not None else None
            self.front = (batch, ing.value) if batch is not None and ing is not None else None
            return
        self.front = self.back = None
        lost: list[B] = []
        if back is not None and fin is not None and fin.error is not None:
            lost.append(back[0])  # (a finished batch is answered: it is not lost)
        if front is not None and gra is not None:
            lost.append(front[0])
            if not gra.ran:
                self.abandon(front[1])  # its graph never ran: forget its ingress
            elif gra.error is None:
                self.abandon(gra.value)
        if batch is not None and ing is not None:
            lost.append(batch)
            if ing.ran and ing.error is None:
                self.abandon(ing.value)
        raise Failed(lost, errors)

    def drain(self) -> None:
        """Step until nothing is in flight (raises Failed like step)."""
        while not self.empty:
            self.step(None)
