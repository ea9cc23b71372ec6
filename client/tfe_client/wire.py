"""The one contract of the data plane, version v1 (client/PROTOCOL.md is checked against it).

Every message between the client, the endpoint, the coordinator and the workers is a frozen
dataclass here with a strict `parse` (raises ProtocolError with a reason) and a `to_json`.
Both ends of every hop use these classes; nobody builds or reads these bodies by hand.

Strict means: integers are JSON integers (never booleans or floats), strings and lists are
bounded, shapes are non-empty lists of positive integers within MAX_DIMS/MAX_DIM, base64 fields
decode to exactly the length they must have, and unknown error codes are refused on our side.

Share pairs travel as raw little-endian int64 bytes of shape (2, *shape), encrypted per
worker. The associated data binds every ciphertext to its direction, model, request id,
worker and shape, so a bundle cannot be replayed into another slot.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from tfe_client.crypto import KEY_BYTES, NONCE_BYTES, Sealed, b64d, b64e
from tfe_client.errors import ProtocolError
from tfe_client.fixedpoint import FixedPoint

VERSION = "v1"
WORKERS: tuple[str, ...] = ("server0", "server1", "server2")
POSTPROCESS = ("none", "softmax", "sigmoid")
TAG_BYTES = 16  # ChaCha20-Poly1305 tag appended to every ciphertext
MAX_DIMS = 8  # rank of any shape on the wire
MAX_DIM = 1 << 20  # any one dimension
MAX_FEATURES = 1 << 22  # elements of one row (feature or output shape)
MAX_BUCKET = 4096  # rows of one private graph call (and of one request)
MAX_INGRESS_BODY = 64 << 20  # bytes of one coordinator->worker ingress body (the worker's HTTP limit)
MAX_GENERATION = (1 << 31) - 1
MAX_TEXT = 4096  # error messages, digests, free text
MAX_SERVED = (1 << 62) - 1  # a served count
MAX_SCOPES = 16  # count scopes a worker keeps per model (the most recently reported ones)
_REQUEST_ID = re.compile(r"^[0-9a-f]{16,64}$")
_BATCH_ID = re.compile(r"^[0-9a-f]{8,64}$")
_MODEL_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_CODE = re.compile(r"^[a-z][a-z_]{0,63}$")
_SCOPE = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.=:]{0,127}$")

Int64Array = npt.NDArray[np.int64]

# Every error code any party answers with: code -> (HTTP status, when). PROTOCOL.md lists them all.
ERRORS: dict[str, tuple[int, str]] = {
    "bad_json": (400, "the body is not JSON"),
    "bad_request": (400, ("a field missing or malformed; shape not `[B, *input]`; `B` over `maxBatchSize`; "
                          "a low-order `ephemeralKey`; a ciphertext whose length does not match `shape`")),
    "bad_bundle": (400, ("a worker could not authenticate its bundle (names the worker); other requests in the "
                         "batch are unaffected")),
    "bad_http": (400, "malformed HTTP (request line, headers, chunking)"),
    "bad_batch": (400, ("worker: a batch message (or served report) from the coordinator is malformed or exceeds "
                        "the worker's bounds")),
    "bad_model": (400, "worker: invalid model name"),
    "unauthorized": (401, "token missing or wrong"),
    "no_such_model": (404, "another model name"),
    "not_found": (404, "unknown path"),
    "no_such_generation": (404, "worker: no complete share generation of that number"),
    "no_such_batch": (404, "worker: the batch is unknown (expired, or the worker restarted)"),
    "method_not_allowed": (405, "e.g. GET on `:predict`"),
    "duplicate_request": (409, "a request with this `requestId` is already queued or running"),
    "no_output": (409, "worker: the private graph wrote no output for the batch"),
    "length_required": (411, "body without `Content-Length`"),
    "too_large": (413, "body over the limit (checked on `Content-Length`, before the body is read)"),
    "unsupported_media_type": (415, "`Content-Type` is not `application/json`"),
    "headers_too_large": (431, "request headers over the limit"),
    "internal": (500, "a bug; details in the server log only"),
    "not_implemented": (501, "an HTTP feature the server does not implement"),
    "worker_refused": (502, "a worker refused a batch the coordinator built (coordinator/worker mismatch)"),
    "limit_reached": (503, "`maxRequests` served"),
    "not_ready": (503, "still loading, or (endpoint process) its coordinator is being replaced"),
    "workers_unavailable": (503, "workers failed the request 3 times (transport or TF errors)"),
    "overloaded": (503, "the queue is full; retry later"),
    "draining": (503, "the endpoint is shutting down; in-flight requests still get their answers"),
    "coordinator_unavailable": (503, "endpoint process: the coordinator's relay is unreachable"),
    "timeout": (504, "not served within the request timeout (120 s); the request is dropped, never run later"),
}


def _doc(json_key: str, doc: str, **kw: Any) -> Any:
    """A dataclass field with metadata: the JSON key and its rule (rendered into PROTOCOL.md)."""
    return field(metadata={"json": json_key, "doc": doc}, **kw)


# -- primitive validators ---------------------------------------------------------------------------
def _obj(obj: object, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return obj


def _field(obj: dict[str, Any], key: str, what: str) -> Any:
    if key not in obj:
        raise ProtocolError(f"{what}: missing field '{key}'")
    return obj[key]


def _int(v: object, what: str, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ProtocolError(f"{what} must be an integer")
    if not lo <= v <= hi:
        raise ProtocolError(f"{what} must lie in {lo}..{hi}")
    return v


def _bool(v: object, what: str) -> bool:
    if not isinstance(v, bool):
        raise ProtocolError(f"{what} must be true or false")
    return v


def _str(v: object, what: str, max_len: int = MAX_TEXT) -> str:
    if not isinstance(v, str):
        raise ProtocolError(f"{what} must be a string")
    if len(v) > max_len:
        raise ProtocolError(f"{what} is longer than {max_len} characters")
    return v


def _match(v: object, rx: re.Pattern[str], what: str, rule: str) -> str:
    if not isinstance(v, str) or not rx.match(v):
        raise ProtocolError(f"{what} must be {rule}")
    return v


def _list(v: object, what: str, max_len: int) -> list[Any]:
    if not isinstance(v, list):
        raise ProtocolError(f"{what} must be a list")
    if len(v) > max_len:
        raise ProtocolError(f"{what} has more than {max_len} entries")
    return v


def _shape(obj: object, what: str, max_elements: int = MAX_BUCKET * MAX_FEATURES) -> tuple[int, ...]:
    if (not isinstance(obj, list) or not obj or len(obj) > MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_DIM for d in obj)):
        raise ProtocolError(f"{what} must be a non-empty list of at most {MAX_DIMS} positive integers "
                            f"(each <= {MAX_DIM})")
    if math.prod(obj) > max_elements:
        raise ProtocolError(f"{what} has more than {max_elements} elements")
    return tuple(obj)


def _bytes(v: object, what: str, size: int | None = None, max_size: int = MAX_INGRESS_BODY) -> bytes:
    if isinstance(v, str) and len(v) > (max_size + 2) // 3 * 4 + 4:
        raise ProtocolError(f"{what} is longer than {max_size} bytes")
    raw = b64d(v, what)
    if size is not None and len(raw) != size:
        raise ProtocolError(f"{what} must be {size} bytes, got {len(raw)}")
    return raw


def check_model_name(name: object) -> str:
    if not isinstance(name, str) or not _MODEL_NAME.match(name):
        raise ProtocolError("model name must be a DNS-1123 subdomain (lowercase letters, digits, '-', '.')")
    return name


def check_request_id(rid: object, what: str = "requestId") -> str:
    return _match(rid, _REQUEST_ID, what, "16-64 lowercase hex characters")


def check_batch_id(bid: object, what: str = "batchId") -> str:
    return _match(bid, _BATCH_ID, what, "8-64 lowercase hex characters")


def check_scope(scope: object, what: str = "scope") -> str:
    return _match(scope, _SCOPE, what, "1-128 letters, digits and -_.=: (starting with a letter or digit)")


def count_scope(max_requests: int | None) -> str:
    """The default count scope of a coordinator: its limit (a changed limit starts a new count)."""
    return "unlimited" if max_requests is None else f"maxRequests={max_requests}"


# -- X25519 ephemeral keys ------------------------------------------------------------------------
# The points of small order (and their non-canonical encodings, with and without bit 255):
# X25519 with any clamped scalar maps them to the all-zero secret. Listed for the record and the
# tests; is_low_order() decides by computing the exchange, which catches every encoding.
LOW_ORDER_POINTS: tuple[bytes, ...] = tuple(bytes.fromhex(h) for h in (
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "0100000000000000000000000000000000000000000000000000000000000080",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
))
_PROBE = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def is_low_order(raw: bytes) -> bool:
    """True when X25519 with this public key yields the all-zero secret (a small-order point)."""
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError:
        return True
    return False


def check_ephemeral_key(v: object, what: str = "ephemeralKey") -> bytes:
    raw = _bytes(v, what, KEY_BYTES)
    if is_low_order(raw):
        raise ProtocolError(f"{what} is a low-order X25519 point (it would give an all-zero shared secret)")
    return raw


def pair_bytes(shape: tuple[int, ...]) -> int:
    """Plaintext bytes of one share pair of this shape: int64 [2, *shape]."""
    return 2 * math.prod(shape) * 8


def ciphertext_bytes(shape: tuple[int, ...]) -> int:
    """Exact ciphertext length of one sealed share pair of this shape."""
    return pair_bytes(shape) + TAG_BYTES


def aad(direction: str, model: str, request_id: str, worker: str, shape: tuple[int, ...]) -> bytes:
    dims = "x".join(str(d) for d in shape)
    return f"tfe/{VERSION}|{direction}|{model}|{request_id}|{worker}|{dims}".encode()


def pair_to_bytes(pair: Int64Array) -> bytes:
    return np.ascontiguousarray(pair, dtype="<i8").tobytes()


def pair_from_bytes(raw: bytes, shape: tuple[int, ...], who: str) -> Int64Array:
    want = pair_bytes(shape)
    if len(raw) != want:
        raise ProtocolError(f"{who}: share pair has {len(raw)} bytes, expected {want} for shape {list(shape)}")
    return np.frombuffer(raw, dtype="<i8").reshape((2, *shape)).astype(np.int64)


# -- errors -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ErrorBody:
    """Every error answer, on every hop."""

    code: str = _doc("error.code", "one of the codes in the error table")
    message: str = _doc("error.message", f"what to fix (at most {MAX_TEXT} characters)")

    @property
    def status(self) -> int:
        return ERRORS[self.code][0] if self.code in ERRORS else 500

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}

    @classmethod
    def parse(cls, obj: object) -> ErrorBody:
        err = _obj(_field(_obj(obj, "error body"), "error", "error body"), "error")
        code = _match(_field(err, "code", "error"), _CODE, "error.code", "a lowercase identifier")
        return cls(code, _str(_field(err, "message", "error"), "error.message"))


def error_body(code: str, message: str) -> dict[str, Any]:
    assert code in ERRORS, code
    return ErrorBody(code, message).to_json()


# -- client API -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bundle:
    """One worker's sealed share pair (request) or output pair (response)."""

    worker: str = _doc("worker", "`server0`, `server1`, `server2`: position i holds worker i's bundle")
    sealed: Sealed = _doc("nonce, ciphertext", f"base64: {NONCE_BYTES}-byte nonce; ciphertext of exactly "  # noqa: RUF009
                                               f"`16 * prod(shape) + {TAG_BYTES}` bytes")

    def to_json(self) -> dict[str, str]:
        return {"worker": self.worker, "nonce": b64e(self.sealed.nonce), "ciphertext": b64e(self.sealed.ciphertext)}

    @classmethod
    def parse(cls, obj: object, worker: str, what: str, shape: tuple[int, ...] | None = None) -> Bundle:
        d = _obj(obj, what)
        if d.get("worker") != worker:
            raise ProtocolError(f"{what}: expected worker '{worker}', got {str(d.get('worker'))[:20]!r}")
        nonce = _bytes(_field(d, "nonce", what), f"{what}.nonce", NONCE_BYTES)
        ct = _bytes(_field(d, "ciphertext", what), f"{what}.ciphertext",
                    ciphertext_bytes(shape) if shape is not None else None)
        return cls(worker, Sealed(nonce, ct))


