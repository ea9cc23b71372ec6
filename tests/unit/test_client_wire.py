"""Encryption and the v1 wire format: what goes on the wire, and every malformed message."""

import base64
import binascii
import copy
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfe_client import sharing, wire
from tfe_client.client import seal_request
from tfe_client.crypto import ClientSession, Sealed, WorkerKey, b64d, b64e
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
    (["ephemeralKey"], b64e(b"short"), "32 bytes"),
    (["ephemeralKey"], b64e(bytes(32)), "low-order"),
    (["shape"], [True, 4], "positive integers"),
    (["shape"], [1, 4.0], "positive integers"),
    (["shape"], [1] * 9, "at most 8"),
    (["bundles", 1, "ciphertext"], b64e(b"x" * 79), "must be 80 bytes"),
    (["bundles", 1], "server1", "must be a JSON object"),
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
    out = {"worker": "server0", "nonce": base64.b64encode(b"\0" * 12).decode(),
           "ciphertext": base64.b64encode(b"\0" * 176).decode()}
    good = {"requestId": "ab" * 16, "shape": [1, 10], "shareGeneration": 2, "postprocess": "softmax",
            "outputs": [dict(out, worker=w) for w in wire.WORKERS]}
    r = wire.PredictResponse.parse(good)
    assert (r.shape, r.share_generation, r.postprocess) == ((1, 10), 2, "softmax")
    assert r.outputs[2].worker == "server2" and r.outputs[0].sealed == Sealed(b"\0" * 12, b"\0" * 176)
    with pytest.raises(ProtocolError, match="unknown postprocess"):
        wire.PredictResponse.parse(dict(good, postprocess="argmax"))
    assert r.to_json() == good


def test_model_names() -> None:
    assert wire.check_model_name("digits-v2.1") == "digits-v2.1"
    for bad in ("Digits", "../x", "", "a" * 300, None):
        with pytest.raises(ProtocolError):
            wire.check_model_name(bad)


# -- the contract: every message, the low-order keys, PROTOCOL.md ------------------------------------
def _sealed(n: int) -> Sealed:
    return Sealed(b"\1" * 12, b"\2" * n)


def _examples() -> list[Any]:
    from tfe_client.fixedpoint import FixedPoint

    keys = tuple(WorkerKey.generate().public for _ in range(3))
    rid = "ab" * 16
    ct = wire.ciphertext_bytes((2, 4))
    item = wire.IngressItem(rid, (2, 4), keys[0], _sealed(ct))
    man = wire.Manifest("digits", 3, (4,), (10,), "softmax", "0" * 64, FixedPoint(),
                        ({"kind": "Dense", "config": {"units": 10}, "weightShapes": [[4, 10], [10]]},), "ABY3", 7,
                        {"futureField": [1]})
    return [
        wire.PredictRequest(rid, (2, 4), keys[1], tuple(wire.Bundle(w, _sealed(ct)) for w in wire.WORKERS)),
        wire.PredictResponse(rid, (2, 10), 3, "softmax",
                             tuple(wire.Bundle(w, _sealed(wire.ciphertext_bytes((2, 10)))) for w in wire.WORKERS)),
        wire.ModelInfo("digits", "ABY3", 3, (4,), (10,), "softmax", FixedPoint(), 8, keys, "0" * 64),
        wire.ModelList(("digits",)),
        wire.Status(True, "digits", 5, None, False, 3, False),
        wire.Status(False, "digits", 0, 10, True, None, True),
        wire.Health(True), wire.Ready(True, "server1"), wire.Ready(False, None),
        wire.ErrorBody("bad_request", "why"),
        wire.OipLive(True), wire.OipReady(False), wire.OipModelReady("digits", True),
        wire.OipModelMetadata.of(wire.ModelInfo("digits", "ABY3", 3, (8, 8, 1), (10,), "softmax", FixedPoint(), 8,
                                                keys, "0" * 64)),
        wire.PublicKeyResponse("server2", keys[2]),
        wire.GenerationsResponse("digits", (3, 2)),
        man,
        wire.IngressRequest("cd" * 6, "digits", 3, 4, (4,), (item, item)),
        wire.IngressAck("cd" * 6, (0,), (wire.ItemFailure(1, rid, "bad_bundle", "no"),)),
        wire.EgressRequest("cd" * 6, (10,)),
        wire.EgressResponse("cd" * 6, (wire.EgressOutput(0, rid, _sealed(176)),
                                       wire.EgressOutput(1, rid, _sealed(176)))),
        wire.DropResponse("cd" * 6, True),
        wire.ServedReport("maxRequests=3", "ef" * 6, 2, 5),
        wire.ServedAck("digits", "unlimited", 7),
        wire.ServedCounts("digits", (wire.ServedScope("unlimited", 7), wire.ServedScope("maxRequests=3", 3))),
        wire.GuardRefusals("server2", (wire.GuardRefusal("grpc", "server1", "call /x: no rule admits it", 3,
                                                         "2026-11-26T23:00:00Z", "2026-11-26T23:01:00.5Z"),)),
        wire.ServedCounts("digits", ()),
    ]


def _parse(msg: Any, obj: Any) -> Any:
    if isinstance(msg, wire.PredictRequest):
        return wire.PredictRequest.parse(obj, (4,), 8)
    return type(msg).parse(obj)


