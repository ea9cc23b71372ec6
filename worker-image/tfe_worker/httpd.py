"""A small JSON-over-HTTP server (stdlib), shared by the player and the coordinator.

Handlers raise HTTPError for client mistakes; anything else becomes a 500 with a generic
message (the detail goes to the log without request data). Bodies are size-limited.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from re import Pattern
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("tfe_worker.http")

Handler = Callable[["Request"], tuple[int, Any]]


class HTTPError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Request:
    def __init__(self, handler: BaseHTTPRequestHandler, match: re.Match[str], max_body: int) -> None:
        self.h = handler
        self.match = match
        self.max_body = max_body
        self.headers = handler.headers

    def body(self) -> bytes:
        n = self.h.headers.get("Content-Length")
        if n is None:
            raise HTTPError(411, "length_required", "Content-Length is required")
        try:
            size = int(n)
        except ValueError:
            raise HTTPError(400, "bad_length", "Content-Length is not a number") from None
        if size < 0 or size > self.max_body:
            raise HTTPError(413, "too_large", f"request body of {size} bytes exceeds the limit of {self.max_body}")
        return self.h.rfile.read(size)

    def json(self) -> Any:
        ctype = (self.h.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype != "application/json":
            raise HTTPError(415, "unsupported_media_type", "Content-Type must be application/json")
        raw = self.body()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HTTPError(400, "bad_json", "request body is not valid JSON") from None


class Raw:
    """A non-JSON response body (metrics)."""

    def __init__(self, body: bytes, ctype: str) -> None:
        self.body, self.ctype = body, ctype


def metrics_response(registry: CollectorRegistry) -> Raw:
    return Raw(generate_latest(registry), CONTENT_TYPE_LATEST)


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A peer that hangs up is not an error worth a traceback."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        log.error("HTTP connection from %s failed: %s", client_address[0], type(exc).__name__)


class JSONServer:
    """Routes: (method, regex, handler). Serves until stop()."""

    def __init__(self, name: str, max_body: int = 1 << 20) -> None:
        self.name = name
        self.max_body = max_body
        self.routes: list[tuple[str, Pattern[str], Handler]] = []
        self.before: Callable[[Request, str], None] | None = None
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def route(self, method: str, pattern: str, fn: Handler) -> None:
        self.routes.append((method, re.compile(f"^{pattern}$"), fn))

    def _make_handler(self) -> type:
        server = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out without a delayed-ACK stall
            server_version = "tfe-worker"
            sys_version = ""

            def log_message(self, fmt: str, *args: Any) -> None:  # access logs: method/path/status only
                return

            def _send(self, status: int, payload: Any) -> None:
                if isinstance(payload, Raw):
                    body, ctype = payload.body, payload.ctype
                else:
                    body, ctype = json.dumps(payload, separators=(",", ":")).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _dispatch(self, method: str) -> None:
                path = self.path.split("?", 1)[0]
                allowed = []
                for m, rx, fn in server.routes:
                    match = rx.match(path)
                    if not match:
                        continue
                    if m != method:
                        allowed.append(m)
                        continue
                    req = Request(self, match, server.max_body)
                    try:
                        if server.before is not None:
                            server.before(req, path)
                        status, payload = fn(req)
                    except HTTPError as e:
                        status, payload = e.status, {"error": {"code": e.code, "message": e.message}}
                        if e.status >= 500:
                            log.warning("%s %s -> %d %s", method, path, e.status, e.code)
                        # unread bodies would corrupt the keep-alive stream
                        self.close_connection = True
                    except Exception:
                        log.exception("%s %s failed", method, path)
                        status, payload = 500, {"error": {"code": "internal", "message": "internal error"}}
                        self.close_connection = True
                    try:
                        self._send(status, payload)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                if allowed:
                    self._send(405, {"error": {"code": "method_not_allowed", "message": f"use {allowed[0]}"}})
                else:
                    self._send(404, {"error": {"code": "not_found", "message": f"no such path {path[:100]}"}})

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def do_DELETE(self) -> None:
                self._dispatch("DELETE")

        return H

    def start(self, host: str, port: int, sock: socket.socket | None = None) -> int:
        handler = self._make_handler()
        if sock is not None:
            httpd = _Quiet(sock.getsockname()[:2], handler, bind_and_activate=False)
            httpd.socket.close()
            httpd.socket = sock
        else:
            httpd = _Quiet((host, port), handler)
        httpd.daemon_threads = True
        httpd.request_queue_size = 128
        self.httpd = httpd
        self.thread = threading.Thread(target=httpd.serve_forever, name=f"{self.name}-http", daemon=True)
        self.thread.start()
        return int(httpd.server_address[1])

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()


def split_hostport(s: str) -> tuple[str, int]:
    host, port = s.rsplit(":", 1)
    return host.strip("[]"), int(port)


def get_json(addr: str, path: str, timeout: float = 5.0) -> dict[str, Any]:
    """One GET against a host:port (used for readiness and public metadata)."""
    import http.client

    host, port = split_hostport(addr)
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        data = r.read()
        if r.status != 200:
            raise OSError(f"GET {addr}{path}: HTTP {r.status}")
        obj = json.loads(data)
        if not isinstance(obj, dict):
            raise OSError(f"GET {addr}{path}: not a JSON object")
        return obj
    finally:
        c.close()