def _bundles(obj: object, what: str, shape: tuple[int, ...] | None) -> tuple[Bundle, ...]:
    if not isinstance(obj, list) or len(obj) != len(WORKERS):
        raise ProtocolError(f"{what} must be a list of exactly {len(WORKERS)} bundles, one per worker")
    return tuple(Bundle.parse(b, w, f"{what}[{i}]", shape) for i, (b, w) in enumerate(zip(obj, WORKERS)))


@dataclass(frozen=True)
class PredictRequest:
    """POST /v1/models/{name}:predict (client -> endpoint -> coordinator relay)."""

    request_id: str = _doc("requestId", "16-64 lowercase hex; unique among the requests in flight")
    shape: tuple[int, ...] = _doc("shape", "`[B, *input]`, `1 <= B <= maxBatchSize`")
    ephemeral_key: bytes = _doc("ephemeralKey", "base64 of a raw 32-byte X25519 public key, not a low-order point")
    bundles: tuple[Bundle, ...] = _doc("bundles", "exactly 3 Bundles, for server0, server1, server2 in order")

    @property
    def rows(self) -> int:
        return self.shape[0]

    def to_json(self) -> dict[str, Any]:
        return {"requestId": self.request_id, "shape": list(self.shape),
                "ephemeralKey": b64e(self.ephemeral_key), "bundles": [b.to_json() for b in self.bundles]}

    @classmethod
    def parse(cls, obj: object, feature_shape: tuple[int, ...], max_rows: int) -> PredictRequest:
        """Validate a decoded body against the served model; raise ProtocolError with a reason.

        After this, no worker can refuse the request except for a bundle it cannot authenticate."""
        if not isinstance(obj, dict):
            raise ProtocolError("request body must be a JSON object")
        rid = check_request_id(_field(obj, "requestId", "request"))
        shape = _shape(_field(obj, "shape", "request"), "shape")
        if shape[1:] != feature_shape:
            raise ProtocolError(f"input shape {list(shape)} does not match the model input [B, "
                                f"{', '.join(map(str, feature_shape))}]")
        if shape[0] > max_rows:
            raise ProtocolError(f"batch of {shape[0]} rows exceeds the maximum of {max_rows} per request")
        eph = check_ephemeral_key(_field(obj, "ephemeralKey", "request"))
        return cls(rid, shape, eph, _bundles(_field(obj, "bundles", "request"), "bundles", shape))


