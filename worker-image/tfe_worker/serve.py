"""The serving coordinator and the one client endpoint.

It rebuilds the private model from the share pairs stored on the three workers (no model
file, no plaintext weight), warms up every batch bucket, then serves the client API of
client/PROTOCOL.md with dynamic batching. It only ever handles ciphertext: each request
carries three bundles, each encrypted to one worker; the workers decrypt their own pair into
memory, the private graph runs on them, and each worker encrypts its output pair back to
the client. After a worker restarts, the coordinator reconnects, reloads the shares and
retries the queued work.
"""

from __future__ import annotations

import argparse
import hmac
import http.client
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tfe_client import wire
from tfe_client.client import seal_request
from tfe_client.crypto import b64d, b64e
from tfe_client.errors import ProtocolError
from tfe_client.fixedpoint import FixedPoint
from tfe_worker import workers
from tfe_worker.config import Config
from tfe_worker.httpd import HTTPError, JSONServer, Request, metrics_response, split_hostport

log = logging.getLogger("tfe_worker.serve")
MAX_RETRIES = 3


class WorkerFailure(Exception):
    """A player did not do its part (unreachable, restarted, lost the batch)."""


@dataclass
class Pending:
    req: wire.PredictRequest
    enqueued: float
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[int, Any] | None = None
    attempts: int = 0

    def finish(self, status: int, payload: Any) -> None:
        if not self.done.is_set():
            self.result = (status, payload)
            self.done.set()


def default_buckets(max_batch: int) -> list[int]:
    b = [x for x in (1, 4, 16, 64, 256) if x < max_batch]
    return b + [max_batch]


class WorkerLink:
    """Keep-alive HTTP connection to one player's HTTP side."""

    def __init__(self, addr: str) -> None:
        self.host, self.port = split_hostport(addr)
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            try:
                self.conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
                r = self.conn.getresponse()
                raw = r.read()
                break
            except (OSError, http.client.HTTPException) as e:
                self.conn.close()
                self.conn = None
                if attempt:
                    raise WorkerFailure(f"{self.host}:{self.port} unreachable: {type(e).__name__}") from None
        obj = json.loads(raw) if raw else {}
        if r.status != 200:
            code = obj.get("error", {}).get("code", "error") if isinstance(obj, dict) else "error"
            raise WorkerFailure(f"{self.host}:{self.port} {path} -> HTTP {r.status} {code}")
        return obj


class Engine:
    """TF Encrypted state of one coordinator connection: protocol, private model, graphs."""

    def __init__(self, config: Config, coordinator: str, manifest: dict[str, Any], protocol: str,
                 buckets: list[int]) -> None:
        self.config, self.coordinator, self.manifest = config, coordinator, manifest
        self.protocol, self.buckets = protocol, buckets
        self.fns: dict[int, Any] = {}
        self.calls = 0
        self.prot: Any = None

    def build(self) -> None:
        import tensorflow as tf

        from tfe_worker import runtime

        prefix = f"models/{self.manifest['name']}/{self.manifest['generation']}"
        self.prot = prot = runtime.connect(self.config, self.coordinator, self.protocol)
        model = runtime.build_model(self.manifest, max(self.buckets))
        runtime.load_weights(prot, model, self.manifest, prefix)
        feat = list(self.manifest["inputShape"])
        self.calls = 0

        def make(bucket: int) -> Any:
            @tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64)])
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

    def run(self, batch_id: str, bucket: int) -> None:
        import tensorflow as tf

        self.calls += 1  # strictly increasing per connection: never reuses a mask seed
        self.fns[bucket](tf.constant(batch_id), tf.constant(self.calls, tf.int64))


