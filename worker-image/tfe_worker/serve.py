"""The serving coordinator (and, in one process, the client endpoint).

It rebuilds the private model from the share pairs stored on the three workers (no model
file, no plaintext weight), warms up the smallest batch bucket (the rest after it is ready, between
batches; --warm all: every bucket first), then serves client/PROTOCOL.md with dynamic batching.
It only ever handles ciphertext: each request carries three bundles, each encrypted to one
worker; the workers decrypt their own pair into memory, the private graph runs on them, and
each worker encrypts its output pair back to the client.

Parts: Batcher (batcher.py: queue, deadlines, admission, pure), WorkerPool (one keep-alive
urllib3 pool per worker), Engine (TF Encrypted), Coordinator (ties them together and is the
endpoint's Backend), EndpointApp (endpoint.py: the HTTP API).

maxRequests holds across coordinator restarts and pod replacements: the count of successful
predictions lives on the workers' disks (player.ServedStore), per model and count scope (default
`maxRequests=N`, so a changed limit starts a new count; --count-scope names another). A
(re)connecting coordinator starts from the largest count any of the three workers holds (a
worker that lost its disk or missed a report can only hold less; one that claims more can at
worst stop the model, which it could anyway by refusing to compute). Before a batch's
successful answers are released, the coordinator records them on the workers (ServedReport)
and releases them only once at least one worker acknowledged: a prediction is never delivered
uncounted. A crash between recording and releasing counts at most one batch that was never
delivered.

Failure is attributed: a worker that refuses one item (bundle it cannot open) fails that
request alone with a 400; a worker that refuses a whole batch fails that batch's requests
with a 502 and nothing else; only transport errors, worker 5xx and TF errors count as worker
failure, which drops the engine, reconnects, reloads the shares and retries the batch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import urllib3
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tfe_client import wire
from tfe_client.client import seal_request
from tfe_client.errors import ProtocolError
from tfe_worker import cpu, workers
from tfe_worker.batcher import Batch, Batcher, BatcherOptions, Rejected, Ticket
from tfe_worker.config import Config
from tfe_worker.endpoint import EndpointApp, EndpointOptions, ServeMetrics, read_token
from tfe_worker.httpapp import HTTPOptions, Server, split_hostport, start_metrics_server
from tfe_worker.pipeline import Failed, Pipeline

log = logging.getLogger("tfe_worker.serve")
R = TypeVar("R")


class WorkerFailure(Exception):
    """A player did not do its part (unreachable, restarted, lost the batch, 5xx, TF error)."""


class GenerationGone(Exception):
    """A player no longer holds the served share generation (it lost its disk, or a newer
    generation replaced it: docs/recovery.md). Requests get 503 not_ready until a coordinator
    serves a generation all three hold (the operator rolls the serve Deployment to it)."""


class WorkerRefused(Exception):
    """A player answered 4xx about a whole batch message: a coordinator/worker mismatch, not a failure."""

    def __init__(self, worker: str, status: int, err: wire.ErrorBody) -> None:
        super().__init__(f"{worker} refused: HTTP {status} {err.code}: {err.message[:200]}")
        self.worker, self.status, self.err = worker, status, err


class WorkerPool:
    """One keep-alive HTTP connection pool per player; calls to all three run in parallel."""

    def __init__(self, addrs: list[str], timeout: float = 60.0) -> None:
        self.names = list(wire.WORKERS)
        self.pools = []
        for a in addrs:
            host, port = split_hostport(a)
            # up to three calls at once per player: one batch's ingress, another's egress, a count record
            self.pools.append(urllib3.HTTPConnectionPool(host, port, maxsize=3, block=False, retries=False,
                                                         timeout=urllib3.Timeout(connect=5.0, read=timeout)))
        self.executor = ThreadPoolExecutor(3 * len(addrs), thread_name_prefix="worker-pool")

    def call(self, i: int, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        data = json.dumps(body.to_json(), separators=(",", ":")).encode() if body is not None else None
        pool = self.pools[i]
        for attempt in (0, 1):
            try:
                r = pool.request(method, path, body=data, headers={"Content-Type": "application/json"},
                                 timeout=timeout if timeout is not None else pool.timeout)
                break
            except urllib3.exceptions.ProtocolError as e:  # a kept-alive connection the worker closed
                if attempt:
                    raise WorkerFailure(f"{self.names[i]} unreachable: {type(e).__name__}") from None
            except (urllib3.exceptions.HTTPError, OSError) as e:
                raise WorkerFailure(f"{self.names[i]} unreachable: {type(e).__name__}") from None
        try:
            obj = json.loads(r.data) if r.data else None
        except ValueError:
            raise WorkerFailure(f"{self.names[i]} {path}: HTTP {r.status}, not JSON") from None
        if r.status == 200:
            return obj
        if 400 <= r.status < 500:
            try:
                err = wire.ErrorBody.parse(obj)
            except ProtocolError:
                err = wire.ErrorBody("internal", "malformed error body")
            raise WorkerRefused(self.names[i], r.status, err)
        raise WorkerFailure(f"{self.names[i]} {path} -> HTTP {r.status}")

    def all(self, fn: Callable[[int], R]) -> list[R]:
        return list(self.executor.map(fn, range(len(self.pools))))

    def drop(self, bid: str) -> None:
        """Best effort: forget a batch's spool files everywhere."""
        def one(i: int) -> None:
            try:
                self.call(i, "DELETE", f"/v1/batches/{bid}", timeout=2.0)
            except (WorkerFailure, WorkerRefused):
                pass

        self.all(one)