@dataclass(frozen=True)
class PredictResponse:
    """200 answer to a predict request."""

    request_id: str = _doc("requestId", "the request's id")
    shape: tuple[int, ...] = _doc("shape", "`[B, *output]`")
    share_generation: int = _doc("shareGeneration", "the share generation that computed it")
    postprocess: str = _doc("postprocess", "`none`, `softmax` or `sigmoid`: applied by the client")
    outputs: tuple[Bundle, ...] = _doc("outputs", "3 Bundles, worker i's output pair sealed to the request's "
                                                  "ephemeral key")

    def to_json(self) -> dict[str, Any]:
        return {"requestId": self.request_id, "shape": list(self.shape), "shareGeneration": self.share_generation,
                "postprocess": self.postprocess, "outputs": [b.to_json() for b in self.outputs]}

    @classmethod
    def parse(cls, obj: object) -> PredictResponse:
        if not isinstance(obj, dict):
            raise ProtocolError("response body must be a JSON object")
        post = _field(obj, "postprocess", "response")
        if post not in POSTPROCESS:
            raise ProtocolError(f"unknown postprocess {str(post)[:20]!r}")
        gen = _int(_field(obj, "shareGeneration", "response"), "shareGeneration", 0, MAX_GENERATION)
        shape = _shape(_field(obj, "shape", "response"), "shape")
        return cls(check_request_id(_field(obj, "requestId", "response")), shape, gen, post,
                   _bundles(_field(obj, "outputs", "response"), "outputs", shape))


def _fixed_point(obj: object) -> FixedPoint:
    d = _obj(obj, "fixedPoint")
    fp = FixedPoint(_int(_field(d, "ringBits", "fixedPoint"), "fixedPoint.ringBits", 64, 64),
                    _int(_field(d, "fractionalBits", "fixedPoint"), "fixedPoint.fractionalBits", 1, 62),
                    _int(_field(d, "integralBits", "fixedPoint"), "fixedPoint.integralBits", 1, 62))
    return fp


@dataclass(frozen=True)
class ModelInfo:
    """GET /v1/models/{name}: public metadata of a served model."""

    name: str = _doc("name", "the model name")
    protocol: str = _doc("protocol", "`ABY3`")
    share_generation: int = _doc("shareGeneration", "the share generation served")
    input_shape: tuple[int, ...] = _doc("input.shape", "`[null, *input]`; `input.dtype` is `float32`")
    output_shape: tuple[int, ...] = _doc("output.shape", "`[null, *output]`")
    postprocess: str = _doc("output.postprocess", "`none`, `softmax` or `sigmoid`")
    fixed_point: FixedPoint = _doc("fixedPoint", "`{ringBits: 64, fractionalBits, integralBits}`")  # noqa: RUF009
    max_batch_size: int = _doc("maxBatchSize", f"rows per request, 1..{MAX_BUCKET}")
    worker_keys: tuple[bytes, ...] = _doc("workers", "`[{name: serverI, publicKey: base64 32 bytes}]`, in order")
    model_digest: str = _doc("modelDigest", "sha256 of the model file")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "protocol": self.protocol, "shareGeneration": self.share_generation,
                "modelDigest": self.model_digest,
                "input": {"shape": [None, *self.input_shape], "dtype": "float32"},
                "output": {"shape": [None, *self.output_shape], "postprocess": self.postprocess},
                "fixedPoint": self.fixed_point.to_dict(), "maxBatchSize": self.max_batch_size,
                "workers": [{"name": w, "publicKey": b64e(k)} for w, k in zip(WORKERS, self.worker_keys)]}

    @classmethod
    def parse(cls, obj: object) -> ModelInfo:
        d = _obj(obj, "model metadata")
        workers = _list(_field(d, "workers", "metadata"), "workers", len(WORKERS))
        if [w.get("name") if isinstance(w, dict) else None for w in workers] != list(WORKERS):
            raise ProtocolError("metadata must list workers server0, server1, server2 in order")
        keys = tuple(_bytes(_field(w, "publicKey", "worker"), f"{w['name']} publicKey", KEY_BYTES) for w in workers)
        inp, out = _obj(_field(d, "input", "metadata"), "input"), _obj(_field(d, "output", "metadata"), "output")

        def batched(s: object, what: str) -> tuple[int, ...]:
            if not isinstance(s, list) or not s or s[0] is not None:
                raise ProtocolError(f"{what} must be [null, ...]")
            return _shape(s[1:], what, MAX_FEATURES)

        post = _field(out, "postprocess", "output")
        if post not in POSTPROCESS:
            raise ProtocolError(f"unknown postprocess {str(post)[:20]!r}")
        digest = d.get("modelDigest", "")
        return cls(name=check_model_name(_field(d, "name", "metadata")),
                   protocol=_str(_field(d, "protocol", "metadata"), "protocol", 32),
                   share_generation=_int(_field(d, "shareGeneration", "metadata"), "shareGeneration", 0,
                                         MAX_GENERATION),
                   input_shape=batched(_field(inp, "shape", "input"), "input.shape"),
                   output_shape=batched(_field(out, "shape", "output"), "output.shape"),
                   postprocess=post, fixed_point=_fixed_point(_field(d, "fixedPoint", "metadata")),
                   max_batch_size=_int(_field(d, "maxBatchSize", "metadata"), "maxBatchSize", 1, MAX_BUCKET),
                   worker_keys=keys, model_digest=_str(digest, "modelDigest", 128))


