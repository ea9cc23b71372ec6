"""The client: share locally, one HTTP request, reconstruct locally."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import threading
import urllib.parse
from typing import Any

import numpy as np
import numpy.typing as npt

from tfe_client import sharing, wire
from tfe_client.crypto import ClientSession, b64d
from tfe_client.errors import ProtocolError, RemoteError
from tfe_client.wire import ModelInfo

__all__ = ["Client", "ModelInfo", "seal_request"]

FloatArray = npt.NDArray[np.float64]


def seal_request(model: str, worker_keys: list[bytes], encoded: npt.NDArray[np.int64]
                 ) -> tuple[wire.PredictRequest, ClientSession]:
    """Share fixed-point values and encrypt pair i to worker i: one predict request."""
    shape = tuple(int(d) for d in encoded.shape)
    pairs = sharing.share(encoded)
    session = ClientSession(worker_keys)
    rid = os.urandom(16).hex()
    bundles = tuple(
        wire.Bundle(w, session.seal_request(i, wire.pair_to_bytes(pairs[i]), wire.aad("req", model, rid, w, shape)))
        for i, w in enumerate(wire.WORKERS))
    return wire.PredictRequest(rid, shape, session.ephemeral_public, bundles), session


def softmax(z: FloatArray) -> FloatArray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    out: FloatArray = e / e.sum(axis=-1, keepdims=True)
    return out


def sigmoid(z: FloatArray) -> FloatArray:
    out: FloatArray = 1.0 / (1.0 + np.exp(-z))
    return out


class Client:
    """Private predictions from a tfe-operator endpoint.

    `expected_keys` pins the workers' public keys (e.g. from `kubectl get em NAME -o
    jsonpath='{.status.workers[*].publicKey}'`), so an endpoint cannot substitute its own.
    """

    def __init__(self, endpoint: str, token: str | None = None, timeout: float = 60.0,
                 expected_keys: list[str] | None = None) -> None:
        u = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"endpoint must be http(s)://host[:port], got {endpoint!r}")
        self._scheme, self._host, self._port = u.scheme, u.hostname, u.port
        self._prefix = u.path.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._expected = [b64d(k, "expected key") for k in expected_keys] if expected_keys else None
        self._local = threading.local()
        self._info: dict[str, ModelInfo] = {}

    # -- HTTP --------------------------------------------------------------------------------
    def _conn(self) -> http.client.HTTPConnection:
        c: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if c is None:
            if self._scheme == "https":
                c = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                                context=ssl.create_default_context())
            else:
                c = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.conn = c
        return c

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        for attempt in (0, 1):
            conn = self._conn()
            try:
                conn.request(method, self._prefix + path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        try:
            obj = json.loads(raw) if raw else {}
        except json.JSONDecodeError as e:
            raise ProtocolError(f"HTTP {resp.status}: response is not JSON") from e
        if resp.status >= 400:
            try:
                err = wire.ErrorBody.parse(obj)
            except ProtocolError:
                raise RemoteError(resp.status, "error", repr(raw[:200])) from None
            raise RemoteError(resp.status, err.code, err.message)
        if not isinstance(obj, dict):
            raise ProtocolError("response is not a JSON object")
        return obj

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    # -- API ---------------------------------------------------------------------------------
    def model_info(self, name: str, refresh: bool = False) -> ModelInfo:
        wire.check_model_name(name)
        if refresh or name not in self._info:
            info = ModelInfo.parse(self._call("GET", f"/{wire.VERSION}/models/{name}"))
            if self._expected is not None and list(info.worker_keys) != self._expected:
                raise ProtocolError("the endpoint's worker public keys differ from the pinned keys")
            self._info[name] = info
        return self._info[name]

    def prepare(self, name: str, x: npt.ArrayLike) -> tuple[FloatArray, ModelInfo]:
        """Validate x against the model; raises ValueError before anything is sent."""
        info = self.model_info(name)
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"input must be a numeric array, got dtype {arr.dtype}")
        if arr.shape == info.input_shape:
            arr = arr[None, ...]
        if arr.ndim != len(info.input_shape) + 1 or tuple(arr.shape[1:]) != info.input_shape:
            raise ValueError(f"input shape {list(arr.shape)} does not match the model input "
                             f"[B, {', '.join(map(str, info.input_shape))}]")
        if arr.shape[0] == 0:
            raise ValueError("input has no rows")
        if arr.shape[0] > info.max_batch_size:
            raise ValueError(f"{arr.shape[0]} rows exceed the endpoint's maximum batch of "
                             f"{info.max_batch_size}; split the input")
        return info.fixed_point.check(arr), info

    def predict(self, name: str, x: npt.ArrayLike) -> FloatArray:
        """Private logits for x (rows × model input). Raw model output before post-processing."""
        arr, info = self.prepare(name, x)
        fp = info.fixed_point
        req, session = seal_request(name, list(info.worker_keys), fp.encode(arr))
        rid, shape = req.request_id, req.shape
        resp = wire.PredictResponse.parse(self._call("POST", f"/{wire.VERSION}/models/{name}:predict", req.to_json()))
        if resp.request_id != rid:
            raise ProtocolError("response belongs to another request")
        out_shape = (shape[0], *info.output_shape)
        if resp.shape != out_shape:
            raise ProtocolError(f"response shape {list(resp.shape)} != expected {list(out_shape)}")
        out_pairs = [
            wire.pair_from_bytes(
                session.open_response(i, b.sealed, wire.aad("resp", name, rid, w, out_shape), w), out_shape, w)
            for i, (b, w) in enumerate(zip(resp.outputs, wire.WORKERS))]
        return fp.decode(sharing.reconstruct(out_pairs, wire.WORKERS))

    def predict_proba(self, name: str, x: npt.ArrayLike) -> FloatArray:
        """predict() followed by the model's final activation, applied here on the client."""
        logits = self.predict(name, x)
        post = self.model_info(name).postprocess
        if post == "softmax":
            return softmax(logits)
        if post == "sigmoid":
            return sigmoid(logits)
        return logits
