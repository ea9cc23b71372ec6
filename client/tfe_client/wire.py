"""Wire format of the client API, version v1 (see client/PROTOCOL.md).

Share pairs travel as raw little-endian int64 bytes of shape (2, *shape), encrypted per
worker. The associated data binds every ciphertext to its direction, model, request id,
worker and shape, so a bundle cannot be replayed into another slot.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tfe_client.crypto import NONCE_BYTES, Sealed, b64d, b64e
from tfe_client.errors import ProtocolError

VERSION = "v1"
WORKERS: tuple[str, ...] = ("server0", "server1", "server2")
POSTPROCESS = ("none", "softmax", "sigmoid")
_REQUEST_ID = re.compile(r"^[0-9a-f]{16,64}$")
_MODEL_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")

Int64Array = npt.NDArray[np.int64]


def aad(direction: str, model: str, request_id: str, worker: str, shape: tuple[int, ...]) -> bytes:
    dims = "x".join(str(d) for d in shape)
    return f"tfe/{VERSION}|{direction}|{model}|{request_id}|{worker}|{dims}".encode()


def pair_to_bytes(pair: Int64Array) -> bytes:
    return np.ascontiguousarray(pair, dtype="<i8").tobytes()


def pair_from_bytes(raw: bytes, shape: tuple[int, ...], who: str) -> Int64Array:
    want = 2 * math.prod(shape) * 8
    if len(raw) != want:
        raise ProtocolError(f"{who}: share pair has {len(raw)} bytes, expected {want} for shape {list(shape)}")
    return np.frombuffer(raw, dtype="<i8").reshape((2, *shape)).astype(np.int64)


def check_model_name(name: object) -> str:
    if not isinstance(name, str) or not _MODEL_NAME.match(name):
        raise ProtocolError("model name must be a DNS-1123 subdomain (lowercase letters, digits, '-', '.')")
    return name


def _shape(obj: object, what: str) -> tuple[int, ...]:
    if not isinstance(obj, list) or not obj or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                       for d in obj):
        raise ProtocolError(f"{what} must be a non-empty list of positive integers")
    return tuple(obj)


def _field(obj: dict[str, Any], key: str, what: str) -> Any:
    if key not in obj:
        raise ProtocolError(f"{what}: missing field '{key}'")
    return obj[key]


@dataclass(frozen=True)
class Bundle:
    worker: str
    sealed: Sealed

    def to_json(self) -> dict[str, str]:
        return {"worker": self.worker, "nonce": b64e(self.sealed.nonce), "ciphertext": b64e(self.sealed.ciphertext)}

    @classmethod
    def parse(cls, obj: object, worker: str, what: str) -> Bundle:
        if not isinstance(obj, dict):
            raise ProtocolError(f"{what} must be an object")
        if obj.get("worker") != worker:
            raise ProtocolError(f"{what}: expected worker '{worker}', got {obj.get('worker')!r}")
        nonce = b64d(_field(obj, "nonce", what), f"{what}.nonce")
        if len(nonce) != NONCE_BYTES:
            raise ProtocolError(f"{what}.nonce must be {NONCE_BYTES} bytes")
        return cls(worker, Sealed(nonce, b64d(_field(obj, "ciphertext", what), f"{what}.ciphertext")))


def _bundles(obj: object, what: str) -> tuple[Bundle, ...]:
    if not isinstance(obj, list) or len(obj) != len(WORKERS):
        raise ProtocolError(f"{what} must be a list of exactly {len(WORKERS)} bundles, one per worker")
    return tuple(Bundle.parse(b, w, f"{what}[{i}]") for i, (b, w) in enumerate(zip(obj, WORKERS)))


@dataclass(frozen=True)
class PredictRequest:
    request_id: str
    shape: tuple[int, ...]
    ephemeral_key: bytes
    bundles: tuple[Bundle, ...]

    @property
    def rows(self) -> int:
        return self.shape[0]

    def to_json(self) -> dict[str, Any]:
        return {"requestId": self.request_id, "shape": list(self.shape),
                "ephemeralKey": b64e(self.ephemeral_key), "bundles": [b.to_json() for b in self.bundles]}

    @classmethod
    def parse(cls, obj: object, feature_shape: tuple[int, ...], max_rows: int) -> PredictRequest:
        """Validate a decoded JSON body against the served model; raise ProtocolError with a reason."""
        if not isinstance(obj, dict):
            raise ProtocolError("request body must be a JSON object")
        rid = _field(obj, "requestId", "request")
        if not isinstance(rid, str) or not _REQUEST_ID.match(rid):
            raise ProtocolError("requestId must be 16-64 lowercase hex characters")
        shape = _shape(_field(obj, "shape", "request"), "shape")
        if shape[1:] != feature_shape:
            raise ProtocolError(f"input shape {list(shape)} does not match the model input [B, "
                                f"{', '.join(map(str, feature_shape))}]")
        if shape[0] > max_rows:
            raise ProtocolError(f"batch of {shape[0]} rows exceeds the maximum of {max_rows} per request")
        eph = b64d(_field(obj, "ephemeralKey", "request"), "ephemeralKey")
        if len(eph) != 32:
            raise ProtocolError("ephemeralKey must be a raw 32-byte X25519 public key")
        return cls(rid, shape, eph, _bundles(_field(obj, "bundles", "request"), "bundles"))


@dataclass(frozen=True)
class PredictResponse:
    request_id: str
    shape: tuple[int, ...]
    share_generation: int
    postprocess: str
    outputs: tuple[Bundle, ...]

    def to_json(self) -> dict[str, Any]:
        return {"requestId": self.request_id, "shape": list(self.shape), "shareGeneration": self.share_generation,
                "postprocess": self.postprocess, "outputs": [b.to_json() for b in self.outputs]}

    @classmethod
    def parse(cls, obj: object) -> PredictResponse:
        if not isinstance(obj, dict):
            raise ProtocolError("response body must be a JSON object")
        post = _field(obj, "postprocess", "response")
        if post not in POSTPROCESS:
            raise ProtocolError(f"unknown postprocess {post!r}")
        gen = _field(obj, "shareGeneration", "response")
        if not isinstance(gen, int):
            raise ProtocolError("shareGeneration must be an integer")
        return cls(str(_field(obj, "requestId", "response")), _shape(_field(obj, "shape", "response"), "shape"),
                   gen, post, _bundles(_field(obj, "outputs", "response"), "outputs"))


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