@dataclass(frozen=True)
class ModelList:
    """GET /v1/models."""

    models: tuple[str, ...] = _doc("models", "names of the models this endpoint serves")

    def to_json(self) -> dict[str, Any]:
        return {"models": list(self.models)}

    @classmethod
    def parse(cls, obj: object) -> ModelList:
        return cls(tuple(check_model_name(m) for m in _list(_field(_obj(obj, "body"), "models", "body"),
                                                            "models", 64)))


@dataclass(frozen=True)
class Status:
    """GET /v1/status (endpoint and coordinator relay)."""

    ready: bool = _doc("ready", "serving")
    model: str = _doc("model", "the model name")
    requests_served: int = _doc("requestsServed", "successful predictions of this model in the coordinator's count "
                                                  "scope, recorded on the workers: it survives coordinator restarts")
    max_requests: int | None = _doc("maxRequests", "the limit, or null")
    limit_reached: bool = _doc("limitReached", "maxRequests served")
    share_generation: int | None = _doc("shareGeneration", "generation served, null while loading")
    draining: bool = _doc("draining", "shutting down: new predictions get 503 `draining`")

    def to_json(self) -> dict[str, Any]:
        return {"ready": self.ready, "model": self.model, "requestsServed": self.requests_served,
                "maxRequests": self.max_requests, "limitReached": self.limit_reached,
                "shareGeneration": self.share_generation, "draining": self.draining}

    @classmethod
    def parse(cls, obj: object) -> Status:
        d = _obj(obj, "status")
        mr, gen = d.get("maxRequests"), d.get("shareGeneration")
        return cls(_bool(_field(d, "ready", "status"), "ready"), check_model_name(_field(d, "model", "status")),
                   _int(_field(d, "requestsServed", "status"), "requestsServed", 0, MAX_SERVED),
                   None if mr is None else _int(mr, "maxRequests", 1, 1 << 62),
                   _bool(_field(d, "limitReached", "status"), "limitReached"),
                   None if gen is None else _int(gen, "shareGeneration", 0, MAX_GENERATION),
                   _bool(d.get("draining", False), "draining"))


@dataclass(frozen=True)
class Health:
    """GET /healthz."""

    ok: bool = _doc("ok", "the process answers")

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok}

    @classmethod
    def parse(cls, obj: object) -> Health:
        return cls(_bool(_field(_obj(obj, "health"), "ok", "health"), "ok"))


