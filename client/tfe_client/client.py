"""The client: share locally, one HTTP request, reconstruct locally."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import threading
import urllib.parse
import warnings
from typing import Any

import numpy as np
import numpy.typing as npt

from tfe_client import sharing, wire
from tfe_client.crypto import ClientSession
from tfe_client.errors import ProtocolError, RemoteError
from tfe_client.pins import KeyMismatchError, PinError, Pins, PinsRequiredError, pins_required_message, tofu_source
from tfe_client.wire import ModelInfo

__all__ = ["Client", "KeyMismatchError", "ModelInfo", "PinError", "Pins", "PinsRequiredError", "seal_request"]

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

    The client encrypts each worker's shares to that worker's public key, and takes those keys from a
    source it trusts, never from the endpoint alone (an endpoint or proxy could hand out its own).
    Give exactly one of:

    - `expected_keys=[k0, k1, k2]`: base64 keys, e.g. from `kubectl get em NAME -n NS -o
      jsonpath='{.status.workers[*].publicKey}'`;
    - `pins=path` (or a `Pins`): a pin file (`tfe-client keys pull em/NAME -n NS > pins.json`, or the
      `pins.json` that `tfe-worker local` writes);
    - `trust_on_first_use=path`: record the keys the endpoint hands out the first time into that pin
      file, then refuse a changed key set (KeyMismatchError says how to verify it);
    - `insecure_trust_endpoint_keys=True`: trust whatever the endpoint says (tests, debugging only).

    or build it with `Client.from_kubernetes(name, namespace)`. Without any of them, `model_info`,
    `prepare` and `predict` raise PinsRequiredError before anything is sent.
    """

    def __init__(self, endpoint: str, token: str | None = None, timeout: float = 60.0,
                 expected_keys: list[str] | None = None, *, pins: str | os.PathLike[str] | Pins | None = None,
                 trust_on_first_use: str | os.PathLike[str] | None = None,
                 insecure_trust_endpoint_keys: bool = False) -> None:
        u = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"endpoint must be http(s)://host[:port], got {endpoint!r}")
        self._endpoint = endpoint
        self._scheme, self._host, self._port = u.scheme, u.hostname, u.port
        self._prefix = u.path.rstrip("/")
        self._token = token
        self._timeout = timeout
        given = [n for n, v in (("expected_keys", expected_keys is not None), ("pins", pins is not None),
                                ("trust_on_first_use", trust_on_first_use is not None),
                                ("insecure_trust_endpoint_keys", insecure_trust_endpoint_keys)) if v]
        if len(given) > 1:
            raise ValueError(f"give one source of worker keys, not {' and '.join(given)}")
        self._pins: Pins | None = None
        self._pin_file: str | None = None
        self._tofu: str | None = None
        self._insecure = insecure_trust_endpoint_keys
        if expected_keys is not None:
            self._pins = Pins.from_keys(expected_keys)
        elif isinstance(pins, Pins):
            self._pins = pins
        elif pins is not None:
            self._pin_file = os.path.expanduser(os.fspath(pins))
            self._pins = Pins.load(self._pin_file)
        elif trust_on_first_use is not None:
            self._tofu = self._pin_file = os.path.expanduser(os.fspath(trust_on_first_use))
            if os.path.exists(self._tofu):
                self._pins = Pins.load(self._tofu)
        elif insecure_trust_endpoint_keys:
            warnings.warn(f"tfe_client: INSECURE: trusting the worker keys that {endpoint} hands out; an endpoint "
                          "or proxy in the middle can substitute its own and read every input", stacklevel=2)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._info: dict[str, ModelInfo] = {}

    @classmethod
    def from_kubernetes(cls, name: str, namespace: str = "default", *, endpoint: str | None = None,
                        token: str | None = None, timeout: float = 60.0, context: str | None = None) -> Client:
        """A client pinned to the EncryptedModel's `.status.workers[*].publicKey`, read through the
        Kubernetes API (kubeconfig, `context`, or in-cluster credentials; needs the `kubernetes` package).
        `endpoint` defaults to `.status.endpoint` (the in-cluster Service URL): pass e.g. a port-forward
        or Ingress URL when calling from outside the cluster."""
        pins = Pins.from_kubernetes(name, namespace, context)
        url = endpoint or pins.endpoint
        if not url:
            raise PinError(f"encryptedmodel {namespace}/{name} has no status.endpoint yet (not serving?): "
                           "pass endpoint=")
        return cls(url, token=token, timeout=timeout, pins=pins)

    @property
    def pins(self) -> Pins | None:
        """The pinned keys in use (None until first use with trust_on_first_use, or when insecure)."""
        return self._pins

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
    def unverified_model_info(self, name: str) -> ModelInfo:
        """The endpoint's metadata as it claims it, worker keys NOT checked against any pin."""
        wire.check_model_name(name)
        return ModelInfo.parse(self._call("GET", f"/{wire.VERSION}/models/{name}"))

    def _verify(self, name: str, info: ModelInfo) -> None:
        with self._lock:
            if self._pins is None and self._tofu is not None:
                recorded = Pins(info.worker_keys, name, tofu_source(self._endpoint), endpoint=self._endpoint)
                try:
                    recorded.save(self._tofu, exclusive=True)
                    self._pins = recorded
                    return
                except FileExistsError:  # another process recorded first: hold it to that
                    self._pins = Pins.load(self._tofu)
            pins = self._pins
        if pins is None:
            if self._insecure:
                return
            raise PinsRequiredError(pins_required_message(name))
        pins.check(name, info.worker_keys, self._endpoint, self._pin_file)

    def model_info(self, name: str, refresh: bool = False) -> ModelInfo:
        """The model's metadata, its worker keys checked against the pins (KeyMismatchError if they differ)."""
        wire.check_model_name(name)
        if self._pins is None and self._tofu is None and not self._insecure:
            raise PinsRequiredError(pins_required_message(name))
        if self._pins is not None:
            self._pins.check_model(name)
        if refresh or name not in self._info:
            info = self.unverified_model_info(name)
            self._verify(name, info)
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
        keys = list(self._pins.keys if self._pins is not None else info.worker_keys)  # == info's once verified
        req, session = seal_request(name, keys, fp.encode(arr))
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