def process_age() -> float:
    """Seconds since this process started (from /proc; 0.0 where that is not readable)."""
    fields = cpu.stat_fields("self")
    try:
        if fields is None:
            return 0.0
        start_ticks = int(fields[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class Phases:
    """Durations of a cold start's phases, for one INFO line (names and seconds only)."""

    def __init__(self) -> None:
        self.t = time.monotonic()
        self.done: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.done.append((name, now - self.t))
        self.t = now

    def __str__(self) -> str:
        return ", ".join(f"{n} {d:.2f}" for n, d in self.done)


class Engine:
    """TF Encrypted state of one coordinator connection: protocol, private model, graphs."""

    def __init__(self, config: Config, coordinator: str, manifest: wire.Manifest, protocol: str,
                 buckets: tuple[int, ...]) -> None:
        self.config, self.coordinator, self.manifest = config, coordinator, manifest
        self.protocol, self.buckets = protocol, buckets
        self.fns: dict[int, Any] = {}
        self.calls = 0
        self.prot: Any = None

    def build(self, phases: Phases | None = None) -> None:
        phases = phases or Phases()
        import tensorflow as tf

        from tfe_worker import runtime

        phases.mark("import TF")
        m = self.manifest
        prefix = f"models/{m.name}/{m.generation}"
        self.prot = prot = runtime.connect(self.config, self.coordinator, self.protocol)
        phases.mark("connect")
        raw = m.to_json()
        model = runtime.build_model(raw, max(self.buckets))
        runtime.load_weights(prot, model, raw, prefix)
        phases.mark("load shares")
        feat = list(m.input_shape)
        self.calls = 0

        def make(bucket: int) -> Any:
            # autograph=False: TF Encrypted's Python branches on Python values only, and AutoGraph
            # would convert every TF Encrypted function the trace calls (seconds of each cold start).
            @tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64)],  # type: ignore[untyped-decorator]
                         autograph=False)
            def run(batch_id: Any, call: Any) -> Any:
                prot._call = call  # fresh masks for this call (FreshABY3)
                try:
                    x = runtime.read_raw_pair(prot, tf.strings.join(["spool/in/", batch_id, ".bin"]), [bucket] + feat)
                    y = model(x)
                    runtime.write_pair(prot, y, tf.strings.join(["spool/out/", batch_id, ".tp"]))
                    return tf.constant(True)
                finally:
                    prot._call = None

            return run

        self.fns = {b: make(b) for b in self.buckets}

    def trace(self, bucket: int) -> None:
        """Trace a bucket's graph now (its first call still instantiates it on the players)."""
        self.fns[bucket].get_concrete_function()

    def traced(self, bucket: int) -> bool:
        return bool(self.fns[bucket].experimental_get_tracing_count())

    def run(self, batch_id: str, bucket: int) -> None:
        import tensorflow as tf

        self.calls += 1  # strictly increasing per connection: never reuses a mask seed
        self.fns[bucket](tf.constant(batch_id), tf.constant(self.calls, tf.int64))