@dataclass(frozen=True)
class Ready:
    """GET /readyz: 200 when ready, else 503 with the same body."""

    ready: bool = _doc("ready", "endpoint: every bucket warm; worker: TF server up and key loaded")
    name: str | None = _doc("name", "worker name (workers only)", default=None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ready": self.ready}
        if self.name is not None:
            out["name"] = self.name
        return out

    @classmethod
    def parse(cls, obj: object) -> Ready:
        d = _obj(obj, "readiness")
        name = d.get("name")
        return cls(_bool(_field(d, "ready", "readiness"), "ready"), None if name is None else _str(name, "name", 64))


# -- Open Inference Protocol v2 (KServe): health and metadata beside our v1 routes ------------------
OIP_PLATFORM = "tfe_aby3"
OIP_INPUT, OIP_OUTPUT = "input", "output"
OIP_DATATYPES = ("FP32", "FP64")


@dataclass(frozen=True)
class OipLive:
    """GET /v2/health/live: 200 while the process answers."""

    live: bool = _doc("live", "true")

    def to_json(self) -> dict[str, Any]:
        return {"live": self.live}

    @classmethod
    def parse(cls, obj: object) -> OipLive:
        return cls(_bool(_field(_obj(obj, "live"), "live", "live"), "live"))


@dataclass(frozen=True)
class OipReady:
    """GET /v2/health/ready: 200 when ready, else 400 with the same body (OIP: a 4xx means false)."""

    ready: bool = _doc("ready", "the model is served and the endpoint is not draining")

    def to_json(self) -> dict[str, Any]:
        return {"ready": self.ready}

    @classmethod
    def parse(cls, obj: object) -> OipReady:
        return cls(_bool(_field(_obj(obj, "ready"), "ready", "ready"), "ready"))


@dataclass(frozen=True)
class OipModelReady:
    """GET /v2/models/{name}/ready: 200 when ready, else 400 with the same body."""

    name: str = _doc("name", "the model name")
    ready: bool = _doc("ready", "as `/v2/health/ready`, for this model")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ready": self.ready}

    @classmethod
    def parse(cls, obj: object) -> OipModelReady:
        d = _obj(obj, "model ready")
        return cls(check_model_name(_field(d, "name", "model ready")),
                   _bool(_field(d, "ready", "model ready"), "ready"))


@dataclass(frozen=True)
class OipTensor:
    """One tensor of OipModelMetadata (inputs, outputs)."""

    name: str = _doc("name", f"`{OIP_INPUT}` or `{OIP_OUTPUT}`")
    datatype: str = _doc("datatype", "`FP32`: the plaintext the client encodes (the wire carries ciphertext)")
    shape: tuple[int, ...] = _doc("shape", "`[-1, *dims]`: -1 is the batch dimension")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def parse(cls, obj: object) -> OipTensor:
        d = _obj(obj, "tensor metadata")
        dt = _field(d, "datatype", "tensor")
        if dt not in OIP_DATATYPES:
            raise ProtocolError(f"tensor datatype must be one of {', '.join(OIP_DATATYPES)}")
        shape = _list(_field(d, "shape", "tensor"), "tensor shape", MAX_DIMS + 1)
        if not shape or shape[0] != -1:
            raise ProtocolError("tensor shape must be [-1, ...]")
        return cls(_str(_field(d, "name", "tensor"), "tensor name", 64), dt, (-1, *_shape(shape[1:], "tensor shape",
                                                                                          MAX_FEATURES)))


@dataclass(frozen=True)
class OipModelMetadata:
    """GET /v2/models/{name}: the model's metadata in the Open Inference Protocol's terms.

    Inference itself stays on `POST /v1/models/{name}:predict` (the inputs are secret-shared and
    encrypted per worker, which OIP's tensors cannot carry); worker keys and fixed point are in
    `GET /v1/models/{name}`."""

    name: str = _doc("name", "the model name")
    versions: tuple[str, ...] = _doc("versions", "`[\"<shareGeneration>\"]`: the share generation served")
    platform: str = _doc("platform", f"`{OIP_PLATFORM}`")
    inputs: tuple[OipTensor, ...] = _doc("inputs", "one OipTensor, `input`")
    outputs: tuple[OipTensor, ...] = _doc("outputs", "one OipTensor, `output` (logits; `postprocess` in v1)")

    @classmethod
    def of(cls, info: ModelInfo) -> OipModelMetadata:
        return cls(info.name, (str(info.share_generation),), OIP_PLATFORM,
                   (OipTensor(OIP_INPUT, "FP32", (-1, *info.input_shape)),),
                   (OipTensor(OIP_OUTPUT, "FP32", (-1, *info.output_shape)),))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "versions": list(self.versions), "platform": self.platform,
                "inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs]}

    @classmethod
    def parse(cls, obj: object) -> OipModelMetadata:
        d = _obj(obj, "model metadata")
        versions = tuple(_str(v, "version", 32) for v in _list(_field(d, "versions", "metadata"), "versions", 16))
        return cls(check_model_name(_field(d, "name", "metadata")), versions,
                   _str(_field(d, "platform", "metadata"), "platform", 64),
                   tuple(OipTensor.parse(t) for t in _list(_field(d, "inputs", "metadata"), "inputs", 16)),
                   tuple(OipTensor.parse(t) for t in _list(_field(d, "outputs", "metadata"), "outputs", 16)))


# -- worker HTTP side (coordinator <-> worker; the operator reads keys and generations) -------------
@dataclass(frozen=True)
class PublicKeyResponse:
    """GET /v1/public-key on a worker."""

    name: str = _doc("name", "the worker (`serverI`)")
    public_key: bytes = _doc("publicKey", "base64 of its raw 32-byte X25519 public key")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "publicKey": b64e(self.public_key)}

    @classmethod
    def parse(cls, obj: object) -> PublicKeyResponse:
        d = _obj(obj, "public key")
        name = _field(d, "name", "public key")
        if name not in WORKERS:
            raise ProtocolError(f"unknown worker name {str(name)[:20]!r}")
        return cls(name, _bytes(_field(d, "publicKey", "public key"), "publicKey", KEY_BYTES))


@dataclass(frozen=True)
class GenerationsResponse:
    """GET /v1/models/{name}/generations on a worker: complete generations, newest first."""

    model: str = _doc("model", "the model name")
    generations: tuple[int, ...] = _doc("generations", "complete share generations on this worker's disk")

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "generations": list(self.generations)}

    @classmethod
    def parse(cls, obj: object) -> GenerationsResponse:
        d = _obj(obj, "generations")
        gens = _list(_field(d, "generations", "generations"), "generations", 1024)
        return cls(check_model_name(_field(d, "model", "generations")),
                   tuple(_int(g, "generation", 1, MAX_GENERATION) for g in gens))


@dataclass(frozen=True)
class Manifest:
    """GET /v1/models/{name}/{generation}/manifest on a worker: the public manifest the share job wrote."""

    name: str = _doc("name", "the model name")
    generation: int = _doc("generation", f"1..{MAX_GENERATION}")
    input_shape: tuple[int, ...] = _doc("inputShape", f"one row of input (at most {MAX_FEATURES} elements)")
    output_shape: tuple[int, ...] = _doc("outputShape", "one row of output")
    postprocess: str = _doc("postprocess", "`none`, `softmax` or `sigmoid`")
    model_digest: str = _doc("modelDigest", "sha256 hex of the model file")
    fixed_point: FixedPoint = _doc("fixedPoint", "`{ringBits, fractionalBits, integralBits}`")  # noqa: RUF009
    layers: tuple[dict[str, Any], ...] = _doc("layers", "the private layers `{kind, config, weightShapes}`")
    protocol: str = _doc("protocol", "`ABY3`")
    created_at: int = _doc("createdAt", "unix seconds")
    extra: dict[str, Any] = _doc("*", "any other field the share job wrote, passed through unchanged")  # noqa: RUF009

    def to_json(self) -> dict[str, Any]:
        return {**self.extra, "name": self.name, "generation": self.generation, "inputShape": list(self.input_shape),
                "outputShape": list(self.output_shape), "postprocess": self.postprocess,
                "modelDigest": self.model_digest, "fixedPoint": self.fixed_point.to_dict(),
                "layers": [dict(x) for x in self.layers], "protocol": self.protocol, "createdAt": self.created_at}

    @classmethod
    def parse(cls, obj: object) -> Manifest:
        d = _obj(obj, "manifest")
        post = _field(d, "postprocess", "manifest")
        if post not in POSTPROCESS:
            raise ProtocolError(f"unknown postprocess {str(post)[:20]!r}")
        layers = _list(_field(d, "layers", "manifest"), "layers", 256)
        for i, layer in enumerate(layers):
            lay = _obj(layer, f"layers[{i}]")
            _str(_field(lay, "kind", f"layers[{i}]"), f"layers[{i}].kind", 64)
            _obj(_field(lay, "config", f"layers[{i}]"), f"layers[{i}].config")
            for s in _list(_field(lay, "weightShapes", f"layers[{i}]"), f"layers[{i}].weightShapes", 16):
                for dim in _list(s, f"layers[{i}].weightShapes[]", MAX_DIMS):
                    _int(dim, f"layers[{i}].weightShapes[][]", 1, MAX_DIM)
        return cls(name=check_model_name(_field(d, "name", "manifest")),
                   generation=_int(_field(d, "generation", "manifest"), "generation", 1, MAX_GENERATION),
                   input_shape=_shape(_field(d, "inputShape", "manifest"), "inputShape", MAX_FEATURES),
                   output_shape=_shape(_field(d, "outputShape", "manifest"), "outputShape", MAX_FEATURES),
                   postprocess=post,
                   model_digest=_match(_field(d, "modelDigest", "manifest"), _DIGEST, "modelDigest", "sha256 hex"),
                   fixed_point=_fixed_point(_field(d, "fixedPoint", "manifest")),
                   layers=tuple(layers), protocol=_str(d.get("protocol", "ABY3"), "protocol", 32),
                   created_at=_int(d.get("createdAt", 0), "createdAt", 0, 1 << 62),
                   extra={k: v for k, v in d.items() if k not in _MANIFEST_KEYS})


