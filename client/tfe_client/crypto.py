"""Per-worker encryption of share pairs: X25519 + HKDF-SHA256 + ChaCha20-Poly1305.

The client makes one ephemeral X25519 key per request. For worker i it derives, from
X25519(ephemeral, worker_i) and both public keys, a request key (client -> worker i) and a
response key (worker i -> client). Only worker i can open its request bundle; only the
client can open worker i's response. The endpoint in between sees ciphertext only.
"""

from __future__ import annotations

import base64
import binascii
import os
import sys
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tfe_client.errors import ProtocolError

KEY_BYTES = 32
NONCE_BYTES = 12
_INFO = b"tfe-operator/v1 share keys"


def b64e(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64d(s: object, what: str) -> bytes:
    """Strict base64: exactly ``base64.b64decode(..., validate=True)`` of the running Python.
    Python 3.11+ checks in C (``strict_mode``); 3.10 (the workers) checks with a regular
    expression, which on a 2 MB share bundle was a visible part of the coordinator's and workers'
    CPU: the same check here is two passes in C (rstrip, translate)."""
    if not isinstance(s, str):
        raise ProtocolError(f"{what} must be a base64 string")
    try:
        b = s.encode("ascii")
        if sys.version_info >= (3, 11):
            return binascii.a2b_base64(b, strict_mode=True)
        body = b.rstrip(b"=")  # 3.10's rule: the alphabet, then at most two '='
        if len(b) - len(body) > 2 or body.translate(None, _B64_ALPHABET):
            raise ValueError("non-alphabet characters")
        return binascii.a2b_base64(b)
    except (ValueError, UnicodeEncodeError) as e:  # binascii.Error is a ValueError
        raise ProtocolError(f"{what} is not valid base64") from e


def raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_public(raw: bytes, what: str) -> X25519PublicKey:
    if len(raw) != KEY_BYTES:
        raise ProtocolError(f"{what} must be {KEY_BYTES} bytes, got {len(raw)}")
    return X25519PublicKey.from_public_bytes(raw)


def _derive(shared: bytes, eph_pub: bytes, worker_pub: bytes) -> tuple[bytes, bytes]:
    if shared == bytes(KEY_BYTES):
        raise ProtocolError("degenerate X25519 key (all-zero shared secret)")
    okm = HKDF(algorithm=hashes.SHA256(), length=2 * KEY_BYTES, salt=None,
               info=_INFO + eph_pub + worker_pub).derive(shared)
    return okm[:KEY_BYTES], okm[KEY_BYTES:]


@dataclass(frozen=True)
class Sealed:
    nonce: bytes
    ciphertext: bytes


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> Sealed:
    nonce = os.urandom(NONCE_BYTES)
    return Sealed(nonce, ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad))


def _open(key: bytes, sealed: Sealed, aad: bytes, who: str) -> bytes:
    if len(sealed.nonce) != NONCE_BYTES:
        raise ProtocolError(f"{who}: nonce must be {NONCE_BYTES} bytes")
    try:
        return ChaCha20Poly1305(key).decrypt(sealed.nonce, sealed.ciphertext, aad)
    except InvalidTag as e:
        raise ProtocolError(f"{who}: authentication failed (wrong key, or the bundle was altered)") from e


@dataclass
class ClientSession:
    """One request's keys on the client side."""

    worker_keys: list[bytes]
    _eph: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)

    @property
    def ephemeral_public(self) -> bytes:
        return raw_public(self._eph.public_key())

    def _keys(self, i: int) -> tuple[bytes, bytes]:
        wpub = self.worker_keys[i]
        shared = self._eph.exchange(load_public(wpub, f"worker {i} public key"))
        return _derive(shared, self.ephemeral_public, wpub)

    def seal_request(self, i: int, plaintext: bytes, aad: bytes) -> Sealed:
        return _seal(self._keys(i)[0], plaintext, aad)

    def open_response(self, i: int, sealed: Sealed, aad: bytes, who: str) -> bytes:
        return _open(self._keys(i)[1], sealed, aad, who)


class WorkerKey:
    """A worker's long-term X25519 key. The private part never leaves the worker."""

    def __init__(self, private: X25519PrivateKey) -> None:
        self._priv = private
        self.public = raw_public(private.public_key())

    @classmethod
    def generate(cls) -> WorkerKey:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> WorkerKey:
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self._priv.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                        serialization.NoEncryption())

    def _keys(self, eph_pub: bytes) -> tuple[bytes, bytes]:
        try:
            shared = self._priv.exchange(load_public(eph_pub, "ephemeralKey"))
        except ValueError as e:  # a low-order point: the shared secret would be all zero
            raise ProtocolError("ephemeralKey is a low-order X25519 point") from e
        return _derive(shared, eph_pub, self.public)

    def open_request(self, eph_pub: bytes, sealed: Sealed, aad: bytes, who: str) -> bytes:
        return _open(self._keys(eph_pub)[0], sealed, aad, who)

    def seal_response(self, eph_pub: bytes, plaintext: bytes, aad: bytes) -> Sealed:
        return _seal(self._keys(eph_pub)[1], plaintext, aad)
