"""HTTP serving for every tfe-worker process: waitress + werkzeug, JSON in and out.

waitress gives bounded worker threads, a connection limit, idle/slow channel timeouts and
header/body size limits enforced while parsing (a body over the limit is refused on its
Content-Length, before it is read). Slow or idle connections cost a socket, never a thread:
waitress reads requests asynchronously and hands a thread only a complete request.

Handlers raise HTTPError(code, message) with a code from wire.ERRORS (the status comes from
there); anything else becomes a 500 `internal` whose detail goes to the log only. Even
waitress's own parse errors (413, 431, 400) are answered in the JSON error format.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from re import Pattern
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask
from werkzeug.wrappers import Request, Response

from tfe_client import wire

log = logging.getLogger("tfe_worker.http")
# One line per request of an App with access_log on: metadata only (route, status, latency, and what
# a handler notes: request id, rows, share generation, error code), never a header, body or value.
access_log = logging.getLogger("tfe_worker.access")
# Routes whose lines go at DEBUG (probes and scrapes every few seconds would drown the rest).
QUIET_ROUTES = frozenset(("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"))
ACCESS_FIELDS = ("request_id", "rows", "generation", "code")
# Seconds a client should wait before trying again (the client retries only `not_ready`).
RETRY_AFTER = {"not_ready": 1, "overloaded": 1}

_WAITRESS_CODES = {400: "bad_http", 413: "too_large", 431: "headers_too_large", 500: "internal",
                   501: "not_implemented"}


@dataclass(frozen=True)
class HTTPOptions:
    """Limits of one HTTP server."""

    threads: int = 8  # handler threads (a predict holds one while it waits for its batch)
    connection_limit: int = 1000  # open connections; idle ones cost a socket, not a thread
    channel_timeout: float = 30.0  # an idle connection (no bytes either way) is closed after this long
    max_header_bytes: int = 16 << 10
    max_body_bytes: int = 1 << 20  # the largest body of any route (routes may set less)
    backlog: int = 1024


class HTTPError(Exception):
    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if code not in wire.ERRORS:
            raise ValueError(f"undeclared error code {code!r}: add it to tfe_client.wire.ERRORS")
        self.code, self.message = code, message
        self.status = status if status is not None else wire.ERRORS[code][0]


class Raw:
    """A non-JSON response body (metrics)."""

    def __init__(self, body: bytes, ctype: str) -> None:
        self.body, self.ctype = body, ctype


def metrics_response(*registries: CollectorRegistry) -> Raw:
    return Raw(b"".join(generate_latest(r) for r in registries), CONTENT_TYPE_LATEST)


class Req:
    """One request as a handler sees it."""

    def __init__(self, request: Request, match: re.Match[str], max_body: int) -> None:
        self.request = request
        self.match = match
        self.max_body = max_body
        self.headers = request.headers
        self._gone = request.environ.get("waitress.client_disconnected")
        self.notes: dict[str, Any] = request.environ.setdefault("tfe.access", {})

    def note(self, **fields: Any) -> None:
        """Metadata for this request's access-log line (ACCESS_FIELDS only; never a value)."""
        for k in fields:
            if k not in ACCESS_FIELDS:
                raise ValueError(f"{k!r} is not an access-log field")
        self.notes.update(fields)

    def client_gone(self) -> bool:
        """True once the client closed its connection (it no longer waits for an answer)."""
        return bool(self._gone()) if self._gone is not None else False

    def json(self) -> Any:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype != "application/json":
            raise HTTPError("unsupported_media_type", "Content-Type must be application/json")
        raw = self.request.get_data(cache=False)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise HTTPError("bad_json", "request body is not valid JSON") from None


Reply = tuple[int, Any]
Handler = Callable[[Req], Reply]


def _body(payload: Any) -> tuple[bytes, str]:
    if isinstance(payload, Raw):
        return payload.body, payload.ctype
    if hasattr(payload, "to_json"):
        payload = payload.to_json()
    return json.dumps(payload, separators=(",", ":")).encode(), "application/json"