_MANIFEST_KEYS = frozenset(("name", "generation", "inputShape", "outputShape", "postprocess", "modelDigest",
                            "fixedPoint", "layers", "protocol", "createdAt"))


@dataclass(frozen=True)
class IngressItem:
    """One request's bundle for this worker, inside an IngressRequest."""

    request_id: str = _doc("requestId", "the client's request id")
    shape: tuple[int, ...] = _doc("shape", "`[rows, *featureShape]`")
    ephemeral_key: bytes = _doc("ephemeralKey", "base64 32 bytes (the worker refuses low-order points per item)")
    sealed: Sealed = _doc("nonce, ciphertext", "this worker's sealed pair, exactly as the client sent it")  # noqa: RUF009

    def to_json(self) -> dict[str, Any]:
        return {"requestId": self.request_id, "shape": list(self.shape), "ephemeralKey": b64e(self.ephemeral_key),
                "nonce": b64e(self.sealed.nonce), "ciphertext": b64e(self.sealed.ciphertext)}

    @classmethod
    def parse(cls, obj: object, feature_shape: tuple[int, ...], what: str) -> IngressItem:
        d = _obj(obj, what)
        shape = _shape(_field(d, "shape", what), f"{what}.shape")
        if shape[1:] != feature_shape or shape[0] > MAX_BUCKET:
            raise ProtocolError(f"{what}.shape must be [rows, *featureShape]")
        return cls(check_request_id(_field(d, "requestId", what), f"{what}.requestId"), shape,
                   _bytes(_field(d, "ephemeralKey", what), f"{what}.ephemeralKey", KEY_BYTES),
                   Sealed(_bytes(_field(d, "nonce", what), f"{what}.nonce", NONCE_BYTES),
                          _bytes(_field(d, "ciphertext", what), f"{what}.ciphertext", ciphertext_bytes(shape))))


@dataclass(frozen=True)
class IngressRequest:
    """POST /v1/ingress on worker i: decrypt worker i's pair of every item into one spooled batch."""

    batch_id: str = _doc("batchId", "8-64 lowercase hex, fresh per batch")
    model: str = _doc("model", "the model name")
    generation: int = _doc("generation", "the share generation; the worker checks shapes against its manifest")
    bucket: int = _doc("bucket", f"rows of the private graph call, 1..{MAX_BUCKET}; items fill rows in order, "
                                 "the rest is zero padding")
    feature_shape: tuple[int, ...] = _doc("featureShape", "must equal the manifest's inputShape")
    items: tuple[IngressItem, ...] = _doc("items", "1..bucket IngressItems; their rows add up to at most bucket")

    @property
    def rows(self) -> int:
        return sum(it.shape[0] for it in self.items)

    def to_json(self) -> dict[str, Any]:
        return {"batchId": self.batch_id, "model": self.model, "generation": self.generation, "bucket": self.bucket,
                "featureShape": list(self.feature_shape), "items": [it.to_json() for it in self.items]}

    @classmethod
    def parse(cls, obj: object) -> IngressRequest:
        d = _obj(obj, "ingress")
        bucket = _int(_field(d, "bucket", "ingress"), "bucket", 1, MAX_BUCKET)
        feat = _shape(_field(d, "featureShape", "ingress"), "featureShape", MAX_FEATURES)
        raw = _list(_field(d, "items", "ingress"), "items", bucket)
        if not raw:
            raise ProtocolError("items must not be empty")
        items = tuple(IngressItem.parse(it, feat, f"items[{i}]") for i, it in enumerate(raw))
        out = cls(check_batch_id(_field(d, "batchId", "ingress")), check_model_name(_field(d, "model", "ingress")),
                  _int(_field(d, "generation", "ingress"), "generation", 1, MAX_GENERATION), bucket, feat, items)
        if out.rows > bucket:
            raise ProtocolError(f"items have {out.rows} rows, more than bucket {bucket}")
        return out


@dataclass(frozen=True)
class ItemFailure:
    """One item a worker refused; the other items of the batch go on."""

    index: int = _doc("index", "position of the item in the batch")
    request_id: str = _doc("requestId", "its request id")
    code: str = _doc("code", "`bad_bundle` (could not authenticate) or `bad_request` (e.g. low-order key)")
    message: str = _doc("message", "why")

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "requestId": self.request_id, "code": self.code, "message": self.message}

    @classmethod
    def parse(cls, obj: object) -> ItemFailure:
        d = _obj(obj, "failure")
        code = _field(d, "code", "failure")
        if code not in ("bad_bundle", "bad_request"):
            raise ProtocolError(f"failure.code {str(code)[:20]!r} is not an item-level code")
        return cls(_int(_field(d, "index", "failure"), "failure.index", 0, MAX_BUCKET - 1),
                   check_request_id(_field(d, "requestId", "failure")), code,
                   _str(_field(d, "message", "failure"), "failure.message"))