class Server:
    def __init__(self, config: Config, name: str, generation: int | None, coordinator: str, protocol: str,
                 max_batch: int, max_wait_ms: float, max_requests: int | None, linger: bool,
                 token: str | None, buckets: list[int] | None, ready_timeout: float) -> None:
        self.config, self.name, self.coordinator, self.protocol = config, name, coordinator, protocol
        self.generation = generation
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000.0
        self.max_requests, self.linger, self.token = max_requests, linger, token
        self.buckets = sorted(set(buckets or default_buckets(max_batch)))
        if self.buckets[-1] != max_batch:
            self.buckets.append(max_batch)
        self.ready_timeout = ready_timeout
        self.queue: queue.Queue[Pending] = queue.Queue()
        self.links = [WorkerLink(p.http) for p in config.players]
        self.pool = ThreadPoolExecutor(3, thread_name_prefix="worker-link")
        self.stop = threading.Event()
        self.limit_event = threading.Event()
        self.ready = False
        self.served = 0
        self.admitted = 0
        self.admit_lock = threading.Lock()
        self.manifest: dict[str, Any] = {}
        self.keys: list[str] = []
        self.engine: Engine | None = None
        r = self.registry = CollectorRegistry()
        self.m_requests = Counter("tfe_serve_requests_total", "Predict requests by result", ["result"], registry=r)
        self.m_latency = Histogram("tfe_serve_request_seconds", "Predict latency at the endpoint", registry=r,
                                   buckets=(.005, .01, .015, .02, .03, .05, .075, .1, .2, .5, 1, 2, 5, 10))
        self.m_batch = Histogram("tfe_serve_batch_rows", "Rows per private graph call", registry=r,
                                 buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.m_stage = Histogram("tfe_serve_stage_seconds", "Time per batch in each stage: ingress (workers "
                                 "decrypt and spool), graph (the private computation), egress (workers "
                                 "encrypt outputs)", ["stage"], registry=r,
                                 buckets=(.001, .0025, .005, .01, .015, .02, .03, .05, .075, .1, .2, .5, 1))
        self.m_errors = Counter("tfe_serve_errors_total", "Errors by reason", ["reason"], registry=r)
        self.m_queue = Gauge("tfe_serve_queue_depth", "Requests waiting for a batch", registry=r)
        self.m_reconnects = Counter("tfe_serve_reconnects_total", "Reconnects to the workers", registry=r)
        self.m_ready = Gauge("tfe_serve_ready", "1 when serving", registry=r)
        self.m_gen = Gauge("tfe_serve_share_generation", "Share generation being served", registry=r)
        self.m_served = Gauge("tfe_serve_requests_served", "Successful predictions since start", registry=r)

    # -- model loading ---------------------------------------------------------------------------
    def connect(self) -> None:
        """(Re)build the private model from the workers' shares and warm up every bucket."""
        self.ready = False
        self.m_ready.set(0)
        workers.wait_ready(self.config, self.ready_timeout, self.stop)
        gen = self.generation if self.generation is not None else workers.latest_generation(self.config, self.name)
        self.manifest = workers.manifest(self.config, self.name, gen)
        self.keys = workers.public_keys(self.config)
        t0 = time.monotonic()
        eng = Engine(self.config, self.coordinator, self.manifest, self.protocol, self.buckets)
        eng.build()
        self.engine = eng
        for b in self.buckets:
            self._warmup(b)
        self.m_gen.set(gen)
        log.info("model %s generation %d loaded from worker shares; %d bucket(s) %s warm in %.1fs", self.name, gen,
                 len(self.buckets), self.buckets, time.monotonic() - t0)
        self.ready = True
        self.m_ready.set(1)

    def _warmup(self, bucket: int) -> None:
        """Run the whole path once (encrypt zeros like a client would) so tracing happens now."""
        import numpy as np

        fp = FixedPoint.from_dict(self.manifest["fixedPoint"])
        zeros = fp.encode(np.zeros((bucket, *self.manifest["inputShape"])))
        req, _ = seal_request(self.name, [b64d(k, "key") for k in self.keys], zeros)
        p = Pending(req, time.monotonic())
        self._process([p], count=False)
        if p.result is None or p.result[0] != 200:
            raise WorkerFailure(f"warm-up of bucket {bucket} failed: {p.result}")

    # -- batching ------------------------------------------------------------------------------
    def batcher(self) -> None:
        carry: Pending | None = None
        while not self.stop.is_set():
            if self.engine is None or not self.ready:
                try:
                    self.m_reconnects.inc()
                    self.connect()
                except Exception as e:  # noqa: BLE001 - keep trying; requests stay queued
                    log.warning("reconnect failed: %s", _short(e))
                    self.stop.wait(2.0)
                    continue
            if carry is not None:
                first, carry = carry, None
            else:
                try:
                    first = self.queue.get(timeout=0.5)
                except queue.Empty:
                    continue
            batch, rows = [first], first.req.rows
            deadline = time.monotonic() + self.max_wait
            while rows < self.max_batch:
                if len(batch) >= self._inflight():
                    break  # every admitted request is in this batch: nobody to wait for
                left = deadline - time.monotonic()
                try:
                    nxt = self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait()
                except queue.Empty:
                    break
                if rows + nxt.req.rows > self.max_batch:
                    carry = nxt
                    break
                batch.append(nxt)
                rows += nxt.req.rows
            self.m_queue.set(self.queue.qsize())
            try:
                self._process(batch)
            except WorkerFailure as e:
                self._retry(batch, e)
            except Exception as e:  # noqa: BLE001 - a TF error means a player went away
                self._retry(batch, e)

    def _inflight(self) -> int:
        with self.admit_lock:
            return self.admitted - self.served

    def _retry(self, batch: list[Pending], err: BaseException) -> None:
        log.warning("batch of %d request(s) failed (%s); reconnecting and retrying", len(batch), _short(err))
        self.m_errors.labels("worker_failure").inc()
        self.ready = False
        self.m_ready.set(0)
        self.engine = None
        for p in batch:
            p.attempts += 1
            if p.attempts > MAX_RETRIES:
                p.finish(503, wire.error_body("workers_unavailable", "the workers failed this request repeatedly"))
            else:
                self.queue.put(p)

    def _process(self, batch: list[Pending], count: bool = True) -> None:
        assert self.engine is not None
        rows = sum(p.req.rows for p in batch)
        bucket = next(b for b in self.buckets if b >= rows)
        bid = os.urandom(12).hex()
        feat = list(self.manifest["inputShape"])
        out_feat = list(self.manifest["outputShape"])
        bodies = []
        for i in range(len(wire.WORKERS)):
            items = [{"requestId": p.req.request_id, "shape": list(p.req.shape),
                      "ephemeralKey": b64e(p.req.ephemeral_key), "nonce": b64e(p.req.bundles[i].sealed.nonce),
                      "ciphertext": b64e(p.req.bundles[i].sealed.ciphertext)} for p in batch]
            bodies.append({"batchId": bid, "model": self.name, "bucket": bucket, "featureShape": feat,
                           "items": items})
        try:
            t0 = time.perf_counter()
            acks = list(self.pool.map(lambda ib: self.links[ib[0]].call("POST", "/v1/ingress", ib[1]),
                                      enumerate(bodies)))
            t1 = time.perf_counter()
            rejected: dict[str, str] = {}
            for i, ack in enumerate(acks):
                for f in ack.get("failed", []):
                    rejected.setdefault(f["requestId"], f"{wire.WORKERS[i]} rejected its bundle: {f['reason']}")
            self.engine.run(bid, bucket)
            t2 = time.perf_counter()
            outs = list(self.pool.map(
                lambda i: self.links[i].call("POST", "/v1/egress", {"batchId": bid, "outputShape": out_feat}),
                range(3)))
            if count:
                self.m_batch.observe(rows)
                for stage, dt in (("ingress", t1 - t0), ("graph", t2 - t1), ("egress", time.perf_counter() - t2)):
                    self.m_stage.labels(stage).observe(dt)
        except BaseException:
            for link in self.links:  # best effort: drop this batch's spool files everywhere
                try:
                    link.call("DELETE", f"/v1/batches/{bid}", timeout=2.0)
                except WorkerFailure:
                    pass
            raise
        by_worker = [{o["requestId"]: o for o in out["outputs"]} for out in outs]
        gen = int(self.manifest["generation"])
        for p in batch:
            rid = p.req.request_id
            if rid in rejected:
                self.m_requests.labels("rejected").inc()
                p.finish(400, wire.error_body("bad_bundle", rejected[rid]))
                continue
            try:
                outputs = [b[rid] for b in by_worker]
            except KeyError:
                p.finish(502, wire.error_body("missing_output", "a worker returned no output for this request"))
                continue
            resp = {"requestId": rid, "shape": [p.req.rows] + out_feat, "shareGeneration": gen,
                    "postprocess": self.manifest["postprocess"],
                    "outputs": [{"worker": w, "nonce": o["nonce"], "ciphertext": o["ciphertext"]}
                                for w, o in zip(wire.WORKERS, outputs)]}
            if count:
                self._served_one()
            p.finish(200, resp)

    def _served_one(self) -> None:
        with self.admit_lock:
            self.served += 1
            self.m_served.set(self.served)
            if self.max_requests is not None and self.served >= self.max_requests:
                self.limit_event.set()

    # -- HTTP ------------------------------------------------------------------------------------
    def _auth(self, req: Request, path: str) -> None:
        if self.token is None or not path.startswith("/v1/models"):
            return
        got = req.headers.get("Authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {self.token}".encode()):
            self.m_requests.labels("unauthorized").inc()
            raise HTTPError(401, "unauthorized", "a valid bearer token is required")

    def _check_model(self, name: str) -> None:
        if name != self.name:
            self.m_requests.labels("not_found").inc()
            raise HTTPError(404, "no_such_model", f"this endpoint serves model '{self.name}', not '{name[:64]}'")
        if not self.ready and not self.manifest:
            raise HTTPError(503, "not_ready", "the model is still loading")

    def info(self, req: Request) -> tuple[int, Any]:
        self._check_model(req.match.group(1))
        m = self.manifest
        return 200, {"name": self.name, "protocol": self.protocol, "shareGeneration": int(m["generation"]),
                     "modelDigest": m["modelDigest"],
                     "input": {"shape": [None] + list(m["inputShape"]), "dtype": "float32"},
                     "output": {"shape": [None] + list(m["outputShape"]), "postprocess": m["postprocess"]},
                     "fixedPoint": m["fixedPoint"], "maxBatchSize": self.max_batch,
                     "workers": [{"name": w, "publicKey": k} for w, k in zip(wire.WORKERS, self.keys)]}

    def predict(self, req: Request) -> tuple[int, Any]:
        t0 = time.perf_counter()
        self._check_model(req.match.group(1))
        body = req.json()
        try:
            pr = wire.PredictRequest.parse(body, tuple(self.manifest["inputShape"]), self.max_batch)
        except ProtocolError as e:
            self.m_requests.labels("bad_request").inc()
            self.m_errors.labels("bad_request").inc()
            raise HTTPError(400, "bad_request", str(e)) from None
        with self.admit_lock:
            if self.max_requests is not None and self.admitted >= self.max_requests:
                self.m_requests.labels("limit_reached").inc()
                raise HTTPError(503, "limit_reached", f"this endpoint has served its {self.max_requests} requests")
            self.admitted += 1
        p = Pending(pr, time.monotonic())
        self.queue.put(p)
        self.m_queue.set(self.queue.qsize())
        if not p.done.wait(timeout=120.0):
            p.finish(504, wire.error_body("timeout", "the request was not served in time"))
        assert p.result is not None
        status, payload = p.result
        if status != 200:
            with self.admit_lock:
                self.admitted -= 1
            self.m_errors.labels(payload["error"]["code"]).inc()
        self.m_requests.labels("ok" if status == 200 else payload["error"]["code"]).inc()
        self.m_latency.observe(time.perf_counter() - t0)
        return status, payload

    def status(self, req: Request) -> tuple[int, Any]:
        return 200, {"ready": self.ready, "model": self.name, "requestsServed": self.served,
                     "maxRequests": self.max_requests, "limitReached": self.limit_event.is_set(),
                     "shareGeneration": int(self.manifest["generation"]) if self.manifest else None}

    def readyz(self, req: Request) -> tuple[int, Any]:
        ok = self.ready and not self.limit_event.is_set()
        return (200 if ok else 503), {"ready": ok}

    def serve(self, host: str, port: int, sock: socket.socket | None = None) -> int:
        feat_bytes = 1 << 16
        srv = JSONServer("serve", max_body=max(1 << 20, self.max_batch * feat_bytes * 2 * 8 * 3 * 2))
        srv.before = self._auth
        srv.route("GET", "/healthz", lambda r: (200, {"ok": True}))
        srv.route("GET", "/readyz", self.readyz)
        srv.route("GET", "/metrics", lambda r: (200, metrics_response(self.registry)))
        srv.route("GET", "/v1/status", self.status)
        srv.route("GET", "/v1/models", lambda r: (200, {"models": [self.name]}))
        srv.route("GET", r"/v1/models/([^/:]+)", self.info)
        srv.route("POST", r"/v1/models/([^/:]+):predict", self.predict)
        bound = srv.start(host, port, sock)
        log.info("serving model %s on port %d (max batch %d, max wait %.1f ms, buckets %s)", self.name, bound,
                 self.max_batch, self.max_wait * 1000, self.buckets)
        threading.Thread(target=self.batcher, name="batcher", daemon=True).start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        while not self.stop.is_set():
            if self.limit_event.wait(0.5) and not self.linger:
                log.info("served %d request(s): max-requests reached, stopping", self.served)
                time.sleep(0.2)  # let the last responses leave
                break
        self.stop.set()
        srv.stop()
        return 0


def _short(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1][:200] if lines else ''}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tfe-worker serve")
    p.add_argument("--config", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--generation", type=int, default=None, help="default: newest complete generation")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--listen-fd", type=int, default=None, help="serve on an inherited listening socket")
    p.add_argument("--coordinator-address", required=True, help="host:port the workers can reach this pod at")
    p.add_argument("--protocol", default="ABY3")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--buckets", default=None, help="comma-separated batch buckets (default 1,4,16,...,max)")
    p.add_argument("--max-requests", type=int, default=None)
    p.add_argument("--linger-after-limit", action="store_true")
    p.add_argument("--token-file", default=None)
    p.add_argument("--ready-timeout", type=float, default=600.0)
    a = p.parse_args(argv)
    if a.max_batch_size < 1 or (a.max_requests is not None and a.max_requests < 1):
        p.error("--max-batch-size and --max-requests must be >= 1")
    token = None
    if a.token_file:
        with open(a.token_file) as f:
            token = f.read().strip() or None
    buckets = [int(b) for b in a.buckets.split(",")] if a.buckets else None
    if buckets and (min(buckets) < 1 or max(buckets) > a.max_batch_size):
        p.error("--buckets must lie within 1..--max-batch-size")
    sock = socket.socket(fileno=a.listen_fd) if a.listen_fd is not None else None
    srv = Server(Config.load(a.config), a.name, a.generation, a.coordinator_address, a.protocol, a.max_batch_size,
                 a.max_wait_ms, a.max_requests, a.linger_after_limit, token, buckets, a.ready_timeout)
    return srv.serve(a.host, a.port, sock)


if __name__ == "__main__":
    sys.exit(main())
