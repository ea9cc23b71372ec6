"""Integration fixtures: real TF Encrypted players, share job and coordinator as local
processes (tfe_worker.local.Stack), reached over real HTTP by the real client."""

import http.client
import json
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfe_worker.demo import digits
from tfe_worker.local import Stack, free_ports, new_stack

READY_TIMEOUT = 300.0


def pytest_configure(config):
    if os.environ.get("TFE_NETNS") != "1" and os.environ.get("TFE_ALLOW_HOST_NETWORK") != "1":
        raise pytest.UsageError("integration tests run in a private network namespace: use `make integration` "
                                "(or set TFE_ALLOW_HOST_NETWORK=1)")


def http_json(port, method, path, body=None, headers=None, raw=None, timeout=60.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        payload = r.read()
        try:
            return r.status, json.loads(payload) if payload else None
        except json.JSONDecodeError:
            return r.status, payload
    finally:
        c.close()


def wait_http_ready(port, proc, timeout=READY_TIMEOUT):
    """Poll the endpoint's /readyz (the API of the process under test) until 200 or timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with code {proc.returncode} before becoming ready")
        try:
            if http_json(port, "GET", "/readyz", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"endpoint on port {port} not ready after {timeout}s")


@pytest.fixture(scope="session")
def data():
    return digits()


@pytest.fixture(scope="session")
def models(tmp_path_factory, data):
    import tensorflow as tf

    L = tf.keras.layers
    x_tr, _, y_tr, _ = data
    d = tmp_path_factory.mktemp("models")
    tf.keras.utils.set_random_seed(0)
    mlp = tf.keras.Sequential([L.Dense(128, activation="relu", input_shape=(64,)), L.Dense(10, activation="softmax")])
    mlp.compile("adam", "sparse_categorical_crossentropy")
    mlp.fit(x_tr, y_tr, epochs=20, verbose=0)
    mlp.save(d / "mlp.h5")
    cnn = tf.keras.Sequential([L.Reshape((8, 8, 1), input_shape=(64,)), L.Conv2D(8, 3, activation="relu"),
                               L.AveragePooling2D(2), L.Flatten(), L.Dense(10, activation="softmax")])
    cnn.compile("adam", "sparse_categorical_crossentropy")
    cnn.fit(x_tr, y_tr, epochs=20, verbose=0)
    cnn.save(d / "cnn.h5")
    bad = tf.keras.Sequential([L.Reshape((8, 8), input_shape=(64,)), L.LSTM(4, name="lstm_encoder"), L.Dense(10)])
    bad.save(d / "bad.h5")
    return {"mlp": str(d / "mlp.h5"), "cnn": str(d / "cnn.h5"), "bad": str(d / "bad.h5"),
            "mlp_keras": mlp, "cnn_keras": cnn}


class Deployment:
    def __init__(self, stack: Stack):
        self.stack = stack
        self.port = None
        self.serve = None
        self._pins = None

    def start_serve(self, *extra, name=None):
        self.port = free_ports(1)[0]
        stack = self.stack
        if name is not None:
            stack = self.stack.for_model(name)
        self.serve = stack.start_serve(self.port, ["--max-batch-size", "8", "--buckets", "1,8",
                                                   "--max-wait-ms", "5", *extra])
        wait_http_ready(self.port, self.serve)
        return self.port

    def coordinator_metrics(self, name=None):
        """The coordinator's /metrics: through its relay (as `operator`) when the endpoint is a process
        of its own (the default with TLS on), else on the one serve process's port."""
        if self.stack.tls:
            status, body = self.stack.call(f"coordinator:{name or self.stack.name}", "GET", "/metrics")
            assert status == 200, body
            return body.decode()
        return http_json(self.port, "GET", "/metrics")[1].decode()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def pins(self):
        """The workers' public keys, read from the workers (not the endpoint): client pins."""
        if self._pins is None:
            self._pins = self.stack.pins()
        return self._pins

    def client(self, url=None, **kw):
        """A client of this deployment's endpoint (or `url`), pinned to the workers' keys."""
        from tfe_client import Client

        return Client(url or self.url, pins=self.pins, **kw)

    def logs_text(self):
        out = []
        for p in self.stack.logs.values():
            if os.path.exists(p):
                with open(p, errors="replace") as f:
                    out.append(f.read())
        return "\n".join(out)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, models):
    """Three players with the digits MLP shared as 'digits' (generation 1) and a coordinator."""
    state = tmp_path_factory.mktemp("state")
    stack = new_stack(str(state), "digits", tls=os.environ.get("TFE_TEST_TLS", "1") != "0")  # 0: the insecure path
    try:
        stack.start_players(READY_TIMEOUT)
        # the coordinator never needs the model file: share from a copy, then delete it
        copy = str(state / "upload.h5")
        shutil.copy(models["mlp"], copy)
        rc = stack.share(copy)
        if rc != 0:
            with open(stack.logs["share-digits-g1"]) as f:
                pytest.fail(f"share job failed ({rc}): {f.read()[-2000:]}")
        os.unlink(copy)
        dep = Deployment(stack)
        dep.start_serve()
        yield dep
    finally:
        stack.stop()


@pytest.fixture()
def rng():
    return np.random.default_rng(1234)


def splice(a, b, record=None):
    """Copy bytes from socket a to socket b until either side closes (record(data): a tap's log)."""
    try:
        while data := a.recv(65536):
            if record is not None:
                record(data)
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def relay(a, b, record=None):
    """Both directions of a connection, each in a daemon thread."""
    threading.Thread(target=splice, args=(a, b, record), daemon=True).start()
    threading.Thread(target=splice, args=(b, a, record), daemon=True).start()
