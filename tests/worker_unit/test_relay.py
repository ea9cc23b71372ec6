"""The endpoint's relay to the coordinator across a coordinator replacement.

Real HTTP all the way: two coordinator relay APIs (EndpointApp, as `serve --relay-port` runs it, on
real waitress servers, in front of a stub backend) behind a small TCP "Service" that, like
kube-proxy, picks the target when a connection opens; kept-alive connections stay on their pod.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from test_endpoint_observability import INFO, KEYS, StubBackend

from tfe_client import wire
from tfe_client.client import seal_request
from tfe_worker.endpoint import EndpointApp, EndpointOptions, RelayBackend, ServeMetrics
from tfe_worker.httpapp import HTTPOptions, Server


class CountingBackend(StubBackend):
    def __init__(self) -> None:
        super().__init__()
        self.predictions = 0

    def predict(self, req: wire.PredictRequest, gone: Callable[[], bool]) -> tuple[int, Any]:
        self.predictions += 1
        return super().predict(req, gone)


class Service:
    """Forwards each new TCP connection to the port `target` names at that moment."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                a, _ = self.sock.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [a, b]
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pipe, args=(x, y), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.stopped = True
        self.sock.close()
        for c in self.conns:
            c.close()


Relay = tuple[EndpointApp, CountingBackend, int]


@pytest.fixture
def relays() -> Iterator[tuple[Relay, Relay]]:
    out, servers = [], []
    for _ in range(2):
        backend = CountingBackend()
        app = EndpointApp(EndpointOptions("digits", None), backend, ServeMetrics(CollectorRegistry()))
        srv = Server(app.app(metrics=False), HTTPOptions(threads=4))
        out.append((app, backend, srv.start("127.0.0.1", 0)))
        servers.append(srv)
    yield out[0], out[1]
    for s in servers:
        s.stop()


def request() -> wire.PredictRequest:
    x = INFO.fixed_point.encode(np.zeros((1, 4)))
    return seal_request("digits", [k.public for k in KEYS], x)[0]


def test_a_draining_coordinator_is_left_for_the_one_that_replaced_it(relays: tuple[Relay, Relay]) -> None:
    (old_app, old, old_port), (_, new, new_port) = relays
    svc = Service(old_port)
    rb = RelayBackend(f"127.0.0.1:{svc.port}", "digits")
    try:
        assert rb.predict(request(), lambda: False)[0] == 200  # a kept-alive connection to the old pod
        assert old.predictions == 1
        old_app.draining = True  # SIGTERM: it refuses new predictions ...
        svc.target = new_port  # ... and the Service sends new connections to its replacement
        status, answer = rb.predict(request(), lambda: False)
        assert status == 200, answer
        assert (old.predictions, new.predictions) == (1, 1)
    finally:
        svc.close()


def test_no_coordinator_to_move_to_is_not_ready_after_a_bounded_retry(relays: tuple[Relay, Relay]) -> None:
    (old_app, old, old_port), _ = relays
    svc = Service(old_port)
    rb = RelayBackend(f"127.0.0.1:{svc.port}", "digits")
    rb.pauses = (0.01, 0.01, 0.01)
    try:
        old_app.draining = True
        status, answer = rb.predict(request(), lambda: False)
        assert status == 503 and answer.code == "not_ready", answer  # the client's retry takes over
        assert old.predictions == 0
        gone = rb.predict(request(), lambda: True)  # a client that left: no retries for it
        assert gone[0] == 503
    finally:
        svc.close()
