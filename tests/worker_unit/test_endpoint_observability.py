"""The endpoint's OIP v2 routes, access-log lines (metadata only), Retry-After, the metrics port and
JSON logs: a real EndpointApp on a real waitress server, in front of a stub backend."""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from tfe_client import wire
from tfe_client.client import seal_request
from tfe_client.crypto import Sealed, WorkerKey
from tfe_client.fixedpoint import FixedPoint
from tfe_worker import logs
from tfe_worker.endpoint import EndpointApp, EndpointOptions, ServeMetrics
from tfe_worker.httpapp import HTTPOptions, Server, start_metrics_server

KEYS = [WorkerKey.generate() for _ in range(3)]
INFO = wire.ModelInfo("digits", "ABY3", 7, (4,), (3,), "softmax", FixedPoint(), 8, tuple(k.public for k in KEYS),
                      "0" * 64)


class StubBackend:
    def __init__(self) -> None:
        self.loaded = True
        self.is_ready = True

    def info(self) -> wire.ModelInfo | None:
        return INFO if self.loaded else None

    def status(self) -> wire.Status:
        return wire.Status(self.is_ready, "digits", 0, None, False, 7, False)

    def ready(self) -> bool:
        return self.is_ready and self.loaded

    def predict(self, req: wire.PredictRequest, gone: Callable[[], bool]) -> tuple[int, Any]:
        out = tuple(wire.Bundle(w, Sealed(b"\0" * 12, b"\1" * wire.ciphertext_bytes((req.rows, 3))))
                    for w in wire.WORKERS)
        return 200, wire.PredictResponse(req.request_id, (req.rows, 3), 7, "softmax", out)


@pytest.fixture
def endpoint() -> Iterator[tuple[int, StubBackend]]:
    backend = StubBackend()
    ep = EndpointApp(EndpointOptions("digits", "tok"), backend, ServeMetrics(CollectorRegistry()))
    srv = Server(ep.app(metrics=False), HTTPOptions(threads=4))
    port = srv.start("127.0.0.1", 0)
    yield port, backend
    srv.stop()


def call(port: int, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any, http.client.HTTPResponse]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = json.dumps(body).encode() if body is not None else None
        c.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = c.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if raw.startswith(b"{") else raw, r
    finally:
        c.close()


AUTH = {"Authorization": "Bearer tok"}


def test_oip_v2_health_and_metadata(endpoint: tuple[int, StubBackend]) -> None:
    port, backend = endpoint
    st, body, _ = call(port, "GET", "/v2/health/live")
    assert (st, wire.OipLive.parse(body)) == (200, wire.OipLive(True))
    st, body, _ = call(port, "GET", "/v2/health/ready")
    assert (st, wire.OipReady.parse(body)) == (200, wire.OipReady(True))
    st, body, _ = call(port, "GET", "/v2/models/digits", headers=AUTH)
    meta = wire.OipModelMetadata.parse(body)
    assert st == 200 and meta == wire.OipModelMetadata.of(INFO)
    assert body["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert body["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}]
    assert body["versions"] == ["7"]
    st, body, _ = call(port, "GET", "/v2/models/digits/ready", headers=AUTH)
    assert (st, wire.OipModelReady.parse(body)) == (200, wire.OipModelReady("digits", True))
    assert call(port, "GET", "/v2/models/digits")[0] == 401  # the token guards v2 metadata as it guards v1
    assert call(port, "GET", "/v2/models/other", headers=AUTH)[1]["error"]["code"] == "no_such_model"
    assert call(port, "GET", "/v2/models/other/ready", headers=AUTH)[0] == 404
    backend.is_ready = False
    st, body, _ = call(port, "GET", "/v2/health/ready")
    assert (st, body) == (400, {"ready": False})  # OIP: a 4xx means false
    st, body, _ = call(port, "GET", "/v2/models/digits/ready", headers=AUTH)
    assert (st, body) == (400, {"name": "digits", "ready": False})