class App:
    """A WSGI app: (method, regex, handler) routes with per-route body limits."""

    def __init__(self, name: str, max_body: int = 1 << 20) -> None:
        self.name = name
        self.max_body = max_body
        self.routes: list[tuple[str, Pattern[str], Handler, int]] = []
        self.templates: dict[str, str] = {}  # pattern -> route as logged ("/v1/models/{}:predict")
        self.before: Callable[[Req, str], None] | None = None
        self.access_log = False

    def route(self, method: str, pattern: str, fn: Handler, max_body: int | None = None) -> None:
        self.routes.append((method, re.compile(f"^{pattern}$"), fn, min(max_body or self.max_body, self.max_body)))
        self.templates[pattern] = re.sub(r"\([^)]*\)", "{}", pattern).replace("\\", "")

    def _route_of(self, path: str) -> str:
        for _, rx, _, _ in self.routes:
            if rx.match(path):
                return self.templates[rx.pattern[1:-1]]
        return "-"  # an unknown path is not logged: it is whatever the client sent

    def _check_length(self, environ: dict[str, Any], limit: int) -> None:
        n = environ.get("CONTENT_LENGTH")
        if not n:
            raise HTTPError("length_required", "Content-Length is required")
        try:
            size = int(n)
        except ValueError:
            raise HTTPError("bad_http", "Content-Length is not a number") from None
        if size < 0 or size > limit:
            raise HTTPError("too_large", f"request body of {size} bytes exceeds the limit of {limit}")

    def dispatch(self, request: Request) -> tuple[int, Any]:
        method, path = request.method, request.path
        allowed = []
        for m, rx, fn, limit in self.routes:
            match = rx.match(path)
            if not match:
                continue
            if m != method:
                allowed.append(m)
                continue
            req = Req(request, match, limit)
            try:
                if method in ("POST", "PUT"):
                    self._check_length(request.environ, limit)
                if self.before is not None:
                    self.before(req, path)
                return fn(req)
            except HTTPError as e:
                if e.status >= 500 and e.code not in ("draining", "not_ready"):  # those two: expected states
                    log.warning("%s %s -> %d %s", method, path[:100], e.status, e.code)
                return e.status, wire.ErrorBody(e.code, e.message)
            except Exception:
                log.exception("%s %s failed", method, path[:100])
                return 500, wire.ErrorBody("internal", "internal error")
        if allowed:
            return 405, wire.ErrorBody("method_not_allowed", f"use {allowed[0]}")
        return 404, wire.ErrorBody("not_found", f"no such path {path[:100]}")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        t0 = time.perf_counter()
        request = Request(environ)
        status, payload = self.dispatch(request)
        body, ctype = _body(payload)
        resp = Response(body, status=status, content_type=ctype)
        if isinstance(payload, wire.ErrorBody) and payload.code in RETRY_AFTER:
            resp.headers["Retry-After"] = str(RETRY_AFTER[payload.code])
        if self.access_log:
            self._log_access(request, status, payload, time.perf_counter() - t0)
        return resp(environ, start_response)

    def _log_access(self, request: Request, status: int, payload: Any, seconds: float) -> None:
        route = self._route_of(request.path)
        level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        notes: dict[str, Any] = dict(request.environ.get("tfe.access") or {})
        if isinstance(payload, wire.ErrorBody):
            notes.setdefault("code", payload.code)
        fields: dict[str, Any] = {"app": self.name, "method": request.method, "route": route, "status": status,
                                  "latency_ms": round(seconds * 1000, 2)}
        fields.update((k, notes[k]) for k in ACCESS_FIELDS if k in notes)
        text = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("method", "route", "status"))
        access_log.log(level, "%s %s %d %s", request.method, route, status, text, extra={"access": fields})


class _JSONErrorTask(ErrorTask):
    """waitress's own refusals (body/header too large, bad HTTP) in the JSON error format."""

    def execute(self) -> None:
        req: Any = self.request
        e = req.error
        code = _WAITRESS_CODES.get(e.code, "bad_http")
        msg = {"too_large": "request body exceeds the limit (checked on Content-Length, before reading it)",
               "headers_too_large": "request headers exceed the limit"}.get(code, f"{e.reason}: {e.body}"[:200])
        body = json.dumps(wire.ErrorBody(code, msg).to_json(), separators=(",", ":")).encode()
        self.status = f"{e.code} {e.reason}"
        headers: Any = self.response_headers
        headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _JSONChannel(HTTPChannel):
    error_task_class = _JSONErrorTask