@pytest.mark.parametrize("msg", _examples(), ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_json(msg: Any) -> None:
    obj = json.loads(json.dumps(msg.to_json()))
    assert _parse(msg, obj) == msg


def test_every_message_type_has_an_example_and_documented_json_keys() -> None:
    from dataclasses import fields

    assert {type(m) for m in _examples()} >= set(wire.MESSAGES) - {wire.Bundle, wire.IngressItem, wire.ItemFailure,
                                                                   wire.EgressOutput, wire.ServedScope, wire.OipTensor,
                                                                   wire.GuardRefusal}
    for cls in wire.MESSAGES:
        for f in fields(cls):
            assert f.metadata.get("json") and f.metadata.get("doc"), f"{cls.__name__}.{f.name} is undocumented"


def test_protocol_md_holds_the_generated_reference() -> None:
    import pathlib

    text = (pathlib.Path(__file__).parents[2] / "client" / "PROTOCOL.md").read_text()
    assert wire.reference_markdown() in text, (
        "client/PROTOCOL.md is stale: replace its generated section with `python -m tfe_client.wire`")
    for cls in wire.MESSAGES:
        assert f"`{cls.__name__}`" in text
    for code in wire.ERRORS:
        assert f"`{code}`" in text


@pytest.mark.parametrize("raw", wire.LOW_ORDER_POINTS, ids=lambda b: b.hex()[:8] + b.hex()[-2:])
def test_low_order_ephemeral_keys_are_protocol_errors_everywhere(raw: bytes) -> None:
    assert wire.is_low_order(raw)
    with pytest.raises(ProtocolError, match="low-order"):
        wire.check_ephemeral_key(b64e(raw))
    # the worker's own check: a ProtocolError (was: ValueError from X25519 -> HTTP 500 -> reconnect loop)
    with pytest.raises(ProtocolError, match="low-order"):
        WorkerKey.generate().open_request(raw, _sealed(64), b"aad", "server0")


def test_honest_keys_are_not_low_order() -> None:
    for _ in range(20):
        assert not wire.is_low_order(WorkerKey.generate().public)


@pytest.mark.parametrize("mutate,msg", [
    (lambda o: o.update(bucket=True), "bucket must be an integer"),
    (lambda o: o.update(bucket=wire.MAX_BUCKET + 1), "bucket must lie in"),
    (lambda o: o.update(featureShape=[True]), "featureShape"),
    (lambda o: o.update(generation=1.0), "generation must be an integer"),
    (lambda o: o.update(items=[]), "must not be empty"),
    (lambda o: o["items"][0].update(shape=[3, 4]), "must be 208 bytes"),
    (lambda o: o.update(bucket=3), "more than bucket 3|more than 3 entries|rows"),
    (lambda o: o["items"][1].update(ciphertext="AAAA"), "must be 144 bytes"),
    (lambda o: o.update(batchId="XYZ"), "batchId"),
    (lambda o: o.update(model="../etc"), "model name"),
])
def test_ingress_refuses_what_the_worker_must_not_trust(mutate: Any, msg: str) -> None:
    ok = next(m for m in _examples() if isinstance(m, wire.IngressRequest))
    obj = json.loads(json.dumps(ok.to_json()))
    wire.IngressRequest.parse(obj)
    mutate(obj)
    with pytest.raises(ProtocolError, match=msg):
        wire.IngressRequest.parse(obj)


def test_error_codes_have_statuses_and_error_bodies_are_bounded() -> None:
    assert wire.ERRORS["bad_bundle"][0] == 400 and wire.ERRORS["draining"][0] == 503
    assert all(400 <= s < 600 for s, _ in wire.ERRORS.values())
    with pytest.raises(ProtocolError):
        wire.ErrorBody.parse({"error": {"code": "x", "message": "m" * 5000}})
    with pytest.raises(ProtocolError):
        wire.ErrorBody.parse({"error": {"code": True, "message": "m"}})


def test_the_guard_serves_refusals_where_the_mesh_rules_say() -> None:
    """One path, two languages: tfe-guard answers mesh.REFUSALS_PATH itself (wire.GuardRefusals)."""
    import pathlib

    from tfe_client import mesh

    go = (pathlib.Path(__file__).parents[2] / "worker-image" / "guard" / "refusals.go").read_text()
    assert f'const RefusalsPath = "{mesh.REFUSALS_PATH}"' in go
    assert '`json:"firstSeen"`' in go and '`json:"lastSeen"`' in go
    stats = (pathlib.Path(__file__).parents[2] / "worker-image" / "guard" / "stats.go").read_text()
    assert f'const StatsPath = "{mesh.STATS_PATH}"' in stats
    assert mesh.STATS_PATH in mesh.http_rules("server0")[-1]["paths"]  # the operator's rule


# -- b64d: strict base64, same verdicts and bytes as base64.b64decode(validate=True) ---------------
_B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def _stdlib_b64(s: str) -> bytes | None:
    try:
        return base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None


def _ours(s: str) -> bytes | None:
    try:
        return b64d(s, "x")
    except ProtocolError:
        return None


def _with_insert(t: tuple[bytes, str, int]) -> str:
    e = base64.b64encode(t[0]).decode()
    return e[:t[2]] + t[1] + e[t[2]:]


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.text(alphabet=_B64_CHARS + " \n-_.\x00\u00e9", max_size=40),
    st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode()),
    st.tuples(st.binary(max_size=30), st.text(alphabet="= \n-_", min_size=1, max_size=4),
              st.integers(0, 40)).map(_with_insert),
))
def test_b64d_accepts_and_decodes_exactly_what_strict_stdlib_base64_does(s: str) -> None:
    assert _ours(s) == _stdlib_b64(s)


def test_b64d_edges() -> None:
    for s in ("", "AA==", "AAA=", "AAAA", "A===", "AA=A", "=AAA", "AA== ", " AA==", "AA\n==", "AA-_", "\u00e9"):
        assert _ours(s) == _stdlib_b64(s), s
