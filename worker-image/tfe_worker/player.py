"""A TF Encrypted player: the TF gRPC server plus a small HTTP side in the same process.

HTTP side (reachable by the coordinator only, see the NetworkPolicy):
  GET  /healthz, /readyz, /metrics
  GET  /v1/public-key                          this worker's X25519 public key
  GET  /v1/models/NAME/generations             complete share generations on this disk
  GET  /v1/models/NAME/GEN/manifest            public manifest of one generation
  POST /v1/ingress   decrypt this worker's pair of each request of a batch -> spool/in/ID.bin
  POST /v1/egress    encrypt this worker's output pair of each request -> the request's client
  DELETE /v1/batches/ID

The private key never leaves this process and its state dir. Decrypted share pairs exist
only in the memory-backed spool dir, for the private graph running on this player's device.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tfe_client import wire
from tfe_client.crypto import Sealed, WorkerKey, b64d, b64e
from tfe_client.errors import ProtocolError
from tfe_worker.config import Config
from tfe_worker.httpd import HTTPError, JSONServer, Request, metrics_response, split_hostport

log = logging.getLogger("tfe_worker.player")
_BATCH_ID = re.compile(r"^[0-9a-f]{8,64}$")
MAX_BATCH_BODY = 64 << 20
BATCH_TTL_S = 120.0
KEEP_GENERATIONS = 2


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


def prune(state: str) -> list[str]:
    """Keep the newest KEEP_GENERATIONS complete generations of each model; drop older ones."""
    removed = []
    root = os.path.join(state, "models")
    if not os.path.isdir(root):
        return removed
    for model in os.listdir(root):
        complete = generations(state, model)
        if len(complete) < KEEP_GENERATIONS:
            continue
        floor = complete[KEEP_GENERATIONS - 1]
        for g in os.listdir(os.path.join(root, model)):
            if g.isdigit() and int(g) < floor:
                shutil.rmtree(os.path.join(root, model, g), ignore_errors=True)
                removed.append(f"{model}/{g}")
    return removed


@dataclass
class Item:
    request_id: str
    shape: tuple[int, ...]
    ephemeral_key: bytes
    offset: int


@dataclass
class Batch:
    model: str
    items: list[Item]
    created: float


class Player:
    def __init__(self, name: str, config: Config, state: str, spool: str) -> None:
        self.name = name
        self.config = config
        self.me = config.player(name)
        self.state = os.path.abspath(state)
        self.spool = os.path.abspath(spool)
        self.key: WorkerKey | None = None
        self.server: Any = None
        self.batches: dict[str, Batch] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.registry = CollectorRegistry()
        self.m_ingress = Counter("tfe_worker_ingress_items_total", "Request bundles received, by result",
                                 ["result"], registry=self.registry)
        self.m_egress = Counter("tfe_worker_egress_items_total", "Output bundles sent", registry=self.registry)
        self.m_inflight = Gauge("tfe_worker_batches_inflight", "Batches spooled and not yet collected",
                                registry=self.registry)
        self.m_io = Histogram("tfe_worker_share_io_seconds", "Time to decrypt/spool or encrypt one batch",
                              ["direction"], registry=self.registry)
        Gauge("tfe_worker_info", "Worker identity", ["name"], registry=self.registry).labels(name).set(1)

    # -- setup -------------------------------------------------------------------------------
    def prepare_dirs(self) -> None:
        os.makedirs(self.state, exist_ok=True)
        for sub in ("in", "out"):
            os.makedirs(os.path.join(self.spool, sub), exist_ok=True)
            for f in os.listdir(os.path.join(self.spool, sub)):  # stale batches of a previous run
                os.unlink(os.path.join(self.spool, sub, f))
        link = os.path.join(self.state, "spool")
        if os.path.realpath(link) != self.spool:
            if os.path.islink(link) or os.path.exists(link):
                os.unlink(link)
            os.symlink(self.spool, link)
        # The private graph addresses files relative to each player's working directory.
        os.chdir(self.state)

    def start_tf(self) -> None:
        import tensorflow as tf
        import tf_encrypted  # noqa: F401 - registers the custom ops (SecureSeed, ...) in this process

        cluster = tf.train.ClusterSpec({"tfe": [p.tf for p in self.config.players]})
        self.server = tf.distribute.Server(cluster, job_name="tfe", task_index=self.me.index, start=True)

    # -- HTTP handlers -----------------------------------------------------------------------
    def healthz(self, req: Request) -> tuple[int, Any]:
        return 200, {"ok": True}

    def readyz(self, req: Request) -> tuple[int, Any]:
        if self.server is None or self.key is None:
            return 503, {"ready": False}
        return 200, {"ready": True, "name": self.name}

    def public_key(self, req: Request) -> tuple[int, Any]:
        if self.key is None:
            raise HTTPError(503, "not_ready", "key not loaded yet")
        return 200, {"name": self.name, "publicKey": b64e(self.key.public)}

    def list_generations(self, req: Request) -> tuple[int, Any]:
        model = wire.check_model_name(req.match.group(1)) if _safe(req.match.group(1)) else None
        if model is None:
            raise HTTPError(400, "bad_model", "invalid model name")
        return 200, {"model": model, "generations": generations(self.state, model)}

    def manifest(self, req: Request) -> tuple[int, Any]:
        model, gen = req.match.group(1), req.match.group(2)
        if not _safe(model):
            raise HTTPError(400, "bad_model", "invalid model name")
        path = os.path.join(self.state, "models", model, gen, "manifest.json")
        if not os.path.exists(path):
            raise HTTPError(404, "no_such_generation", f"model {model} has no complete generation {gen} here")
        with open(path) as f:
            return 200, json.load(f)

    def ingress(self, req: Request) -> tuple[int, Any]:
        t0 = time.perf_counter()
        body = req.json()
        if not isinstance(body, dict):
            raise HTTPError(400, "bad_request", "body must be an object")
        bid = body.get("batchId")
        model = body.get("model")
        bucket = body.get("bucket")
        feat = body.get("featureShape")
        items = body.get("items")
        if not isinstance(bid, str) or not _BATCH_ID.match(bid):
            raise HTTPError(400, "bad_batch", "batchId must be hex")
        if not isinstance(model, str) or not _safe(model):
            raise HTTPError(400, "bad_model", "invalid model name")
        if not isinstance(bucket, int) or bucket < 1 or not isinstance(items, list) or not items:
            raise HTTPError(400, "bad_batch", "bucket must be >= 1 and items non-empty")
        if not isinstance(feat, list) or not all(isinstance(d, int) and d > 0 for d in feat):
            raise HTTPError(400, "bad_batch", "featureShape must be positive integers")
        feat_t = tuple(feat)
        data = np.zeros((2, bucket) + feat_t, dtype="<i8")  # zero rows: a valid sharing of 0 (padding)
        kept: list[Item] = []
        failed: list[dict[str, str]] = []
        r = 0
        for it in items:
            rid, shape = _item_header(it, feat_t)
            if r + shape[0] > bucket:
                raise HTTPError(400, "bad_batch", f"requests do not fit bucket {bucket}")
            try:
                eph, pair = self._open_item(it, model, rid, shape)
                data[:, r:r + shape[0]] = pair
                kept.append(Item(rid, shape, eph, r))
                self.m_ingress.labels("ok").inc()
            except ProtocolError as e:  # this request fails alone; its rows stay zero
                failed.append({"requestId": rid, "reason": str(e)})
                self.m_ingress.labels("rejected").inc()
            r += shape[0]
        path = os.path.join(self.spool, "in", f"{bid}.bin")
        with open(path + ".tmp", "wb") as f:
            f.write(data.tobytes())
        os.replace(path + ".tmp", path)
        with self.lock:
            self.batches[bid] = Batch(model, kept, time.monotonic())
            self.m_inflight.set(len(self.batches))
        self.m_io.labels("ingress").observe(time.perf_counter() - t0)
        log.debug("batch %s: spooled %d request(s), %d rejected", bid, len(kept), len(failed))
        return 200, {"batchId": bid, "accepted": [i.request_id for i in kept], "failed": failed}

    def _open_item(self, it: dict[str, Any], model: str, rid: str, shape: tuple[int, ...]) -> tuple[bytes, np.ndarray]:
        eph = b64d(it.get("ephemeralKey"), "ephemeralKey")
        nonce = b64d(it.get("nonce"), "nonce")
        ct = b64d(it.get("ciphertext"), "ciphertext")
        assert self.key is not None
        plain = self.key.open_request(eph, Sealed(nonce, ct), wire.aad("req", model, rid, self.name, shape),
                                      f"{self.name} bundle")
        return eph, wire.pair_from_bytes(plain, shape, self.name)

    def egress(self, req: Request) -> tuple[int, Any]:
        t0 = time.perf_counter()
        body = req.json()
        bid = body.get("batchId") if isinstance(body, dict) else None
        feat = body.get("outputShape") if isinstance(body, dict) else None
        if not isinstance(bid, str) or not _BATCH_ID.match(bid):
            raise HTTPError(400, "bad_batch", "batchId must be hex")
        if not isinstance(feat, list) or not all(isinstance(d, int) and d > 0 for d in feat):
            raise HTTPError(400, "bad_batch", "outputShape must be positive integers")
        with self.lock:
            batch = self.batches.pop(bid, None)
            self.m_inflight.set(len(self.batches))
        if batch is None:
            raise HTTPError(404, "no_such_batch", f"batch {bid} is unknown here (expired, or this worker restarted)")
        path = os.path.join(self.spool, "out", f"{bid}.tp")
        try:
            out = read_tensorproto_int64(path)
        except FileNotFoundError:
            raise HTTPError(409, "no_output", f"batch {bid} has no output on {self.name}") from None
        finally:
            _unlink(path)
            _unlink(os.path.join(self.spool, "in", f"{bid}.bin"))
        if out.shape[0] != 2 or tuple(out.shape[2:]) != tuple(feat):
            raise HTTPError(409, "bad_output", f"output of batch {bid} has shape {list(out.shape)}")
        outputs = []
        for it in batch.items:
            n, r = it.shape[0], it.offset
            oshape = (n,) + tuple(feat)
            sealed = self.key.seal_response(it.ephemeral_key, wire.pair_to_bytes(out[:, r:r + n]),  # type: ignore[union-attr]
                                            wire.aad("resp", batch.model, it.request_id, self.name, oshape))
            outputs.append({"requestId": it.request_id, "nonce": b64e(sealed.nonce),
                            "ciphertext": b64e(sealed.ciphertext)})
        self.m_egress.inc(len(outputs))
        self.m_io.labels("egress").observe(time.perf_counter() - t0)
        return 200, {"batchId": bid, "outputs": outputs}

    def drop_batch(self, req: Request) -> tuple[int, Any]:
        bid = req.match.group(1)
        with self.lock:
            self.batches.pop(bid, None)
            self.m_inflight.set(len(self.batches))
        for sub, ext in (("in", "bin"), ("out", "tp")):
            _unlink(os.path.join(self.spool, sub, f"{bid}.{ext}"))
        return 200, {"batchId": bid, "dropped": True}

    def metrics(self, req: Request) -> tuple[int, Any]:
        return 200, metrics_response(self.registry)

    # -- housekeeping --------------------------------------------------------------------------
    def housekeeping(self) -> None:
        while not self.stop_event.wait(10.0):
            now = time.monotonic()
            with self.lock:
                stale = [b for b, v in self.batches.items() if now - v.created > BATCH_TTL_S]
                for b in stale:
                    del self.batches[b]
                self.m_inflight.set(len(self.batches))
            for b in stale:
                _unlink(os.path.join(self.spool, "in", f"{b}.bin"))
                _unlink(os.path.join(self.spool, "out", f"{b}.tp"))
            for r in prune(self.state):
                log.info("removed old share generation %s", r)

    def run(self, http_bind: str) -> None:
        self.prepare_dirs()
        self.key = load_or_create_key(self.state)
        srv = JSONServer(f"player-{self.name}", max_body=MAX_BATCH_BODY)
        srv.route("GET", "/healthz", self.healthz)
        srv.route("GET", "/readyz", self.readyz)
        srv.route("GET", "/metrics", self.metrics)
        srv.route("GET", "/v1/public-key", self.public_key)
        srv.route("GET", r"/v1/models/([^/]+)/generations", self.list_generations)
        srv.route("GET", r"/v1/models/([^/]+)/(\d+)/manifest", self.manifest)
        srv.route("POST", "/v1/ingress", self.ingress)
        srv.route("POST", "/v1/egress", self.egress)
        srv.route("DELETE", r"/v1/batches/([0-9a-f]{8,64})", self.drop_batch)
        _, port = split_hostport(self.me.http)
        srv.start(http_bind, port)
        self.start_tf()
        log.info("player %s ready: tf %s, http %s:%d, state %s", self.name, self.me.tf, http_bind, port, self.state)
        threading.Thread(target=self.housekeeping, daemon=True).start()
        try:
            while not self.stop_event.wait(3600):
                pass
        finally:
            srv.stop()


def _safe(name: str) -> bool:
    try:
        wire.check_model_name(name)
        return True
    except ProtocolError:
        return False


def _item_header(it: Any, feat: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """requestId and shape of a batch item; the coordinator validated them, so errors fail the batch."""
    if not isinstance(it, dict):
        raise HTTPError(400, "bad_batch", "items must be objects")
    rid = it.get("requestId")
    shape = it.get("shape")
    if not isinstance(rid, str) or not re.match(r"^[0-9a-f]{16,64}$", rid):
        raise HTTPError(400, "bad_batch", "requestId must be hex")
    if (not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d > 0 for d in shape)
            or tuple(shape[1:]) != feat):
        raise HTTPError(400, "bad_batch", "item shape must be [rows, *featureShape]")
    return rid, tuple(shape)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def read_tensorproto_int64(path: str) -> np.ndarray:
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
    a = p.parse_args(argv)
    # Three players and a coordinator usually share a few cores: one intra-op thread per op and
    # two inter-op threads measured ~25% faster than TF's per-core defaults (make bench). Set
    # TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS to override (e.g. on big nodes).
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "2")
    cfg = Config.load(a.config)
    spool = a.spool or os.path.join("/dev/shm", f"tfe-spool-{a.name}-{os.getpid()}")
    Player(a.name, cfg, a.state, spool).run(a.http_bind)
    return 0
