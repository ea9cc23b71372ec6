"""The client-facing HTTP app (client/PROTOCOL.md), in front of a Backend.

Every field a client controls is validated here, once, against the served model's metadata
(wire.PredictRequest.parse: request id, shape, batch size, a non-low-order ephemeral key,
each ciphertext's exact length), before anything reaches the coordinator or a worker.

Two backends:
- the coordinator itself (serve.Coordinator), in one process with `tfe-worker serve`;
- RelayBackend: `tfe-worker endpoint --relay HOST:PORT` runs this app as a process of its
  own, without TF, and relays validated requests to the coordinator's relay API
  (`tfe-worker serve --relay-port PORT`, loopback only), which is this same app again.

SIGTERM drains: new predictions get 503 `draining`, admitted ones get their answers, then
the process exits.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import urllib3
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tfe_client import wire
from tfe_client.errors import ProtocolError
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

log = logging.getLogger("tfe_worker.endpoint")


class Backend(Protocol):
    def info(self) -> wire.ModelInfo | None: ...

    def status(self) -> wire.Status: ...

    def ready(self) -> bool: ...

    def predict(self, req: wire.PredictRequest, gone: Callable[[], bool]) -> tuple[int, Any]: ...


class ServeMetrics:
    """The tfe_serve_* series of one process (endpoint and coordinator share them in one process)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = self.registry = registry
        self.requests = Counter("tfe_serve_requests_total", "Predict requests by result", ["result"], registry=r)
        self.latency = Histogram("tfe_serve_request_seconds", "Predict latency at the endpoint", registry=r,
                                 buckets=(.005, .01, .015, .02, .03, .05, .075, .1, .2, .5, 1, 2, 5, 10))
        self.errors = Counter("tfe_serve_errors_total", "Errors by reason", ["reason"], registry=r)
        self.inflight = Gauge("tfe_serve_inflight", "Predict requests admitted and not answered", registry=r)