def max_ingress_body(max_batch: int, feature_shape: tuple[int, ...]) -> int:
    """Upper bound of one ingress body when every request has one row (the most per-item overhead)."""
    per_row = wire.ciphertext_bytes((1, *feature_shape))
    return max_batch * ((per_row + 2) // 3 * 4 + 400) + 1024


# off: measured with make bench --pipeline-compare on 2 shared cores, three batches in flight gave fewer
# predictions/s than one at a time (README, Performance)
PIPELINE_DEFAULT = False


@dataclass
class Flight:
    """A batch between the pipeline's stages (tfe_worker.pipeline)."""

    batch: Batch[wire.PredictRequest]
    bid: str
    count: bool  # observe its stage times (not a warm-up)
    failed: dict[int, wire.ErrorBody]  # items a worker refused at ingress
    answers: list[tuple[Ticket[wire.PredictRequest], int, Any]] | None = None  # set: answered without a graph


@dataclass(frozen=True)
class ServeOptions:
    name: str
    coordinator: str  # host:port the workers reach this process's TF server at
    generation: int | None = None  # default: newest complete generation
    protocol: str = "ABY3"
    batch: BatcherOptions = field(default_factory=BatcherOptions)
    ready_timeout: float = 600.0
    worker_timeout: float = 60.0
    count_scope: str | None = None  # where the served count is kept on the workers; default: by the limit
    warm_all: bool = False  # trace every bucket before ready (default: the smallest, the rest after)
    pipeline: bool = PIPELINE_DEFAULT  # ingress of one batch and egress of another beside a graph


class Coordinator:
    """Batches admitted requests through the workers; the Backend of the endpoint app."""

    def __init__(self, config: Config, opts: ServeOptions, metrics: ServeMetrics) -> None:
        self.config, self.opts, self.name = config, opts, opts.name
        self.batcher: Batcher[wire.PredictRequest] = Batcher(opts.batch)
        self.scope = wire.check_scope(opts.count_scope or wire.count_scope(opts.batch.max_requests))
        self.buckets = self.batcher.buckets
        self.pool = WorkerPool([p.http for p in config.players], opts.worker_timeout)
        self._recorder = ThreadPoolExecutor(1, thread_name_prefix="served-count")  # in order, off the hot path
        self._stages = ThreadPoolExecutor(2, thread_name_prefix="stage")  # ingress and finish beside a graph
        self.stop = threading.Event()
        self.is_ready = False
        self.gone: str | None = None  # set while the served generation is missing on a player
        self.fatal: str | None = None
        self.manifest: wire.Manifest | None = None
        self._info: wire.ModelInfo | None = None
        self.engine: Engine | None = None
        # The batch loop and the background warm-up take turns on TF: TF Encrypted's tracing is not thread-safe.
        self._tf = threading.Lock()
        self.m = metrics
        r = metrics.registry
        self.m_batch = Histogram("tfe_serve_batch_rows", "Rows per private graph call", registry=r,
                                 buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.m_stage = Histogram("tfe_serve_stage_seconds", "Time per batch in each stage: ingress (workers "
                                 "decrypt and spool), graph (the private computation), egress (workers "
                                 "encrypt outputs), record (workers write the served count)", ["stage"], registry=r,
                                 buckets=(.001, .0025, .005, .01, .015, .02, .03, .05, .075, .1, .2, .5, 1))
        self.m_queue = Gauge("tfe_serve_queue_depth", "Requests waiting for a batch", registry=r)
        self.m_reconnects = Counter("tfe_serve_reconnects_total", "Reconnects to the workers", registry=r)
        self.m_ready = Gauge("tfe_serve_ready", "1 when serving", registry=r)
        self.m_gen = Gauge("tfe_serve_share_generation", "Share generation being served", registry=r)
        self.m_served = Gauge("tfe_serve_requests_served", "Successful predictions in this coordinator's count "
                              "scope, as recorded on the workers (survives restarts)", registry=r)

    @property
    def limit_event(self) -> threading.Event:
        return self.batcher.limit_event

    # -- Backend ----------------------------------------------------------------------------------
    def info(self) -> wire.ModelInfo | None:
        return self._info

    def ready(self) -> bool:
        return self.is_ready and not self.limit_event.is_set()

    def status(self) -> wire.Status:
        return wire.Status(self.is_ready, self.name, self.batcher.served, self.opts.batch.max_requests,
                           self.limit_event.is_set(), self.manifest.generation if self.manifest else None,
                           self.batcher.draining)

    def predict(self, req: wire.PredictRequest, gone: Callable[[], bool]) -> tuple[int, Any]:
        if self.gone is not None:
            return 503, wire.ErrorBody("not_ready", self.gone)
        try:
            t = self.batcher.submit(req.request_id, req.rows, req)
        except Rejected as e:
            return wire.ERRORS[e.code][0], wire.ErrorBody(e.code, e.message)
        self.m_queue.set(self.batcher.queued())
        status, payload = self.batcher.wait(t, gone)
        if t.cancelled is not None:
            return 504, wire.ErrorBody("timeout", "the request was not served in time; it will not run")
        return status, payload

    # -- model loading ----------------------------------------------------------------------------
    def connect(self) -> None:
        """(Re)build the private model from the workers' shares and warm up every bucket."""
        self.is_ready = False
        self.m_ready.set(0)
        phases = Phases()
        workers.wait_ready(self.config, self.opts.ready_timeout, self.stop)
        phases.mark("workers ready")
        gen = self.opts.generation
        if gen is None:
            gen = workers.latest_generation(self.config, self.name)
        else:
            self._wait_generation(gen)
            phases.mark("generation on the workers")
        try:
            man = workers.manifest_msg(self.config, self.name, gen)
        except workers.HTTPStatusError as e:
            if e.status == 404:  # no_such_generation on a player
                self._generation_gone(f"a worker lacks share generation {gen}")
            raise
        need = max_ingress_body(self.opts.batch.max_batch, man.input_shape)
        if need > wire.MAX_INGRESS_BODY:
            self.fatal = (f"--max-batch-size {self.opts.batch.max_batch} is too large for input "
                          f"{list(man.input_shape)}: a batch would need {need} bytes per worker, over the "
                          f"workers' limit of {wire.MAX_INGRESS_BODY}")
            self.stop.set()
            raise ValueError(self.fatal)
        keys = workers.public_keys(self.config)
        phases.mark("manifest and keys")
        self.manifest = man
        self._info = wire.ModelInfo(self.name, self.opts.protocol, man.generation, man.input_shape,
                                    man.output_shape, man.postprocess, man.fixed_point, self.opts.batch.max_batch,
                                    tuple(keys), man.model_digest)
        t0 = time.monotonic()
        eng = Engine(self.config, self.opts.coordinator, man, self.opts.protocol, self.buckets)
        eng.build(phases)
        self.engine = eng
        built = time.monotonic() - t0
        warm = list(self.buckets) if self.opts.warm_all else list(self.buckets[:1])
        for b in warm:
            eng.trace(b)
            phases.mark(f"trace {b}")
            self._warmup(b)
            phases.mark(f"first call {b}")
        self._load_served()  # after the warm-up: includes what a previous coordinator served meanwhile
        phases.mark("served count")
        self.m_gen.set(gen)
        log.info("model %s generation %d loaded from worker shares; bucket(s) %s warm in %.1fs (connect and load "
                 "%.1fs)", self.name, gen, warm, time.monotonic() - t0, built)
        log.info("ready %.2fs after process start; phases (s): %s", process_age(), phases)
        self.gone = None
        self.is_ready = True
        self.m_ready.set(1)
        cold = [b for b in self.buckets if b not in warm]
        if cold:
            threading.Thread(target=self._warm_rest, args=(eng, cold), name="warm-buckets", daemon=True).start()

    def _wait_generation(self, gen: int) -> None:
        """Wait, quietly, until all three players hold the generation to serve: the operator
        starts the serve pods of a model's first share beside its share Job. A generation that
        went away (docs/recovery.md) is waited for the same way (requests keep getting 503
        not_ready meanwhile) until the operator rolls this Deployment to the new one."""
        def waiting(missing: list[str]) -> None:
            log.info("waiting for share generation %d of model %s: not (yet) complete on %s", gen, self.name,
                     ", ".join(missing))

        t0 = time.monotonic()
        workers.wait_generation(self.config, self.name, gen, self.opts.ready_timeout, self.stop, waiting)
        if time.monotonic() - t0 > 1.0:
            log.info("share generation %d of model %s is on all three workers (waited %.1fs)", gen, self.name,
                     time.monotonic() - t0)

    def _warm_rest(self, eng: Engine, cold: list[int]) -> None:
        """Warm the larger buckets once ready, one at a time between batches. A batch that needs a
        bucket still cold traces it on the batch loop, as a warm-up would."""
        t0 = time.monotonic()
        for b in cold:
            with self._tf:
                if self.stop.is_set() or self.engine is not eng:
                    return  # reconnected or stopping: the new engine warms its own
                if eng.traced(b):
                    continue
                try:
                    self._warmup(b)
                except Exception as e:  # noqa: BLE001 - the batch loop meets the same failure and reconnects
                    log.warning("background warm-up of bucket %d failed: %s", b, _short(e))
                    return
        log.info("bucket(s) %s warm in the background in %.1fs", cold, time.monotonic() - t0)

    def _generation_gone(self, why: str) -> None:
        """Stop serving: every request gets 503 not_ready (clients retry) until a coordinator on a
        generation all three players hold takes over, or this one reconnects to it."""
        if self.gone is None:
            log.warning("%s: the model moves to another share generation; answering 503 not_ready", why)
        self.gone = f"the model is moving to another share generation ({why}); retry shortly"
        self.is_ready = False
        self.m_ready.set(0)
        self.engine = None

    def _load_served(self) -> None:
        """Start from the largest served count of this scope any worker recorded."""
        def one(i: int) -> int:
            try:
                return wire.ServedCounts.parse(self.pool.call(i, "GET", f"/v1/models/{self.name}/served")
                                               ).served(self.scope)
            except WorkerRefused as e:
                if e.err.code != "not_found":
                    raise WorkerFailure(str(e)) from None
                log.warning("%s keeps no served counts (an older worker image?): counting from 0 there", e.worker)
                return 0
            except ProtocolError as e:
                raise WorkerFailure(f"malformed served counts: {e}") from None

        counts = self.pool.all(one)
        self.batcher.sync_served(max(counts))
        self.m_served.set(self.batcher.served)
        log.info("model %s: %d successful prediction(s) recorded in count scope %s (workers: %s)%s", self.name,
                 self.batcher.served, self.scope, counts,
                 "; max-requests reached" if self.limit_event.is_set() else "")

    def _record(self, n: int, total: int | None = None) -> int:
        """Record n successful predictions on the workers before they are released (total: the count
        including them, default served + n); the largest count the workers acknowledged.
        WorkerFailure unless at least one worker wrote it to disk."""
        report = wire.ServedReport(self.scope, os.urandom(12).hex(), n,
                                   self.batcher.served + n if total is None else total)
        path = f"/v1/models/{self.name}/served"

        def one(i: int) -> int | None:
            try:
                return wire.ServedAck.parse(self.pool.call(i, "POST", path, report, timeout=10.0)).served
            except (WorkerFailure, WorkerRefused, ProtocolError) as e:
                log.warning("%s did not record %d served prediction(s): %s", wire.WORKERS[i], n, _short(e))
                return None

        acks = [a for a in self.pool.all(one) if a is not None]
        if not acks:
            raise WorkerFailure(f"no worker recorded {n} served prediction(s)")
        return max(acks)

    def _answer(self, answers: list[tuple[Ticket[wire.PredictRequest], int, Any]]) -> None:
        """Release a batch's answers; the successful ones only once the workers recorded them."""
        n = self.batcher.settle(answers)
        for t, status, payload in answers:
            if status != 200:
                self.batcher.complete(t, status, payload)
        recorded = None
        if n and self.opts.batch.max_requests is None:
            # no limit to enforce: the answers leave now, the count is recorded behind them
            # (for /v1/status across restarts; a crash may lose the last batch's count)
            for t, status, payload in answers:
                if status == 200:
                    self.batcher.complete(t, status, payload)
            self._recorder.submit(self._record_behind, n, self.batcher.served)
            return
        if n:
            t0 = time.perf_counter()
            recorded = self._record(n)
            self.m_stage.labels("record").observe(time.perf_counter() - t0)
        for t, status, payload in answers:
            if status == 200:
                self.batcher.complete(t, status, payload)
        if recorded is not None:
            self.batcher.sync_served(recorded)  # another coordinator may have served meanwhile

    def _record_behind(self, n: int, total: int) -> None:
        try:
            self.batcher.sync_served(self._record(n, total))
        except WorkerFailure as e:
            log.warning("served count not recorded: %s", _short(e))

    def _warmup(self, bucket: int) -> None:
        """Run the whole path once (encrypt zeros like a client would) so tracing happens now."""
        import numpy as np

        assert self.manifest is not None and self._info is not None
        zeros = self.manifest.fixed_point.encode(np.zeros((bucket, *self.manifest.input_shape)))
        req, _ = seal_request(self.name, list(self._info.worker_keys), zeros)
        now = time.monotonic()
        t = Ticket(req.request_id, req.rows, req, now, now + 600)
        ((_, status, payload),) = self._process(Batch([t], bucket), count=False)
        if status != 200:
            raise WorkerFailure(f"warm-up of bucket {bucket} failed: {status} {payload}")

    # -- the batch loop ---------------------------------------------------------------------------
    def run(self) -> None:
        """With --pipeline on, up to three batches are in flight: while one runs its private graph
        the next does its ingress and the previous its egress and answer (tfe_worker.pipeline);
        off, one batch at a time. The graph runs strictly one batch after another either way."""
        pipe: Pipeline[Batch[wire.PredictRequest], Flight] = Pipeline(
            self._ingress_stage, self._graph_locked, self._finish, lambda f: self.pool.drop(f.bid),
            self._stages if self.opts.pipeline else None)
        while not self.stop.is_set() or not pipe.empty:
            if pipe.empty and (self.engine is None or not self.is_ready):
                if self.stop.is_set():
                    return
                try:
                    self.m_reconnects.inc()
                    with self._tf:
                        self.connect()
                except Exception as e:  # noqa: BLE001 - keep trying; requests stay queued
                    if self.fatal:
                        log.error("%s", self.fatal)
                        return
                    if self.gone is not None:  # nothing queued can run here: clients retry elsewhere
                        self.batcher.reject_queued(503, wire.ErrorBody("not_ready", self.gone))
                    log.warning("reconnect failed: %s", _short(e))
                    self.stop.wait(2.0)
                continue
            batch: Batch[wire.PredictRequest] | None = None
            if self.stop.is_set():
                pass  # stopping: finish what is in flight
            elif pipe.empty:
                batch = self.batcher.next_batch(self.stop)
                if batch is None:
                    continue
            elif self.opts.pipeline:
                batch = self.batcher.take()  # never waits: the batches in flight go on
            if batch is not None:
                self.m_queue.set(self.batcher.queued())
            try:
                pipe.step(batch)
            except Failed as f:
                self._failed(f)
                continue
            self.m_served.set(self.batcher.served)

    def _failed(self, f: Failed) -> None:
        """A stage failed: every batch in flight and not answered is in f.batches (oldest first)."""
        batches: list[Batch[wire.PredictRequest]] = f.batches
        gone = next((e for e in f.errors if isinstance(e, GenerationGone)), None)
        if gone is not None:
            self._generation_gone(str(gone))
            err = wire.ErrorBody("not_ready", self.gone or str(gone))
            for b in batches:
                for t in b.tickets:
                    self.batcher.complete(t, 503, err)
            self.batcher.reject_queued(503, err)
            return
        # transport, worker 5xx or TF error: a worker failed
        log.warning("%d batch(es) of %d request(s) failed (%s); reconnecting and retrying", len(batches),
                    sum(len(b.tickets) for b in batches), _short(f.errors[0]))
        self.m.errors.labels("worker_failure").inc()
        self.is_ready = False
        self.m_ready.set(0)
        self.engine = None
        give_up = wire.ErrorBody("workers_unavailable", "the workers failed this request repeatedly")
        for b in reversed(batches):  # each goes back to the head of the queue: the oldest ends first
            self.batcher.fail(b, give_up)

    def _process(self, batch: Batch[wire.PredictRequest], count: bool = True
                 ) -> list[tuple[Ticket[wire.PredictRequest], int, Any]]:
        """One batch through every stage on this thread (the caller holds self._tf)."""
        f = self._ingress(batch, count)
        if f.answers is not None:
            return f.answers
        return self._egress(self._graph(f))

    def _ingress_stage(self, batch: Batch[wire.PredictRequest]) -> Flight:
        return self._ingress(batch, True)

    def _graph_locked(self, f: Flight) -> Flight:
        if f.answers is not None:
            return f
        with self._tf:  # the background warm-up takes turns with the graph
            return self._graph(f)

    def _finish(self, f: Flight) -> None:
        self._answer(f.answers if f.answers is not None else self._egress(f))

    def _ingress(self, batch: Batch[wire.PredictRequest], count: bool) -> Flight:
        """The workers open and spool the batch's inputs. A batch refused as a whole, or whose
        every item was refused, leaves answered (502 / 400); GenerationGone when a worker lacks
        the served generation."""
        assert self.manifest is not None
        man, tickets, bucket = self.manifest, batch.tickets, batch.bucket
        bid = os.urandom(12).hex()
        bodies = [wire.IngressRequest(bid, self.name, man.generation, bucket, man.input_shape, tuple(
            wire.IngressItem(t.payload.request_id, t.payload.shape, t.payload.ephemeral_key,
                             t.payload.bundles[i].sealed) for t in tickets)) for i in range(len(wire.WORKERS))]
        f = Flight(batch, bid, count, {})
        try:
            t0 = time.perf_counter()
            acks = self.pool.all(lambda i: wire.IngressAck.parse(self.pool.call(i, "POST", "/v1/ingress", bodies[i])))
            if count:
                self.m_stage.labels("ingress").observe(time.perf_counter() - t0)
            for w, ack in zip(wire.WORKERS, acks):
                for fl in ack.failed:
                    if 0 <= fl.index < len(tickets) and fl.index not in f.failed:
                        f.failed[fl.index] = wire.ErrorBody(fl.code, f"{w} rejected its bundle: {fl.message}")
            if len(f.failed) == len(tickets):  # nothing left to compute
                self.pool.drop(bid)
                f.answers = [(t, 400, f.failed[k]) for k, t in enumerate(tickets)]
            return f
        except WorkerRefused as e:  # an ingress refused as a whole: this batch fails, nothing else
            self.pool.drop(bid)
            if e.err.code == "no_such_generation":
                raise GenerationGone(f"{e.worker} lacks share generation {man.generation}") from None
            log.error("batch %s refused: %s", bid, e)
            err = wire.ErrorBody("worker_refused", f"{e.worker} refused the batch: {e.err.code}")
            f.answers = [(t, 502, err) for t in tickets]
            return f
        except ProtocolError as e:  # a worker answered something outside the contract
            self.pool.drop(bid)
            raise WorkerFailure(f"malformed worker answer: {e}") from None
        except BaseException:
            self.pool.drop(bid)
            raise

    def _graph(self, f: Flight) -> Flight:
        """The private computation of an ingressed batch (the caller holds self._tf)."""
        assert self.engine is not None
        try:
            t0 = time.perf_counter()
            self.engine.run(f.bid, f.batch.bucket)
            if f.count:
                self.m_batch.observe(f.batch.rows)
                self.m_stage.labels("graph").observe(time.perf_counter() - t0)
            return f
        except BaseException:
            self.pool.drop(f.bid)
            raise

    def _egress(self, f: Flight) -> list[tuple[Ticket[wire.PredictRequest], int, Any]]:
        """The workers seal the batch's outputs to its clients; the answers, in ticket order."""
        assert self.manifest is not None
        man, tickets, failed = self.manifest, f.batch.tickets, f.failed
        egress = wire.EgressRequest(f.bid, man.output_shape)
        try:
            t0 = time.perf_counter()
            try:
                outs = self.pool.all(lambda i: wire.EgressResponse.parse(
                    self.pool.call(i, "POST", "/v1/egress", egress)))
            except WorkerRefused as e:  # the worker lost the batch (restarted, expired): a worker failure
                raise WorkerFailure(str(e)) from None
            if f.count:
                self.m_stage.labels("egress").observe(time.perf_counter() - t0)
        except ProtocolError as e:  # a worker answered something outside the contract
            self.pool.drop(f.bid)
            raise WorkerFailure(f"malformed worker answer: {e}") from None
        except BaseException:
            self.pool.drop(f.bid)
            raise
        by_index = [{o.index: o for o in out.outputs} for out in outs]
        answers: list[tuple[Ticket[wire.PredictRequest], int, Any]] = []
        for k, t in enumerate(tickets):
            req = t.payload
            oshape = (req.rows, *man.output_shape)
            outputs = [b.get(k) for b in by_index]
            if k in failed:
                answers.append((t, 400, failed[k]))
            elif any(o is None or o.request_id != req.request_id
                     or len(o.sealed.ciphertext) != wire.ciphertext_bytes(oshape) for o in outputs):
                answers.append((t, 502, wire.ErrorBody("worker_refused", "a worker returned no valid output for "
                                                                         "this request")))
            else:
                answers.append((t, 200, wire.PredictResponse(
                    req.request_id, oshape, man.generation, man.postprocess,
                    tuple(wire.Bundle(w, o.sealed) for w, o in zip(wire.WORKERS, outputs) if o is not None))))
        return answers


def _short(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1][:200] if lines else ''}"


def _import_tf() -> None:
    t0 = time.monotonic()
    try:
        from tfe_worker import runtime  # noqa: F401 - TF and TF Encrypted
    except Exception as e:  # noqa: BLE001 - the connect that needs them reports it
        log.warning("importing TF in the background failed: %s", _short(e))
        return
    log.info("TF and TF Encrypted imported in %.2fs (in the background)", time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tfe-worker serve")
    p.add_argument("--config", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--generation", type=int, default=None, help="default: newest complete generation")
    p.add_argument("--port", type=int, default=8000, help="client API port")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--listen-fd", type=int, default=None, help="serve the client API on an inherited socket")
    p.add_argument("--relay-port", type=int, default=None,
                   help="also serve the relay API for `tfe-worker endpoint --relay` on this port")
    p.add_argument("--relay-host", default="127.0.0.1", help="address of the relay API (loopback by default)")
    p.add_argument("--relay-only", action="store_true", help="serve no client API here, only the relay")
    p.add_argument("--coordinator-address", required=True, help="host:port the workers can reach this pod at")
    p.add_argument("--protocol", default="ABY3")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--buckets", default=None, help="comma-separated batch buckets (default 1,4,16,...,max)")
    p.add_argument("--max-requests", type=int, default=None)
    p.add_argument("--linger-after-limit", action="store_true")
    p.add_argument("--count-scope", default=None,
                   help="scope of the served count kept on the workers (default: maxRequests=N, or unlimited): "
                        "coordinators of one model and scope share one count across restarts")
    p.add_argument("--token-file", default=None)
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--warm", choices=("first", "all"), default="first",
                   help="batch buckets traced before ready: the smallest (the rest after, between batches) or all")
    p.add_argument("--pipeline", choices=("on", "off"), default="on" if PIPELINE_DEFAULT else "off",
                   help="on: the ingress of one batch and the egress of another run beside a batch's private "
                        "graph (up to three in flight); off: one batch at a time")
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds before a request gets 504")
    p.add_argument("--max-queue", type=int, default=1024, help="requests waiting; beyond that 503 overloaded")
    p.add_argument("--http-threads", type=int, default=64, help="HTTP handler threads (bounded)")
    p.add_argument("--max-connections", type=int, default=1000)
    p.add_argument("--idle-timeout", type=float, default=30.0, help="close connections idle this long")
    p.add_argument("--max-body-bytes", type=int, default=wire.MAX_INGRESS_BODY)
    p.add_argument("--metrics-port", type=int, default=None,
                   help="also serve /metrics on this port (all interfaces), and not on the client port")
    a = p.parse_args(argv)
    log.info("serve process up %.2fs after its start (interpreter and imports)", process_age())
    # TF and TF Encrypted load while the HTTP servers start and the workers (or the generation
    # being shared) are waited for; the first connect finds them imported.
    threading.Thread(target=_import_tf, name="import-tf", daemon=True).start()
    if not 1 <= a.max_batch_size <= wire.MAX_BUCKET or (a.max_requests is not None and a.max_requests < 1):
        p.error(f"--max-batch-size must lie in 1..{wire.MAX_BUCKET} and --max-requests be >= 1")
    try:
        if a.count_scope is not None:
            wire.check_scope(a.count_scope, "--count-scope")
    except ProtocolError as e:
        p.error(str(e))
    if a.relay_only and a.relay_port is None:
        p.error("--relay-only needs --relay-port")
    buckets = tuple(int(b) for b in a.buckets.split(",")) if a.buckets else ()
    if buckets and (min(buckets) < 1 or max(buckets) > a.max_batch_size):
        p.error("--buckets must lie within 1..--max-batch-size")
    batch = BatcherOptions(a.max_batch_size, buckets, a.max_wait_ms / 1000.0, a.request_timeout, a.max_queue,
                           a.max_requests)
    opts = ServeOptions(a.name, a.coordinator_address, a.generation, a.protocol, batch, a.ready_timeout,
                        count_scope=a.count_scope, warm_all=a.warm == "all", pipeline=a.pipeline == "on")
    http = HTTPOptions(threads=a.http_threads, connection_limit=a.max_connections, channel_timeout=a.idle_timeout,
                       max_body_bytes=a.max_body_bytes)
    metrics = ServeMetrics(CollectorRegistry())
    coord = Coordinator(Config.load(a.config), opts, metrics)
    servers: list[Server] = []
    apps: list[EndpointApp] = []
    if not a.relay_only:
        client = EndpointApp(EndpointOptions(a.name, read_token(a.token_file), http), coord, metrics)
        srv = Server(client.app(metrics=a.metrics_port is None), http)
        sock = socket.socket(fileno=a.listen_fd) if a.listen_fd is not None else None
        port = srv.start(a.host, a.port, sock)
        servers.append(srv)
        apps.append(client)
        log.info("serving model %s on port %d (max batch %d, max wait %.1f ms, buckets %s)", a.name, port,
                 a.max_batch_size, a.max_wait_ms, list(coord.buckets))
    if a.relay_port is not None:
        relay = EndpointApp(EndpointOptions(a.name, None, http), coord, metrics)
        rsrv = Server(relay.app(), http)
        rport = rsrv.start(a.relay_host, a.relay_port)
        servers.append(rsrv)
        apps.append(relay)
        log.info("relay API for model %s on %s:%d", a.name, a.relay_host, rport)
    if a.metrics_port is not None:
        servers.append(start_metrics_server("0.0.0.0", a.metrics_port, metrics.registry))
    loop = threading.Thread(target=coord.run, name="batcher", daemon=True)
    loop.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        if coord.fatal:
            break
        if coord.limit_event.is_set() and not a.linger_after_limit:
            log.info("served %d request(s): max-requests reached, stopping", coord.batcher.served)
            break
    for app in apps:
        app.draining = True
    coord.batcher.drain()
    drained = all(app.drain(a.request_timeout + 10) for app in apps)
    log.info("stopping: %s", "every admitted request answered" if drained else "drain timed out")
    coord.stop.set()
    for s in servers:
        s.stop()
    return 1 if coord.fatal else 0


if __name__ == "__main__":
    sys.exit(main())