@dataclass(frozen=True)
class IngressAck:
    """200 answer to an ingress: which items were spooled, which were refused (each fails alone)."""

    batch_id: str = _doc("batchId", "the batch")
    accepted: tuple[int, ...] = _doc("accepted", "indexes of the items spooled")
    failed: tuple[ItemFailure, ...] = _doc("failed", "ItemFailures")

    def to_json(self) -> dict[str, Any]:
        return {"batchId": self.batch_id, "accepted": list(self.accepted), "failed": [f.to_json() for f in self.failed]}

    @classmethod
    def parse(cls, obj: object) -> IngressAck:
        d = _obj(obj, "ingress ack")
        acc = _list(_field(d, "accepted", "ingress ack"), "accepted", MAX_BUCKET)
        fail = _list(_field(d, "failed", "ingress ack"), "failed", MAX_BUCKET)
        return cls(check_batch_id(_field(d, "batchId", "ingress ack")),
                   tuple(_int(i, "accepted[]", 0, MAX_BUCKET - 1) for i in acc),
                   tuple(ItemFailure.parse(f) for f in fail))


@dataclass(frozen=True)
class EgressRequest:
    """POST /v1/egress on worker i: seal worker i's output pair of each accepted item to its client."""

    batch_id: str = _doc("batchId", "a batch this worker spooled")
    output_shape: tuple[int, ...] = _doc("outputShape", "must equal the manifest's outputShape")

    def to_json(self) -> dict[str, Any]:
        return {"batchId": self.batch_id, "outputShape": list(self.output_shape)}

    @classmethod
    def parse(cls, obj: object) -> EgressRequest:
        d = _obj(obj, "egress")
        return cls(check_batch_id(_field(d, "batchId", "egress")),
                   _shape(_field(d, "outputShape", "egress"), "outputShape", MAX_FEATURES))


@dataclass(frozen=True)
class EgressOutput:
    """One accepted item's sealed output pair."""

    index: int = _doc("index", "position of the item in the batch (outputs are keyed by position, so two "
                               "items never collapse into one)")
    request_id: str = _doc("requestId", "its request id")
    sealed: Sealed = _doc("nonce, ciphertext", "the output pair sealed with the request's response key")  # noqa: RUF009

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "requestId": self.request_id, "nonce": b64e(self.sealed.nonce),
                "ciphertext": b64e(self.sealed.ciphertext)}

    @classmethod
    def parse(cls, obj: object) -> EgressOutput:
        d = _obj(obj, "output")
        return cls(_int(_field(d, "index", "output"), "output.index", 0, MAX_BUCKET - 1),
                   check_request_id(_field(d, "requestId", "output")),
                   Sealed(_bytes(_field(d, "nonce", "output"), "output.nonce", NONCE_BYTES),
                          _bytes(_field(d, "ciphertext", "output"), "output.ciphertext")))


@dataclass(frozen=True)
class EgressResponse:
    """200 answer to an egress."""

    batch_id: str = _doc("batchId", "the batch")
    outputs: tuple[EgressOutput, ...] = _doc("outputs", "one EgressOutput per accepted item, in item order")

    def to_json(self) -> dict[str, Any]:
        return {"batchId": self.batch_id, "outputs": [o.to_json() for o in self.outputs]}

    @classmethod
    def parse(cls, obj: object) -> EgressResponse:
        d = _obj(obj, "egress response")
        outs = _list(_field(d, "outputs", "egress response"), "outputs", MAX_BUCKET)
        return cls(check_batch_id(_field(d, "batchId", "egress response")), tuple(EgressOutput.parse(o) for o in outs))


@dataclass(frozen=True)
class DropResponse:
    """DELETE /v1/batches/{batchId} on a worker: forget a batch and its spool files."""

    batch_id: str = _doc("batchId", "the batch")
    dropped: bool = _doc("dropped", "always true (idempotent)")

    def to_json(self) -> dict[str, Any]:
        return {"batchId": self.batch_id, "dropped": self.dropped}

    @classmethod
    def parse(cls, obj: object) -> DropResponse:
        d = _obj(obj, "drop")
        return cls(check_batch_id(_field(d, "batchId", "drop")), _bool(_field(d, "dropped", "drop"), "dropped"))


@dataclass(frozen=True)
class ServedScope:
    """One count scope's recorded successful predictions, inside ServedCounts."""

    scope: str = _doc("scope", "the coordinator's count scope (default `maxRequests=N`, or `unlimited`)")
    served: int = _doc("served", f"successful predictions recorded, 0..{MAX_SERVED}")

    def to_json(self) -> dict[str, Any]:
        return {"scope": self.scope, "served": self.served}

    @classmethod
    def parse(cls, obj: object) -> ServedScope:
        d = _obj(obj, "served scope")
        return cls(check_scope(_field(d, "scope", "served scope")),
                   _int(_field(d, "served", "served scope"), "served", 0, MAX_SERVED))


@dataclass(frozen=True)
class ServedCounts:
    """GET /v1/models/{name}/served on a worker: successful predictions recorded on its disk, per count scope."""

    model: str = _doc("model", "the model name")
    scopes: tuple[ServedScope, ...] = _doc("scopes", f"ServedScopes, least recently reported first (at most "
                                                     f"{MAX_SCOPES}, distinct)")

    def served(self, scope: str) -> int:
        return next((s.served for s in self.scopes if s.scope == scope), 0)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "scopes": [s.to_json() for s in self.scopes]}

    @classmethod
    def parse(cls, obj: object) -> ServedCounts:
        d = _obj(obj, "served counts")
        scopes = tuple(ServedScope.parse(s) for s in _list(_field(d, "scopes", "served counts"), "scopes", MAX_SCOPES))
        if len({s.scope for s in scopes}) != len(scopes):
            raise ProtocolError("scopes must be distinct")
        return cls(check_model_name(_field(d, "model", "served counts")), scopes)


