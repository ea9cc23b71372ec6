"""Encryption and the v1 wire format: what goes on the wire, and every malformed message."""

import base64
import copy
import json
from typing import Any

import numpy as np
import pytest

from tfe_client import sharing, wire
from tfe_client.client import seal_request
from tfe_client.crypto import ClientSession, Sealed, WorkerKey, b64e
from tfe_client.errors import ProtocolError
from tfe_client.fixedpoint import DEFAULT


def _request(keys: list[WorkerKey], x: np.ndarray, model: str = "digits") -> tuple[dict[str, Any], ClientSession]:
    req, sess = seal_request(model, [k.public for k in keys], DEFAULT.encode(x))
    return req.to_json(), sess


def test_aad_binds_everything() -> None:
    assert wire.aad("req", "digits", "ff" * 8, "server1", (2, 64)) == b"tfe/v1|req|digits|ffffffffffffffff|server1|2x64"


def test_roundtrip_each_worker_opens_only_its_bundle() -> None:
    keys = [WorkerKey.generate() for _ in range(3)]
    x = np.arange(6, dtype=np.float64).reshape(1, 6) / 7
    body, sess = _request(keys, x)
    req = wire.PredictRequest.parse(json.loads(json.dumps(body)), (6,), 8)
    assert req.shape == (1, 6) and req.rows == 1
    opened = []
    for i, w in enumerate(wire.WORKERS):
        a = wire.aad("req", "digits", req.request_id, w, req.shape)
        raw = keys[i].open_request(req.ephemeral_key, req.bundles[i].sealed, a, w)
        opened.append(wire.pair_from_bytes(raw, (1, 6), w))
        other = keys[(i + 1) % 3]
        with pytest.raises(ProtocolError, match="authentication failed"):
            other.open_request(req.ephemeral_key, req.bundles[i].sealed, a, w)
    np.testing.assert_array_equal(DEFAULT.decode(sharing.reconstruct(opened)), np.round(x * 65536) / 65536)
    # response direction: worker i seals, only this client session opens
    a = wire.aad("resp", "digits", req.request_id, "server0", (1, 6))
    sealed = keys[0].seal_response(req.ephemeral_key, b"\x01" * 96, a)
    assert sess.open_response(0, sealed, a, "server0") == b"\x01" * 96
    with pytest.raises(ProtocolError, match="authentication failed"):
        sess.open_response(0, sealed, wire.aad("resp", "digits", req.request_id, "server1", (1, 6)), "server0")


def test_bundle_cannot_move_to_another_slot_or_request() -> None:
    keys = [WorkerKey.generate() for _ in range(3)]
    body, _ = _request(keys, np.zeros((1, 4)))
    req = wire.PredictRequest.parse(body, (4,), 8)
    wrong = wire.aad("req", "digits", "cd" * 16, "server0", (1, 4))
    with pytest.raises(ProtocolError, match="authentication failed"):
        keys[0].open_request(req.ephemeral_key, req.bundles[0].sealed, wrong, "server0")


def _mut(body: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    b = copy.deepcopy(body)
    cur = b
    for p in path[:-1]:
        cur = cur[p]
    if value is KeyError:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return b


@pytest.mark.parametrize("path,value,msg", [
    (["requestId"], KeyError, "missing field 'requestId'"),
    (["requestId"], "XYZ", "requestId must be"),
    (["shape"], [1, 5], r"does not match the model input \[B, 4\]"),
    (["shape"], [9, 4], "exceeds the maximum of 8"),
    (["shape"], [0, 4], "positive integers"),
    (["shape"], "1,4", "positive integers"),
    (["ephemeralKey"], "!!!", "not valid base64"),
    (["ephemeralKey"], b64e(b"short"), "32-byte"),
    (["bundles"], [], "exactly 3 bundles"),
    (["bundles", 1, "worker"], "server9", "expected worker 'server1'"),
    (["bundles", 2, "nonce"], b64e(b"123"), "12 bytes"),
    (["bundles", 0, "ciphertext"], 17, "base64 string"),
])
def test_malformed_requests_are_refused_with_a_reason(path: list[Any], value: Any, msg: str) -> None:
    keys = [WorkerKey.generate() for _ in range(3)]
    body, _ = _request(keys, np.zeros((1, 4)))
    with pytest.raises(ProtocolError, match=msg):
        wire.PredictRequest.parse(_mut(body, path, value), (4,), 8)


def test_not_an_object() -> None:
    with pytest.raises(ProtocolError, match="JSON object"):
        wire.PredictRequest.parse([1, 2], (4,), 8)


def test_pair_from_bytes_checks_length() -> None:
    with pytest.raises(ProtocolError, match="expected 64"):
        wire.pair_from_bytes(b"\0" * 63, (1, 4), "server0")


def test_response_parse_and_errors() -> None:
    out = {"worker": "server0", "nonce": base64.b64encode(b"\0" * 12).decode(), "ciphertext": "AA=="}
    good = {"requestId": "ab" * 16, "shape": [1, 10], "shareGeneration": 2, "postprocess": "softmax",
            "outputs": [dict(out, worker=w) for w in wire.WORKERS]}
    r = wire.PredictResponse.parse(good)
    assert (r.shape, r.share_generation, r.postprocess) == ((1, 10), 2, "softmax")
    assert r.outputs[2].worker == "server2" and r.outputs[0].sealed == Sealed(b"\0" * 12, b"\0")
    with pytest.raises(ProtocolError, match="unknown postprocess"):
        wire.PredictResponse.parse(dict(good, postprocess="argmax"))
    assert r.to_json() == good


def test_model_names() -> None:
    assert wire.check_model_name("digits-v2.1") == "digits-v2.1"
    for bad in ("Digits", "../x", "", "a" * 300, None):
        with pytest.raises(ProtocolError):
            wire.check_model_name(bad)
