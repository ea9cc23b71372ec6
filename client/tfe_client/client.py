"""The client: share locally, one HTTP request, reconstruct locally."""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import ssl
import threading
import time
import urllib.parse
import urllib.request
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


def _is_not_ready(raw: bytes) -> bool:
    try:
        return wire.ErrorBody.parse(json.loads(raw)).code == "not_ready"
    except (ValueError, ProtocolError):
        return False


def _proxy_for(scheme: str, host: str, proxies: dict[str, str] | None) -> urllib.parse.SplitResult | None:
    """The proxy for this endpoint from `proxies` or HTTP(S)_PROXY/NO_PROXY (None: connect directly)."""
    if proxies is None:
        proxies = urllib.request.getproxies_environment()
        if urllib.request.proxy_bypass(host):  # NO_PROXY
            return None
    url = proxies.get(scheme)
    if not url:
        return None
    u = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if u.scheme != "http" or not u.hostname:
        raise ValueError(f"proxy {url!r}: only http:// proxies are supported")
    return u


def _proxy_auth(u: urllib.parse.SplitResult) -> dict[str, str]:
    if u.username is None:
        return {}
    cred = f"{urllib.parse.unquote(u.username)}:{urllib.parse.unquote(u.password or '')}"
    return {"Proxy-Authorization": "Basic " + base64.b64encode(cred.encode()).decode()}


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

    Transport: `https://` endpoints are verified against the system's CAs, or against `ca` (a PEM
    file, e.g. the CA of a test or private issuer). HTTP(S)_PROXY / NO_PROXY from the environment
    are honoured (HTTPS through a proxy is tunnelled with CONNECT: the proxy sees ciphertext).
    `timeout` bounds connecting and each read. A 503 `not_ready` (the model is still loading) is
    retried after its Retry-After, with exponential backoff, for up to `retry_for` seconds; no other
    error is retried (a request that may have run is never sent twice).
    """

    def __init__(self, endpoint: str, token: str | None = None, timeout: float = 60.0,
                 expected_keys: list[str] | None = None, *, pins: str | os.PathLike[str] | Pins | None = None,
                 trust_on_first_use: str | os.PathLike[str] | None = None,
                 insecure_trust_endpoint_keys: bool = False, ca: str | os.PathLike[str] | None = None,
                 retry_for: float = 30.0, proxies: dict[str, str] | None = None) -> None:
        u = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"endpoint must be http(s)://host[:port], got {endpoint!r}")
        self._endpoint = endpoint
        self._scheme, self._host, self._port = u.scheme, u.hostname, u.port
        self._prefix = u.path.rstrip("/")
        self._token = token
        if timeout <= 0 or retry_for < 0:
            raise ValueError("timeout must be > 0 and retry_for >= 0")
        self._timeout = timeout
        self._retry_for = retry_for
        self._ssl: ssl.SSLContext | None = None
        if self._scheme == "https":
            cafile = os.path.expanduser(os.fspath(ca)) if ca is not None else None
            if cafile is not None and not os.path.isfile(cafile):
                raise ValueError(f"CA file {cafile} does not exist")
            self._ssl = ssl.create_default_context(cafile=cafile)
        elif ca is not None:
            raise ValueError(f"a CA file is only for https:// endpoints, not {endpoint!r}")
        self._proxy = _proxy_for(self._scheme, self._host, proxies)
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
                        token: str | None = None, timeout: float = 60.0, context: str | None = None,
                        ca: str | os.PathLike[str] | None = None, retry_for: float = 30.0) -> Client:
        """A client pinned to the EncryptedModel's `.status.workers[*].publicKey`, read through the
        Kubernetes API (kubeconfig, `context`, or in-cluster credentials; needs the `kubernetes` package).
        `endpoint` defaults to `.status.endpoint` (the in-cluster Service URL): pass e.g. a port-forward
        or Ingress URL when calling from outside the cluster."""
        pins = Pins.from_kubernetes(name, namespace, context)
        url = endpoint or pins.endpoint
        if not url:
            raise PinError(f"encryptedmodel {namespace}/{name} has no status.endpoint yet (not serving?): "
                           "pass endpoint=")
        return cls(url, token=token, timeout=timeout, pins=pins, ca=ca, retry_for=retry_for)

    @property
    def pins(self) -> Pins | None:
        """The pinned keys in use (None until first use with trust_on_first_use, or when insecure)."""
        return self._pins

    # -- HTTP --------------------------------------------------------------------------------
    def _conn(self) -> http.client.HTTPConnection:
        c: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if c is None:
            host, port = self._host, self._port
            if self._proxy is not None:
                host, port = self._proxy.hostname or "", self._proxy.port
            if self._ssl is not None:
                c = http.client.HTTPSConnection(host, port, timeout=self._timeout, context=self._ssl)
            else:
                c = http.client.HTTPConnection(host, port, timeout=self._timeout)
            if self._proxy is not None and self._ssl is not None:  # CONNECT: TLS end to end
                c.set_tunnel(self._host, self._port, headers=_proxy_auth(self._proxy))
            self._local.conn = c
        return c

    def _target(self, path: str) -> str:
        if self._proxy is not None and self._ssl is None:  # plain HTTP through a proxy: absolute URI
            netloc = self._host if self._port is None else f"{self._host}:{self._port}"
            return f"http://{netloc}{self._prefix}{path}"
        return self._prefix + path

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if self._proxy is not None and self._ssl is None:
            headers.update(_proxy_auth(self._proxy))
        deadline = time.monotonic() + self._retry_for
        delay = 0.5
        while True:
            status, raw, retry_after = self._send(method, path, data, headers)
            if status != 503 or not _is_not_ready(raw):
                break
            wait = min(max(retry_after if retry_after is not None else delay, 0.1), 10.0)
            wait *= 1 + random.random() / 4  # jitter: many clients do not come back in step
            if time.monotonic() + wait > deadline:
                break
            time.sleep(wait)
            delay = min(delay * 2, 10.0)
        return self._decode(status, raw)

    def _send(self, method: str, path: str, data: bytes | None,
              headers: dict[str, str]) -> tuple[int, bytes, float | None]:
        for attempt in (0, 1):
            conn = self._conn()
            try:
                conn.request(method, self._target(path), body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # a kept-alive connection the server closed before our request: once more, fresh
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
            except OSError:
                conn.close()
                self._local.conn = None
                raise
        retry_after = resp.getheader("Retry-After")
        try:
            ra = float(retry_after) if retry_after is not None else None
        except ValueError:
            ra = None
        return resp.status, raw, ra

    def _decode(self, status: int, raw: bytes) -> dict[str, Any]:
        try:
            obj = json.loads(raw) if raw else {}
        except json.JSONDecodeError as e:
            raise ProtocolError(f"HTTP {status}: response is not JSON") from e
        if status >= 400:
            try:
                err = wire.ErrorBody.parse(obj)
            except ProtocolError:
                raise RemoteError(status, "error", repr(raw[:200])) from None
            raise RemoteError(status, err.code, err.message)
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
