"""A TF Encrypted player: the TF gRPC server plus a small HTTP side in the same process.

HTTP side (reachable by the coordinator only, see the NetworkPolicy):
  GET  /healthz, /readyz, /metrics
  GET  /v1/public-key                          this worker's X25519 public key
  GET  /v1/models/NAME/generations             complete share generations on this disk
  GET  /v1/models/NAME/GEN/manifest            public manifest of one generation
  POST /v1/ingress   decrypt this worker's pair of each request of a batch -> spool/in/ID.bin
  POST /v1/egress    encrypt this worker's output pair of each request -> the request's client
  DELETE /v1/batches/ID
  GET  /v1/models/NAME/served                  successful predictions recorded here, per count scope
  POST /v1/models/NAME/served                  the coordinator records a batch's successful predictions
Every body is a tfe_client.wire message. The worker trusts nothing the coordinator says beyond
its own manifest: featureShape must be the manifest's input shape, the bucket is bounded, and
each item's ciphertext must have the exact length of its shape. An item it cannot open fails
alone (IngressAck.failed); a malformed batch is a 400, never a 500.

Split: KeyStore (the X25519 key), ShareStore (generations, manifests), Spool (batch files),
ServedStore (the served counts behind maxRequests), Player (the HTTP app and the TF server).

The private key never leaves this process and its state dir. Decrypted share pairs exist
only in the memory-backed spool dir, for the private graph running on this player's device.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tfe_client import wire
from tfe_client.crypto import Sealed, WorkerKey
from tfe_client.errors import ProtocolError
from tfe_client.wire import Int64Array
from tfe_worker.config import Config
from tfe_worker.httpapp import (
    App,
    HTTPError,
    HTTPOptions,
    Reply,
    Req,
    Server,
    metrics_response,
    split_hostport,
    start_metrics_server,
)

log = logging.getLogger("tfe_worker.player")
MAX_SPOOL_BYTES = 256 << 20  # one decrypted batch in the memory-backed spool
BATCH_TTL_S = 120.0
KEEP_GENERATIONS = 2
PRUNE_IDLE_S = 120.0  # an older generation nobody read for this long goes (serve pods drain in 140 s)


def load_or_create_key(state: str) -> WorkerKey:
    kdir = os.path.join(state, "keys")
    path = os.path.join(kdir, "x25519.key")
    os.makedirs(kdir, mode=0o700, exist_ok=True)
    if os.path.exists(path):
        with open(path, "rb") as f:
            return WorkerKey.from_private_bytes(f.read())
    key = WorkerKey.generate()
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes())
    os.replace(tmp, path)
    return key


def generations(state: str, model: str) -> list[int]:
    """Complete generations (manifest present) of a model, newest first."""
    mdir = os.path.join(state, "models", model)
    out = []
    if os.path.isdir(mdir):
        for g in os.listdir(mdir):
            if g.isdigit() and os.path.exists(os.path.join(mdir, g, "manifest.json")):
                out.append(int(g))
    return sorted(out, reverse=True)


def prune(state: str, idle_since: Callable[[str, int], float] | None = None, now: float = 0.0,
          idle: float = PRUNE_IDLE_S) -> list[str]:
    """Drop old share generations of each model (docs/recovery.md): below the newest KEEP_GENERATIONS
    complete ones always; with `idle_since(model, generation)` (when it was last read here) also any
    generation older than the newest complete one that nobody read for `idle` seconds, so that the
    pairs a refresh replaced leave the disk once the new generation serves."""
    removed: list[str] = []
    root = os.path.join(state, "models")
    if not os.path.isdir(root):
        return removed
    for model in os.listdir(root):
        complete = generations(state, model)
        if not complete:
            continue
        floor = complete[KEEP_GENERATIONS - 1] if len(complete) >= KEEP_GENERATIONS else 0
        for g in os.listdir(os.path.join(root, model)):
            if not g.isdigit() or int(g) >= complete[0]:
                continue
            if int(g) < floor or (idle_since is not None and now - idle_since(model, int(g)) >= idle):
                shutil.rmtree(os.path.join(root, model, g), ignore_errors=True)
                removed.append(f"{model}/{g}")
    return removed


class KeyStore:
    """This worker's long-term X25519 key; opens request bundles and seals output pairs."""

    def __init__(self, name: str, key: WorkerKey) -> None:
        self.name, self.key = name, key

    @property
    def public(self) -> bytes:
        return self.key.public

    def open_item(self, it: wire.IngressItem, model: str) -> Int64Array:
        """This worker's decrypted pair of one item; ProtocolError (attributed to the item) otherwise."""
        if wire.is_low_order(it.ephemeral_key):
            raise ProtocolError("ephemeralKey is a low-order X25519 point")
        try:
            plain = self.key.open_request(it.ephemeral_key, it.sealed,
                                          wire.aad("req", model, it.request_id, self.name, it.shape),
                                          f"{self.name} bundle")
        except ValueError as e:  # any remaining key-agreement refusal is about this item alone
            raise ProtocolError(f"{self.name}: {e}") from None
        return wire.pair_from_bytes(plain, it.shape, self.name)

    def seal(self, eph: bytes, pair: Int64Array, model: str, rid: str, shape: tuple[int, ...]) -> Sealed:
        return self.key.seal_response(eph, wire.pair_to_bytes(pair), wire.aad("resp", model, rid, self.name, shape))