def test_not_ready_carries_retry_after(endpoint: tuple[int, StubBackend]) -> None:
    port, backend = endpoint
    backend.loaded = False
    st, body, resp = call(port, "GET", "/v1/models/digits", headers=AUTH)
    assert (st, body["error"]["code"]) == (503, "not_ready")
    assert resp.getheader("Retry-After") == "1"
    backend.loaded = True
    assert call(port, "GET", "/v1/models/digits", headers=AUTH)[2].getheader("Retry-After") is None


def test_one_access_line_per_request_with_metadata_only(endpoint: tuple[int, StubBackend],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    port, _ = endpoint
    x = np.array([[1.25, -3.5, 7.75, 0.125], [2.0, 4.0, -8.0, 16.5]])
    req, _ = seal_request("digits", [k.public for k in KEYS], INFO.fixed_point.encode(x))
    body = req.to_json()
    with caplog.at_level(logging.DEBUG, logger="tfe_worker.access"):
        st, resp, _ = call(port, "POST", "/v1/models/digits:predict", body, headers=AUTH)
        assert st == 200
        assert call(port, "POST", "/v1/models/digits:predict", body)[0] == 401
        call(port, "GET", "/healthz")
    lines = [r for r in caplog.records if r.name == "tfe_worker.access"]
    assert len(lines) == 3
    ok, refused, probe = (r.access for r in lines)  # type: ignore[attr-defined]
    assert ok == {"app": "endpoint-digits", "method": "POST", "route": "/v1/models/{}:predict", "status": 200,
                  "latency_ms": ok["latency_ms"], "request_id": req.request_id, "rows": 2, "generation": 7}
    assert isinstance(ok["latency_ms"], float) and ok["latency_ms"] >= 0
    assert refused["status"] == 401 and refused["code"] == "unauthorized" and "request_id" not in refused
    assert probe["route"] == "/healthz" and lines[2].levelno == logging.DEBUG  # probes: DEBUG only
    assert lines[0].levelno == logging.INFO
    text = "\n".join(r.getMessage() + json.dumps(r.access) for r in lines)  # type: ignore[attr-defined]
    for b in body["bundles"] + resp["outputs"]:
        assert b["ciphertext"][:16] not in text and b["nonce"] not in text
    assert body["ephemeralKey"] not in text
    for v in ("1.25", "3.5", "7.75", "16.5"):
        assert v not in text
    assert AUTH["Authorization"] not in text and "tok" not in json.dumps([r.access for r in lines])  # type: ignore[attr-defined]


def test_unknown_paths_are_logged_without_the_path(endpoint: tuple[int, StubBackend],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    port, _ = endpoint
    with caplog.at_level(logging.INFO, logger="tfe_worker.access"):
        call(port, "GET", "/secret-looking/1.25")
    (line,) = [r for r in caplog.records if r.name == "tfe_worker.access"]
    assert line.access["route"] == "-" and "1.25" not in line.getMessage()  # type: ignore[attr-defined]


def test_metrics_port_and_no_metrics_on_the_client_port(endpoint: tuple[int, StubBackend]) -> None:
    port, _ = endpoint
    assert call(port, "GET", "/metrics")[0] == 404
    reg = CollectorRegistry()
    ServeMetrics(reg).requests.labels("ok").inc()
    msrv = start_metrics_server("127.0.0.1", 0, reg)
    try:
        mport = int(msrv.server.effective_port)
        st, text, _ = call(mport, "GET", "/metrics")
        assert st == 200 and b'tfe_serve_requests_total{result="ok"} 1.0' in text
        assert call(mport, "GET", "/v1/models/digits")[0] == 404  # nothing of the data plane there
    finally:
        msrv.stop()


def test_json_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.setup("json", "INFO")
        logging.getLogger("tfe_worker.access").info("POST /x 200", extra={"access": {"status": 200, "rows": 2}})
        logging.getLogger("tfe_worker.serve").warning("plain %s", "line")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    a, b = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert a["logger"] == "tfe_worker.access" and a["status"] == 200 and a["rows"] == 2 and a["level"] == "INFO"
    assert b["message"] == "plain line" and b["time"].endswith("Z")
    with pytest.raises(ValueError, match="log format"):
        logs.setup("xml")