def max_predict_body(info: wire.ModelInfo) -> int:
    """The largest well-formed predict body for this model (3 base64 ciphertexts plus a little JSON)."""
    ct = wire.ciphertext_bytes((info.max_batch_size, *info.input_shape))
    return 3 * ((ct + 2) // 3 * 4) + 4096


@dataclass(frozen=True)
class EndpointOptions:
    name: str
    token: str | None = None
    http: HTTPOptions = field(default_factory=lambda: HTTPOptions(threads=64))
    drain_timeout: float = 130.0  # longer than a request's deadline


class EndpointApp:
    def __init__(self, opts: EndpointOptions, backend: Backend, metrics: ServeMetrics) -> None:
        self.opts, self.backend, self.m = opts, backend, metrics
        self.name = opts.name
        self.draining = False
        self.inflight = 0
        self.lock = threading.Condition()

    # -- checks ---------------------------------------------------------------------------------
    def _auth(self, req: Req, path: str) -> None:
        if self.opts.token is None or not path.startswith(("/v1/models", "/v2/models")):
            return
        got = req.headers.get("Authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {self.opts.token}".encode()):
            self.m.requests.labels("unauthorized").inc()
            raise HTTPError("unauthorized", "a valid bearer token is required")

    def _model(self, name: str) -> wire.ModelInfo:
        if name != self.name:
            self.m.requests.labels("not_found").inc()
            raise HTTPError("no_such_model", f"this endpoint serves model '{self.name}', not '{name[:64]}'")
        info = self.backend.info()
        if info is None:
            raise HTTPError("not_ready", "the model is still loading")
        return info

    # -- handlers -------------------------------------------------------------------------------
    def model_info(self, req: Req) -> Reply:
        return 200, self._model(req.match.group(1))

    def predict(self, req: Req) -> Reply:
        t0 = time.perf_counter()
        info = self._model(req.match.group(1))
        req.note(generation=info.share_generation)
        if self.draining:
            self.m.requests.labels("draining").inc()
            raise HTTPError("draining", "the endpoint is shutting down; retry on another replica")
        limit = 2 * max_predict_body(info)  # twice the largest valid body: a bit too many rows gets a precise 400
        if int(req.request.environ.get("CONTENT_LENGTH") or 0) > limit:
            raise HTTPError("too_large", f"request body exceeds the limit of {limit} bytes for this model")
        try:
            pr = wire.PredictRequest.parse(req.json(), info.input_shape, info.max_batch_size)
        except ProtocolError as e:
            self.m.requests.labels("bad_request").inc()
            self.m.errors.labels("bad_request").inc()
            raise HTTPError("bad_request", str(e)) from None
        req.note(request_id=pr.request_id, rows=pr.rows)
        with self.lock:
            self.inflight += 1
            self.m.inflight.set(self.inflight)
        try:
            status, payload = self.backend.predict(pr, req.client_gone)
        finally:
            with self.lock:
                self.inflight -= 1
                self.m.inflight.set(self.inflight)
                self.lock.notify_all()
        if status != 200:
            code = payload.code if isinstance(payload, wire.ErrorBody) else "internal"
            self.m.errors.labels(code).inc()
            self.m.requests.labels(code).inc()
        else:
            self.m.requests.labels("ok").inc()
            if isinstance(payload, wire.PredictResponse):
                req.note(generation=payload.share_generation)
        self.m.latency.observe(time.perf_counter() - t0)
        return status, payload

    def status(self, req: Req) -> Reply:
        st = self.backend.status()
        return 200, wire.Status(st.ready, st.model, st.requests_served, st.max_requests, st.limit_reached,
                                st.share_generation, st.draining or self.draining)

    def readyz(self, req: Req) -> Reply:
        ok = self.backend.ready() and not self.draining
        return (200 if ok else 503), wire.Ready(ok)

    # -- Open Inference Protocol v2: health and metadata (inference stays on v1: ciphertext) ------
    def oip_ready(self, req: Req) -> Reply:
        ok = self.backend.ready() and not self.draining
        return (200 if ok else 400), wire.OipReady(ok)

    def oip_model(self, req: Req) -> Reply:
        return 200, wire.OipModelMetadata.of(self._model(req.match.group(1)))

    def oip_model_ready(self, req: Req) -> Reply:
        name = req.match.group(1)
        if name != self.name:
            raise HTTPError("no_such_model", f"this endpoint serves model '{self.name}', not '{name[:64]}'")
        ok = self.backend.ready() and not self.draining and self.backend.info() is not None
        return (200 if ok else 400), wire.OipModelReady(self.name, ok)

    def app(self, extra: CollectorRegistry | None = None, metrics: bool = True) -> App:
        """The client API. metrics=False: no /metrics here (it is on a metrics port of its own)."""
        app = App(f"endpoint-{self.name}", max_body=self.opts.http.max_body_bytes)
        app.before = self._auth
        app.access_log = True
        regs = [self.m.registry] + ([extra] if extra is not None and extra is not self.m.registry else [])
        app.route("GET", "/healthz", lambda r: (200, wire.Health(True)))
        app.route("GET", "/readyz", self.readyz)
        if metrics:
            app.route("GET", "/metrics", lambda r: (200, metrics_response(*regs)))
        app.route("GET", "/v2/health/live", lambda r: (200, wire.OipLive(True)))
        app.route("GET", "/v2/health/ready", self.oip_ready)
        app.route("GET", r"/v2/models/([^/:]+)", self.oip_model)
        app.route("GET", r"/v2/models/([^/:]+)/ready", self.oip_model_ready)
        app.route("GET", "/v1/status", self.status)
        app.route("GET", "/v1/models", lambda r: (200, wire.ModelList((self.name,))))
        app.route("GET", r"/v1/models/([^/:]+)", self.model_info)
        app.route("POST", r"/v1/models/([^/:]+):predict", self.predict)  # exact limit: max_predict_body
        return app

    # -- shutdown -------------------------------------------------------------------------------
    def drain(self, timeout: float) -> bool:
        """Stop admitting predictions; wait until every admitted one has its answer."""
        with self.lock:
            self.draining = True
            deadline = time.monotonic() + timeout
            while self.inflight and time.monotonic() < deadline:
                self.lock.wait(0.1)
            return self.inflight == 0


def serve_until_signal(servers: list[Server], apps: list[EndpointApp], stop: threading.Event,
                       drain_timeout: float, on_drained: Callable[[], None] | None = None) -> None:
    """Run until stop is set (SIGTERM/SIGINT set it too), then drain every app and stop the servers."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    log.info("stopping: draining in-flight predictions")
    for a in apps:
        a.draining = True
    ok = all(a.drain(drain_timeout) for a in apps)
    if on_drained is not None:
        on_drained()
    log.info("drained (%s); closing HTTP", "all answered" if ok else "timeout")
    for s in servers:
        s.stop()


NOT_READY_TTL = 0.2  # seconds
# A coordinator being replaced (rolling update, pod deleted) answers new predictions 503
# `draining`, then its guard 502 `bad_gateway` until the pod is gone; neither ran the request.
# The kept-alive connections still lead to that pod, so the relay opens new ones (the Service
# picks a ready coordinator) and tries again after these pauses, then answers 503 `not_ready`.
RELAY_RETRY_PAUSES = (0.05, 0.2, 0.5, 1.0, 1.5)  # seconds, 3.25 in all
_STALE = {(503, "draining"), (502, "bad_gateway")}


def _unavailable(e: BaseException) -> tuple[int, wire.ErrorBody]:
    return 503, wire.ErrorBody("coordinator_unavailable", f"the coordinator did not answer ({type(e).__name__})")


def _error_code(obj: Any) -> str | None:
    err = obj.get("error") if isinstance(obj, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    return code if isinstance(code, str) else None


class RelayBackend:
    """The coordinator's relay API, over one keep-alive connection pool."""

    def __init__(self, relay: str, name: str, timeout: float = 135.0, info_ttl: float = 2.0) -> None:
        self.relay, self.timeout = split_hostport(relay), timeout
        self.name = name
        self.pool = self._new_pool()
        self.pauses: tuple[float, ...] = RELAY_RETRY_PAUSES
        self.info_ttl = info_ttl
        self._info: wire.ModelInfo | None = None
        self._info_at = -1e9
        self._ready = False
        self._reachable = True
        self.lock = threading.Lock()

    def _new_pool(self) -> urllib3.HTTPConnectionPool:
        host, port = self.relay
        return urllib3.HTTPConnectionPool(host, port, maxsize=64, block=False, retries=False,
                                          timeout=urllib3.Timeout(connect=5.0, read=self.timeout))

    def _renew_pool(self, stale: urllib3.HTTPConnectionPool) -> None:
        """New connections from now on (the idle ones lead to a coordinator that is going away);
        requests still running on the old pool finish there and their connections are closed."""
        with self.lock:
            if self.pool is not stale:  # another request renewed it already
                return
            self.pool = self._new_pool()
        stale.close()

    def _call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> tuple[int, Any]:
        data = json.dumps(body.to_json(), separators=(",", ":")).encode() if body is not None else None
        for attempt in (0, 1):
            try:
                r = self.pool.request(method, path, body=data, headers={"Content-Type": "application/json"},
                                      timeout=timeout if timeout is not None else self.pool.timeout,
                                      preload_content=True)
                break
            except urllib3.exceptions.ProtocolError:  # a kept-alive connection the relay closed: once more
                if attempt:
                    raise
        try:
            return r.status, json.loads(r.data)
        except ValueError:
            raise OSError(f"relay {path}: HTTP {r.status}, not JSON") from None

    def _refresh(self) -> None:
        now = time.monotonic()
        # Not ready: ask again after NOT_READY_TTL (a coordinator that became ready is seen by the
        # next probe, not up to info_ttl later); ready: every info_ttl.
        if now - self._info_at < (self.info_ttl if self._ready else min(self.info_ttl, NOT_READY_TTL)):
            return
        with self.lock:
            self._info_at = now
            try:
                st, obj = self._call("GET", f"/v1/models/{self.name}", timeout=5.0)
                self._info = wire.ModelInfo.parse(obj) if st == 200 else self._info
                rst, _ = self._call("GET", "/readyz", timeout=5.0)
                self._ready = rst == 200
                self._reachable = True
            except (OSError, urllib3.exceptions.HTTPError, ProtocolError) as e:
                if self._reachable:  # once per outage
                    log.warning("relay unreachable: %s", type(e).__name__)
                self._reachable = False
                self._ready = False

    def info(self) -> wire.ModelInfo | None:
        self._refresh()
        return self._info

    def ready(self) -> bool:
        self._refresh()
        return self._ready and self._info is not None

    def status(self) -> wire.Status:
        try:
            st, obj = self._call("GET", "/v1/status", timeout=5.0)
            if st == 200:
                return wire.Status.parse(obj)
        except (OSError, urllib3.exceptions.HTTPError, ProtocolError):
            pass
        return wire.Status(False, self.name, 0, None, False, None, False)

    def predict(self, req: wire.PredictRequest, gone: Callable[[], bool]) -> tuple[int, Any]:
        pause = threading.Event()
        for wait_s in (*self.pauses, None):
            pool = self.pool
            try:
                st, obj = self._call("POST", f"/v1/models/{self.name}:predict", req)
            except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError,
                    urllib3.exceptions.ClosedPoolError) as e:
                # never delivered: no coordinator behind the relay address right now (or the pool
                # was renewed under this request)
                answer = _unavailable(e)
            except (OSError, urllib3.exceptions.HTTPError) as e:  # maybe delivered: not retried
                return _unavailable(e)
            else:
                if (st, _error_code(obj)) not in _STALE:
                    return self._relayed(st, obj)
                answer = 503, wire.ErrorBody("not_ready", "the coordinator is being replaced; retry")
            if wait_s is None or gone():
                return answer
            self._renew_pool(pool)
            pause.wait(wait_s)
        raise AssertionError("unreachable")

    def _relayed(self, st: int, obj: Any) -> tuple[int, Any]:
        try:
            if st == 200:
                return 200, wire.PredictResponse.parse(obj)
            err = wire.ErrorBody.parse(obj)
            return st, err if err.code in wire.ERRORS else wire.ErrorBody("internal", "unexpected relay error")
        except ProtocolError:
            log.warning("relay answered HTTP %d with a malformed body", st)
            return 502, wire.ErrorBody("worker_refused", "the coordinator's answer was malformed")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tfe-worker endpoint",
                                description="the client-facing HTTP endpoint, relaying to a coordinator (no TF)")
    p.add_argument("--relay", required=True, help="host:port of the coordinator's relay API (serve --relay-port)")
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--listen-fd", type=int, default=None, help="serve on an inherited listening socket")
    p.add_argument("--token-file", default=None)
    p.add_argument("--http-threads", type=int, default=64)
    p.add_argument("--max-connections", type=int, default=1000)
    p.add_argument("--idle-timeout", type=float, default=30.0)
    p.add_argument("--max-body-bytes", type=int, default=wire.MAX_INGRESS_BODY)
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve /metrics on this port (all interfaces) instead of on the client port")
    a = p.parse_args(argv)
    token = read_token(a.token_file)
    http = HTTPOptions(threads=a.http_threads, connection_limit=a.max_connections, channel_timeout=a.idle_timeout,
                       max_body_bytes=a.max_body_bytes)
    opts = EndpointOptions(a.name, token, http)
    metrics = ServeMetrics(CollectorRegistry())
    ep = EndpointApp(opts, RelayBackend(a.relay, a.name), metrics)
    srv = Server(ep.app(metrics=a.metrics_port is None), http)
    sock = socket.socket(fileno=a.listen_fd) if a.listen_fd is not None else None
    port = srv.start(a.host, a.port, sock)
    servers = [srv]
    if a.metrics_port is not None:
        servers.append(start_metrics_server("0.0.0.0", a.metrics_port, metrics.registry))
    log.info("endpoint for model %s on port %d, relaying to %s", a.name, port, a.relay)
    serve_until_signal(servers, [ep], threading.Event(), opts.drain_timeout)
    return 0


def read_token(path: str | None) -> str | None:
    if not path:
        return None
    with open(path) as f:
        return f.read().strip() or None


if __name__ == "__main__":
    sys.exit(main())
