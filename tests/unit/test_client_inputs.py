"""Bad inputs are refused by the client before anything is sent (a real loopback HTTP server
stands in for the endpoint's metadata route and records every request it receives)."""

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from tfe_client import Client, RemoteError
from tfe_client.crypto import WorkerKey, b64e
from tfe_client.errors import ProtocolError

KEYS = [WorkerKey.generate() for _ in range(3)]
META = {"name": "digits", "protocol": "ABY3", "shareGeneration": 1, "modelDigest": "0" * 64,
        "input": {"shape": [None, 8, 8], "dtype": "float32"},
        "output": {"shape": [None, 10], "postprocess": "softmax"},
        "fixedPoint": {"ringBits": 64, "fractionalBits": 16, "integralBits": 11}, "maxBatchSize": 4,
        "workers": [{"name": f"server{i}", "publicKey": b64e(k.public)} for i, k in enumerate(KEYS)]}
PINNED = [b64e(k.public) for k in KEYS]


@pytest.fixture()
def endpoint() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(f"GET {self.path}")
            body = json.dumps(META if self.path == "/v1/models/digits" else
                              {"error": {"code": "no_such_model", "message": "nope"}}).encode()
            self.send_response(200 if self.path == "/v1/models/digits" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            seen.append(f"POST {self.path}")
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("x,msg", [
    (np.zeros((1, 64)), r"does not match the model input \[B, 8, 8\]"),
    (np.zeros((2, 8, 9)), r"does not match"),
    (np.zeros((0, 8, 8)), "no rows"),
    (np.zeros((5, 8, 8)), "exceed the endpoint's maximum batch of 4"),
    (np.full((1, 8, 8), np.nan), "NaN"),
    (np.full((1, 8, 8), -np.inf), "NaN or infinity"),
    (np.full((1, 8, 8), 4096.0), "fixed-point range"),
    (np.array([["a"] * 8] * 8), "numeric"),
])
def test_bad_input_raises_before_sending(endpoint: tuple[str, list[str]], x: Any, msg: str) -> None:
    url, seen = endpoint
    with pytest.raises(ValueError, match=msg):
        Client(url, expected_keys=PINNED).predict("digits", x)
    assert seen == ["GET /v1/models/digits"]  # metadata only: no predict request went out


def test_single_sample_gets_a_batch_dimension(endpoint: tuple[str, list[str]]) -> None:
    url, _ = endpoint
    x, info = Client(url, expected_keys=PINNED).prepare("digits", np.zeros((8, 8), np.float32))
    assert x.shape == (1, 8, 8) and x.dtype == np.float64 and info.input_shape == (8, 8)


def test_pinned_keys_must_match(endpoint: tuple[str, list[str]]) -> None:
    url, _ = endpoint
    other = [b64e(WorkerKey.generate().public) for _ in range(3)]
    with pytest.raises(ProtocolError, match="pinned keys"):
        Client(url, expected_keys=other).model_info("digits")
    assert Client(url, expected_keys=[w["publicKey"] for w in META["workers"]]).model_info("digits").name == "digits"  # type: ignore[index]


def test_remote_errors_carry_status_and_code(endpoint: tuple[str, list[str]]) -> None:
    url, _ = endpoint
    with pytest.raises(RemoteError) as e:
        Client(url, expected_keys=PINNED).model_info("other")
    assert (e.value.status, e.value.code) == (404, "no_such_model")


def test_bad_endpoint_and_model_name() -> None:
    with pytest.raises(ValueError, match="endpoint"):
        Client("ftp://x")
    with pytest.raises(ProtocolError, match="DNS-1123"):
        Client("http://127.0.0.1:1").model_info("../etc")