class ShareStore:
    """Share generations and their public manifests on this worker's disk."""

    def __init__(self, state: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.clock = clock
        self.started = clock()
        self.used: dict[tuple[str, int], float] = {}  # last manifest read (a coordinator loading, ingress)

    def generations(self, model: str) -> list[int]:
        return generations(self.state, model)

    def last_used(self, model: str, generation: int) -> float:
        return self.used.get((model, generation), self.started)

    def prune(self, idle: float = PRUNE_IDLE_S) -> list[str]:
        return prune(self.state, self.last_used, self.clock(), idle)

    def manifest(self, model: str, generation: int) -> wire.Manifest:
        path = os.path.join(self.state, "models", model, str(generation), "manifest.json")
        try:
            with open(path) as f:
                man = wire.Manifest.parse(json.load(f))
            self.used[(model, generation)] = self.clock()  # only generations on disk: bounded
            return man
        except FileNotFoundError:
            raise HTTPError("no_such_generation",
                            f"model {model} has no complete generation {generation} here") from None


class ServedStore:
    """Successful predictions per model and count scope, on this worker's disk.

    One small file per model, state/served/MODEL.json (a wire.ServedCounts), replaced atomically
    (temporary file, fsync, rename, fsync of the directory) before a report is acknowledged, so a
    count this worker acknowledged survives its crash. A report adds its predictions once (report
    ids already applied are remembered in memory) and never lowers a count: the count becomes
    max(count + add, total). At most MAX_SCOPES scopes are kept, the most recently reported ones.
    """

    SEEN = 1024  # report ids remembered per model (a retry comes within seconds)

    def __init__(self, state: str) -> None:
        self.dir = os.path.join(state, "served")
        self.lock = threading.Lock()
        self.seen: dict[str, collections.OrderedDict[str, int]] = {}

    def path(self, model: str) -> str:
        return os.path.join(self.dir, f"{wire.check_model_name(model)}.json")

    def counts(self, model: str) -> wire.ServedCounts:
        with self.lock:
            return self._read(model)

    def _read(self, model: str) -> wire.ServedCounts:
        try:
            with open(self.path(model)) as f:
                counts = wire.ServedCounts.parse(json.load(f))
        except FileNotFoundError:
            return wire.ServedCounts(model, ())
        except (ValueError, ProtocolError) as e:  # fail closed: never restart a count from zero silently
            log.error("served count file %s is unreadable (%s); move it away to reset the count",
                      self.path(model), e)
            raise HTTPError("internal", "served count file unreadable") from None
        if counts.model != model:
            raise HTTPError("internal", "served count file of another model")
        return counts

    def report(self, model: str, rep: wire.ServedReport) -> int:
        """Apply one report; return the scope's count, on disk when this returns."""
        with self.lock:
            counts = self._read(model)
            current = counts.served(rep.scope)
            seen = self.seen.setdefault(model, collections.OrderedDict())
            if rep.report_id in seen:
                return max(current, seen[rep.report_id])
            new = max(current + rep.add, rep.total)
            if new != current or not any(s.scope == rep.scope for s in counts.scopes):
                scopes = [s for s in counts.scopes if s.scope != rep.scope] + [wire.ServedScope(rep.scope, new)]
                self._write(wire.ServedCounts(model, tuple(scopes[-wire.MAX_SCOPES:])))
            seen[rep.report_id] = new
            while len(seen) > self.SEEN:
                seen.popitem(last=False)
            return new

    def _write(self, counts: wire.ServedCounts) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        path = self.path(counts.model)
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(counts.to_json(), f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@dataclass
class Item:
    index: int
    request_id: str
    shape: tuple[int, ...]
    ephemeral_key: bytes
    offset: int


@dataclass
class Batch:
    model: str
    output_shape: tuple[int, ...]
    bucket: int
    items: list[Item]
    created: float


class Spool:
    """Memory-backed batch files the private graph reads (in/ID.bin) and writes (out/ID.tp)."""

    def __init__(self, root: str, ttl: float = BATCH_TTL_S) -> None:
        self.root, self.ttl = root, ttl
        self.batches: dict[str, Batch] = {}
        self.lock = threading.Lock()

    def prepare(self) -> None:
        for sub in ("in", "out"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
            for f in os.listdir(os.path.join(self.root, sub)):  # stale batches of a previous run
                os.unlink(os.path.join(self.root, sub, f))

    def put(self, bid: str, data: Int64Array, batch: Batch) -> int:
        path = os.path.join(self.root, "in", f"{bid}.bin")
        with open(path + ".tmp", "wb") as f:
            f.write(data.tobytes())
        os.replace(path + ".tmp", path)
        with self.lock:
            self.batches[bid] = batch
            return len(self.batches)

    def peek(self, bid: str) -> Batch | None:
        with self.lock:
            return self.batches.get(bid)

    def take_output(self, bid: str) -> tuple[Batch | None, Int64Array | None]:
        """Forget the batch; return it with its output (None when the graph wrote none)."""
        with self.lock:
            batch = self.batches.pop(bid, None)
        path = os.path.join(self.root, "out", f"{bid}.tp")
        try:
            out = read_tensorproto_int64(path) if batch is not None else None
        except FileNotFoundError:
            out = None
        finally:
            self.drop_files(bid)
        return batch, out

    def drop(self, bid: str) -> None:
        with self.lock:
            self.batches.pop(bid, None)
        self.drop_files(bid)

    def drop_files(self, bid: str) -> None:
        for sub, ext in (("in", "bin"), ("out", "tp")):
            _unlink(os.path.join(self.root, sub, f"{bid}.{ext}"))

    def expire(self, now: float) -> list[str]:
        with self.lock:
            stale = [b for b, v in self.batches.items() if now - v.created > self.ttl]
            for b in stale:
                del self.batches[b]
        for b in stale:
            self.drop_files(b)
        return stale

    def __len__(self) -> int:
        with self.lock:
            return len(self.batches)


@dataclass(frozen=True)
class PlayerOptions:
    name: str
    config: Config
    state: str
    spool: str
    http_bind: str = "0.0.0.0"
    http: HTTPOptions = field(default_factory=lambda: HTTPOptions(
        threads=4, connection_limit=100, channel_timeout=60.0, max_body_bytes=wire.MAX_INGRESS_BODY))
    metrics_port: int | None = None  # /metrics on a port of its own (all interfaces)


class Player:
    def __init__(self, opts: PlayerOptions) -> None:
        self.opts = opts
        self.name = opts.name
        self.config = opts.config
        self.me = opts.config.player(opts.name)
        self.state = os.path.abspath(opts.state)
        self.spool = Spool(os.path.abspath(opts.spool))
        self.shares = ShareStore(self.state)
        self.served = ServedStore(self.state)
        self.keys: KeyStore | None = None
        self.server: Any = None
        self.stop_event = threading.Event()
        self.registry = CollectorRegistry()
        self.m_ingress = Counter("tfe_worker_ingress_items_total", "Request bundles received, by result",
                                 ["result"], registry=self.registry)
        self.m_egress = Counter("tfe_worker_egress_items_total", "Output bundles sent", registry=self.registry)
        self.m_served = Gauge("tfe_worker_requests_served", "Successful predictions recorded on this worker's disk, "
                              "by model and count scope", ["model", "scope"], registry=self.registry)
        self.m_inflight = Gauge("tfe_worker_batches_inflight", "Batches spooled and not yet collected",
                                registry=self.registry)
        self.m_io = Histogram("tfe_worker_share_io_seconds", "Time to decrypt/spool or encrypt one batch",
                              ["direction"], registry=self.registry)
        Gauge("tfe_worker_info", "Worker identity", ["name"], registry=self.registry).labels(opts.name).set(1)

    # -- setup -------------------------------------------------------------------------------
    def prepare_dirs(self) -> None:
        os.makedirs(self.state, exist_ok=True)
        self.spool.prepare()
        link = os.path.join(self.state, "spool")
        if os.path.realpath(link) != self.spool.root:
            if os.path.islink(link) or os.path.exists(link):
                os.unlink(link)
            os.symlink(self.spool.root, link)
        # The private graph addresses files relative to each player's working directory.
        os.chdir(self.state)

    def start_tf(self) -> None:
        import tensorflow as tf
        import tf_encrypted  # noqa: F401 - registers the custom ops (SecureSeed, ...) in this process

        cluster = tf.train.ClusterSpec({"tfe": [p.tf for p in self.config.players]})
        self.server = tf.distribute.Server(cluster, job_name="tfe", task_index=self.me.index, start=True)

    # -- HTTP handlers -----------------------------------------------------------------------
    def _key(self) -> KeyStore:
        if self.keys is None:
            raise HTTPError("not_ready", "key not loaded yet")
        return self.keys

    def healthz(self, req: Req) -> Reply:
        return 200, wire.Health(True)

    def readyz(self, req: Req) -> Reply:
        if self.server is None or self.keys is None:
            return 503, wire.Ready(False, self.name)
        return 200, wire.Ready(True, self.name)

    def public_key(self, req: Req) -> Reply:
        return 200, wire.PublicKeyResponse(self.name, self._key().public)

    def list_generations(self, req: Req) -> Reply:
        model = _model(req.match.group(1))
        return 200, wire.GenerationsResponse(model, tuple(self.shares.generations(model)))

    def manifest(self, req: Req) -> Reply:
        model, gen = _model(req.match.group(1)), req.match.group(2)
        if len(gen) > 10:
            raise HTTPError("no_such_generation", "no such generation")
        return 200, self.shares.manifest(model, int(gen))

    def ingress(self, req: Req) -> Reply:
        t0 = time.perf_counter()
        keys = self._key()
        try:
            msg = wire.IngressRequest.parse(req.json())
        except ProtocolError as e:
            raise HTTPError("bad_batch", str(e)) from None
        man = self.shares.manifest(msg.model, msg.generation)
        if msg.feature_shape != man.input_shape:
            raise HTTPError("bad_batch", f"featureShape {list(msg.feature_shape)} is not the input shape "
                                         f"{list(man.input_shape)} of {msg.model} generation {msg.generation}")
        if 2 * msg.bucket * math.prod(man.input_shape) * 8 > MAX_SPOOL_BYTES:
            raise HTTPError("bad_batch", f"bucket {msg.bucket} of {list(man.input_shape)} exceeds this worker's "
                                         f"spool limit of {MAX_SPOOL_BYTES} bytes")
        data = np.zeros((2, msg.bucket, *msg.feature_shape), dtype="<i8")  # zero rows: a sharing of 0 (padding)
        kept: list[Item] = []
        failed: list[wire.ItemFailure] = []
        r = 0
        for idx, it in enumerate(msg.items):
            try:
                data[:, r:r + it.shape[0]] = keys.open_item(it, msg.model)
                kept.append(Item(idx, it.request_id, it.shape, it.ephemeral_key, r))
                self.m_ingress.labels("ok").inc()
            except ProtocolError as e:  # this request fails alone; its rows stay zero
                code = "bad_request" if "low-order" in str(e) else "bad_bundle"
                failed.append(wire.ItemFailure(idx, it.request_id, code, str(e)))
                self.m_ingress.labels("rejected").inc()
            r += it.shape[0]
        n = self.spool.put(msg.batch_id, data, Batch(msg.model, man.output_shape, msg.bucket, kept,
                                                     time.monotonic()))
        self.m_inflight.set(n)
        self.m_io.labels("ingress").observe(time.perf_counter() - t0)
        log.debug("batch %s: spooled %d request(s), %d rejected", msg.batch_id, len(kept), len(failed))
        return 200, wire.IngressAck(msg.batch_id, tuple(i.index for i in kept), tuple(failed))

    def egress(self, req: Req) -> Reply:
        t0 = time.perf_counter()
        keys = self._key()
        try:
            msg = wire.EgressRequest.parse(req.json())
        except ProtocolError as e:
            raise HTTPError("bad_batch", str(e)) from None
        bid = msg.batch_id
        known = self.spool.peek(bid)
        if known is not None and msg.output_shape != known.output_shape:
            raise HTTPError("bad_batch", f"outputShape {list(msg.output_shape)} is not the model's "
                                         f"{list(known.output_shape)}")
        batch, out = self.spool.take_output(bid)
        self.m_inflight.set(len(self.spool))
        if batch is None:
            raise HTTPError("no_such_batch", f"batch {bid} is unknown here (expired, or this worker restarted)")
        if out is None:
            raise HTTPError("no_output", f"batch {bid} has no output on {self.name}")
        if out.shape != (2, batch.bucket, *batch.output_shape):
            raise HTTPError("no_output", f"output of batch {bid} has shape {list(out.shape)}")
        outputs = []
        for it in batch.items:
            n, r = it.shape[0], it.offset
            sealed = keys.seal(it.ephemeral_key, out[:, r:r + n], batch.model, it.request_id,
                               (n, *batch.output_shape))
            outputs.append(wire.EgressOutput(it.index, it.request_id, sealed))
        self.m_egress.inc(len(outputs))
        self.m_io.labels("egress").observe(time.perf_counter() - t0)
        return 200, wire.EgressResponse(bid, tuple(outputs))

    def drop_batch(self, req: Req) -> Reply:
        bid = req.match.group(1)
        self.spool.drop(bid)
        self.m_inflight.set(len(self.spool))
        return 200, wire.DropResponse(bid, True)

    def served_counts(self, req: Req) -> Reply:
        return 200, self.served.counts(_model(req.match.group(1)))

    def record_served(self, req: Req) -> Reply:
        model = _model(req.match.group(1))
        try:
            rep = wire.ServedReport.parse(req.json())
        except ProtocolError as e:
            raise HTTPError("bad_batch", str(e)) from None
        if not self.shares.generations(model):
            raise HTTPError("no_such_generation", f"model {model} has no complete generation here")
        served = self.served.report(model, rep)
        self.m_served.labels(model, rep.scope).set(served)
        return 200, wire.ServedAck(model, rep.scope, served)

    def metrics(self, req: Req) -> Reply:
        return 200, metrics_response(self.registry)

    def app(self) -> App:
        app = App(f"player-{self.name}", max_body=self.opts.http.max_body_bytes)
        app.route("GET", "/healthz", self.healthz)
        app.route("GET", "/readyz", self.readyz)
        app.route("GET", "/metrics", self.metrics)
        app.route("GET", "/v1/public-key", self.public_key)
        app.route("GET", r"/v1/models/([^/]+)/generations", self.list_generations)
        app.route("GET", r"/v1/models/([^/]+)/(\d+)/manifest", self.manifest)
        app.route("POST", "/v1/ingress", self.ingress)
        app.route("POST", "/v1/egress", self.egress, max_body=1 << 16)
        app.route("DELETE", r"/v1/batches/([0-9a-f]{8,64})", self.drop_batch)
        app.route("GET", r"/v1/models/([^/]+)/served", self.served_counts)
        app.route("POST", r"/v1/models/([^/]+)/served", self.record_served, max_body=1 << 12)
        return app

    # -- housekeeping --------------------------------------------------------------------------
    def housekeeping(self) -> None:
        while not self.stop_event.wait(10.0):
            self.spool.expire(time.monotonic())
            self.m_inflight.set(len(self.spool))
            for r in self.shares.prune():
                log.info("removed old share generation %s", r)

    def run(self) -> None:
        self.prepare_dirs()
        self.keys = KeyStore(self.name, load_or_create_key(self.state))
        srv = Server(self.app(), self.opts.http)
        _, port = split_hostport(self.me.http)
        srv.start(self.opts.http_bind, port)
        msrv = (start_metrics_server("0.0.0.0", self.opts.metrics_port, self.registry)
                if self.opts.metrics_port is not None else None)
        self.start_tf()
        log.info("player %s ready: tf %s, http %s:%d, state %s", self.name, self.me.tf, self.opts.http_bind, port,
                 self.state)
        threading.Thread(target=self.housekeeping, daemon=True).start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        try:
            while not self.stop_event.wait(3600):
                pass
        finally:
            srv.stop(flush_timeout=2.0)
            if msrv is not None:
                msrv.stop(flush_timeout=1.0)


def _model(name: str) -> str:
    try:
        return wire.check_model_name(name)
    except ProtocolError:
        raise HTTPError("bad_model", "invalid model name") from None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def read_tensorproto_int64(path: str) -> Int64Array:
    """Parse tf.io.serialize_tensor output (an int64 TensorProto) without running TF ops."""
    from tensorflow.core.framework import tensor_pb2, types_pb2

    with open(path, "rb") as f:
        tp = tensor_pb2.TensorProto.FromString(f.read())
    if tp.dtype != types_pb2.DT_INT64:
        raise ValueError("expected an int64 tensor")
    shape = [d.size for d in tp.tensor_shape.dim]
    if tp.tensor_content:
        return np.frombuffer(tp.tensor_content, dtype="<i8").reshape(shape)
    return np.asarray(tp.int64_val, dtype=np.int64).reshape(shape)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tfe-worker player")
    p.add_argument("name", help="server0, server1 or server2")
    p.add_argument("--config", required=True)
    p.add_argument("--state", required=True, help="share storage (PVC or emptyDir)")
    p.add_argument("--spool", default=None, help="memory-backed dir for decrypted pairs (default: /dev/shm/...)")
    p.add_argument("--http-bind", default="0.0.0.0", help="address of the HTTP side")
    p.add_argument("--metrics-port", type=int, default=None, help="also serve /metrics on this port (all "
                   "interfaces): Prometheus scrapes it without reaching the HTTP side")
    a = p.parse_args(argv)
    # Three players and a coordinator usually share a few cores: one intra-op thread per op and
    # two inter-op threads measured ~25% faster than TF's per-core defaults (make bench). Set
    # TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS to override (e.g. on big nodes).
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "2")
    cfg = Config.load(a.config)
    spool = a.spool or os.path.join("/dev/shm", f"tfe-spool-{a.name}-{os.getpid()}")
    Player(PlayerOptions(a.name, cfg, a.state, spool, a.http_bind, metrics_port=a.metrics_port)).run()
    return 0