@dataclass(frozen=True)
class ServedReport:
    """POST /v1/models/{name}/served on a worker: predictions the coordinator is about to release."""

    scope: str = _doc("scope", "the coordinator's count scope")
    report_id: str = _doc("reportId", "8-64 lowercase hex, fresh per report: a retried report is applied once")
    add: int = _doc("add", f"successful predictions of one batch, 0..{MAX_BUCKET}")
    total: int = _doc("total", "the coordinator's count including `add`; the worker keeps "
                               "`max(its count + add, total)`, so a worker that missed a report catches up")

    def to_json(self) -> dict[str, Any]:
        return {"scope": self.scope, "reportId": self.report_id, "add": self.add, "total": self.total}

    @classmethod
    def parse(cls, obj: object) -> ServedReport:
        d = _obj(obj, "served report")
        return cls(check_scope(_field(d, "scope", "served report")),
                   check_batch_id(_field(d, "reportId", "served report"), "reportId"),
                   _int(_field(d, "add", "served report"), "add", 0, MAX_BUCKET),
                   _int(_field(d, "total", "served report"), "total", 0, MAX_SERVED))


@dataclass(frozen=True)
class ServedAck:
    """200 answer to a ServedReport: the count now on this worker's disk."""

    model: str = _doc("model", "the model name")
    scope: str = _doc("scope", "the report's count scope")
    served: int = _doc("served", "the scope's count after the report, written to disk before this answer")

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "scope": self.scope, "served": self.served}

    @classmethod
    def parse(cls, obj: object) -> ServedAck:
        d = _obj(obj, "served ack")
        return cls(check_model_name(_field(d, "model", "served ack")), check_scope(_field(d, "scope", "served ack")),
                   _int(_field(d, "served", "served ack"), "served", 0, MAX_SERVED))


# -- tfe-guard (the operator reads what a party's guard refused; docs/mesh.md) ---------------------
MAX_REFUSALS = 64  # distinct refusals a guard keeps (the oldest goes)


@dataclass(frozen=True)
class GuardRefusal:
    """One kind of refusal by a party's tfe-guard: who (certificate CN) was refused where and why."""

    listener: str = _doc("listener", "`grpc`, `http` (inbound) or `outbound to <identity>`")
    identity: str = _doc("identity", "the peer certificate's Subject CN, `-` if none named anyone")
    reason: str = _doc("reason", ("e.g. `handshake: certificate has expired (not after …)`, "
                                  "`call <method>: no rule admits it`"))
    count: int = _doc("count", "refusals of this kind since the guard started")
    first_seen: str = _doc("firstSeen", "RFC 3339 time of the first")
    last_seen: str = _doc("lastSeen", "RFC 3339 time of the latest")

    def to_json(self) -> dict[str, Any]:
        return {"listener": self.listener, "identity": self.identity, "reason": self.reason, "count": self.count,
                "firstSeen": self.first_seen, "lastSeen": self.last_seen}

    @classmethod
    def parse(cls, obj: object) -> GuardRefusal:
        d = _obj(obj, "refusal")
        return cls(_str(_field(d, "listener", "refusal"), "listener", 256),
                   _str(_field(d, "identity", "refusal"), "identity", 256),
                   _str(_field(d, "reason", "refusal"), "reason", 1024),
                   _int(_field(d, "count", "refusal"), "count", 1, MAX_SERVED),
                   _str(_field(d, "firstSeen", "refusal"), "firstSeen", 64),
                   _str(_field(d, "lastSeen", "refusal"), "lastSeen", 64))


@dataclass(frozen=True)
class GuardRefusals:
    """GET /guard/refusals on a party's tfe-guard (health listener, or mTLS for `operator`): most recent first."""

    identity: str = _doc("identity", "the party whose guard answers")
    refusals: tuple[GuardRefusal, ...] = _doc("refusals", f"at most {MAX_REFUSALS} distinct refusals")

    def to_json(self) -> dict[str, Any]:
        return {"identity": self.identity, "refusals": [r.to_json() for r in self.refusals]}

    @classmethod
    def parse(cls, obj: object) -> GuardRefusals:
        d = _obj(obj, "refusals")
        items = _list(_field(d, "refusals", "refusals"), "refusals", MAX_REFUSALS)
        return cls(_str(_field(d, "identity", "refusals"), "identity", 256),
                   tuple(GuardRefusal.parse(r) for r in items))


# Every message type, in the order PROTOCOL.md lists them.
MESSAGES: tuple[type, ...] = (
    PredictRequest, Bundle, PredictResponse, ModelInfo, ModelList, Status, Health, Ready, ErrorBody,
    OipLive, OipReady, OipModelReady, OipModelMetadata, OipTensor,
    PublicKeyResponse, GenerationsResponse, Manifest, IngressRequest, IngressItem, IngressAck, ItemFailure,
    EgressRequest, EgressResponse, EgressOutput, DropResponse, ServedReport, ServedAck, ServedCounts, ServedScope,
    GuardRefusals, GuardRefusal,
)
GENERATED_BEGIN = "<!-- BEGIN GENERATED from tfe_client.wire: python -m tfe_client.wire > section -->"
GENERATED_END = "<!-- END GENERATED -->"


def reference_markdown() -> str:
    """The message and error reference of PROTOCOL.md, generated from this module."""
    limits = (f"Limits: shapes have at most {MAX_DIMS} dimensions of at most {MAX_DIM}; a row at most {MAX_FEATURES} "
              f"elements; a batch or request at most {MAX_BUCKET} rows; an ingress body at most {MAX_INGRESS_BODY} "
              "bytes. Integers are JSON integers (`true` is not 1). Unknown fields are ignored.")
    out = [GENERATED_BEGIN, "## Message reference (generated)", limits, ""]
    for cls in MESSAGES:
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        out += [f"### `{cls.__name__}`", doc, "", "| field | rule |", "|---|---|"]
        for f in fields(cls):
            out.append(f"| `{f.metadata['json']}` | {f.metadata['doc']} |")
        out.append("")
    out += ["### Error codes", "| status | code | when |", "|---|---|---|"]
    for code, (status, when) in sorted(ERRORS.items(), key=lambda kv: (kv[1][0], kv[0])):
        out.append(f"| {status} | `{code}` | {when} |")
    out.append(GENERATED_END)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