class Server:
    """One waitress server for an App, on host:port or an inherited listening socket."""

    def __init__(self, app: App, opts: HTTPOptions) -> None:
        self.app, self.opts = app, opts
        self.server: Any = None
        self.thread: threading.Thread | None = None

    def start(self, host: str, port: int, sock: socket.socket | None = None) -> int:
        o = self.opts
        kw: dict[str, Any] = {
            "threads": o.threads, "connection_limit": o.connection_limit, "channel_timeout": o.channel_timeout,
            "cleanup_interval": max(1, int(min(o.channel_timeout / 2, 10))),
            "max_request_header_size": o.max_header_bytes, "max_request_body_size": o.max_body_bytes,
            "backlog": o.backlog, "channel_request_lookahead": 1, "asyncore_use_poll": True,
            "ident": "tfe-worker", "expose_tracebacks": False, "log_socket_errors": False}
        if sock is not None:
            sock.setblocking(False)
            kw["sockets"] = [sock]
        else:
            kw.update(host=host, port=port)
        self.server = create_server(self.app, **kw)
        self.server.channel_class = _JSONChannel
        self.thread = threading.Thread(target=self.server.run, name=f"{self.app.name}-http", daemon=True)
        self.thread.start()
        return int(self.server.effective_port)

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Stop accepting, let answers already being written leave (bounded), then close everything.

        Every change to waitress's socket map runs in its loop thread (through its trigger), except
        the trigger itself: its pipe is closed here, once its loop and handler threads are gone.
        waitress's pull_trigger queues a thunk, then writes the wake-up byte; a loop already awake
        (another thread's pull) may run the thunk in between. A thunk that closed the trigger (as
        wasyncore.close_all does) would make that write hit a closed fd: EBADF, or, once the number
        is reused by a socket or file opened meanwhile, a stray b"x" written into it."""
        from waitress import wasyncore

        srv = self.server
        if srv is None:
            return
        trig = srv.trigger
        trig.pull_trigger(lambda: wasyncore.dispatcher.close(srv))  # the listening socket only
        deadline = time.monotonic() + flush_timeout
        while time.monotonic() < deadline:
            if not any(c.requests or c.total_outbufs_len for c in list(srv.active_channels.values())):
                break
            time.sleep(0.05)
        srv.task_dispatcher.shutdown(timeout=2)

        def close_map() -> None:  # every connection; the trigger leaves the map open, so the loop ends
            trig.del_channel()
            wasyncore.close_all(srv._map)

        trig.pull_trigger(close_map)
        if self.thread is not None:
            self.thread.join(timeout=5)
        self.server = None
        if self.thread is not None and self.thread.is_alive():
            log.warning("%s: the HTTP loop did not end; its wake-up pipe is left open", self.app.name)
            return
        close_map()  # the loop is gone: a no-op unless it died before running close_map
        if srv.task_dispatcher.threads:  # a handler still running may pull the trigger when it finishes
            log.warning("%s: %d handler thread(s) still running; the HTTP wake-up pipe is left open",
                        self.app.name, len(srv.task_dispatcher.threads))
            return
        trig.close()


def start_metrics_server(host: str, port: int, *registries: CollectorRegistry) -> Server:
    """A port of its own for Prometheus: GET /metrics (and /healthz) only, nothing of the data
    plane, so that a NetworkPolicy can admit scrapes without opening a data port."""
    app = App("metrics", max_body=1024)
    app.route("GET", "/metrics", lambda r: (200, metrics_response(*registries)))
    app.route("GET", "/healthz", lambda r: (200, wire.Health(True)))
    srv = Server(app, HTTPOptions(threads=2, connection_limit=64, channel_timeout=30.0, max_body_bytes=1024,
                                  backlog=64))
    bound = srv.start(host, port)
    log.info("metrics on %s:%d", host, bound)
    return srv


def split_hostport(s: str) -> tuple[str, int]:
    host, port = s.rsplit(":", 1)
    return host.strip("[]"), int(port)
