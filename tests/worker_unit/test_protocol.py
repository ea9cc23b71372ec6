"""FreshABY3's shorter protocol steps give TF Encrypted's ABY3 values in fewer rounds.

- Bit extraction (every secure ReLU/MaxPool/comparison takes the sign bit of an arithmetic sharing)
  splits x as (x2 + x0) + x1 instead of (x0 + x1) + x2: the same bit for every ring element.
- A product of two private scaled tensors (Dense, Conv2D) is truncated in two rounds instead of
  three: the same truncation as stock ABY3's (floor(z / 2^f), or one more: its mask's rounding).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from aby3_local import local_protocol, ring, share_ring
from tf_encrypted.protocol.aby3 import aby3 as stock

from tfe_worker import rounds, runtime
from tfe_worker.plan import build_plan

L = tf.keras.layers
INT64 = np.iinfo(np.int64)
EDGES = [0, 1, -1, 2, -2, INT64.max, INT64.min, INT64.max - 1, INT64.min + 1, 1 << 62, -(1 << 62),
         (1 << 62) - 1, -(1 << 62) + 1, 1 << 31, -(1 << 31), 1 << 32, 0x5555555555555555, -0x5555555555555556]


def ring_values(rng: np.random.Generator, n: int) -> np.ndarray[Any, Any]:
    v = rng.integers(INT64.min, INT64.max, size=n, dtype=np.int64, endpoint=True)
    small = rng.integers(-(1 << 20), 1 << 20, size=n // 4, dtype=np.int64)  # values near 0, both signs
    return np.concatenate([np.array(EDGES, dtype=np.int64), v, small]).reshape(1, -1)


def test_sign_and_bits_exact_on_every_kind_of_ring_element() -> None:
    rng = np.random.default_rng(11)
    with local_protocol() as prot:
        v = ring_values(rng, 512)
        x = share_ring(prot, v)
        np.testing.assert_array_equal(ring(prot.msb(x)).astype(bool), v < 0)
        for i in (0, 1, 2, 15, 31, 32, 61, 62, 63):
            bit = ring(prot.bit_extract(x, i)).astype(np.int64)
            np.testing.assert_array_equal(bit, (v >> i) & 1, err_msg=f"bit {i}")


def test_comparisons_and_relu_match_plaintext() -> None:
    rng = np.random.default_rng(12)
    with local_protocol() as prot:
        a, b = rng.uniform(-100, 100, (4, 64)), rng.uniform(-100, 100, (4, 64))
        a[0, :4] = [0.0, 1.5, -1.5, 0.0]
        b[0, :4] = [0.0, 1.5, 1.5, -0.0]
        pa, pb = prot.define_private_variable(a), prot.define_private_variable(b)
        assert np.array_equal(ring(pa > pb).astype(bool), a > b)
        assert np.array_equal(ring(pa < pb).astype(bool), a < b)
        np.testing.assert_allclose(prot.relu(pa).reveal().to_native().numpy(), np.maximum(a, 0), atol=1e-4)


def _floor_product(xr: np.ndarray[Any, Any], wr: np.ndarray[Any, Any], frac: int) -> np.ndarray[Any, Any]:
    """floor(x @ w / 2^frac) of ring elements, in exact integers."""
    z = xr.astype(object) @ wr.astype(object)
    return np.vectorize(lambda t: t >> frac, otypes=[object])(z)


def _assert_truncation(got: np.ndarray[Any, Any], exact: np.ndarray[Any, Any]) -> None:
    err = got.astype(object) - exact
    assert set(np.unique(err)) <= {0, 1}, sorted(set(np.unique(err)))


@pytest.mark.parametrize("scale", [1.0, 3e4])  # 3e4: products of ~2^61 in the ring, near the 2^62 bound
def test_truncated_matmul_is_stock_aby3s_truncation(scale: float) -> None:
    rng = np.random.default_rng(13)
    with local_protocol() as prot:
        frac = prot.fixedpoint_config.precision_fractional
        a = rng.uniform(-scale, scale, (8, 64))
        w = rng.uniform(-1, 1, (64, 32))
        a[0, :] = 0.0  # a zero row: exactly 0
        pa, pw = prot.define_private_variable(a), prot.define_private_variable(w)
        exact = _floor_product(ring(pa), ring(pw), frac)
        ours = ring(prot.matmul(pa, pw))
        theirs = ring(stock._matmul_private_private(prot, pa, pw))
        _assert_truncation(ours, exact)
        _assert_truncation(theirs, exact)
        assert not ours[0].any()


def test_truncated_conv2d_is_stock_aby3s_truncation() -> None:
    rng = np.random.default_rng(14)
    with local_protocol() as prot:
        x, k = rng.uniform(-2, 2, (2, 3, 8, 8)), rng.uniform(-1, 1, (3, 3, 3, 4))
        px, pk = prot.define_private_variable(x), prot.define_private_variable(k)
        ours = ring(prot.conv2d(px, pk, [1, 1], "SAME"))
        theirs = ring(stock._conv2d_private_private(prot, px, pk, [1, 1], "SAME"))
        assert np.abs(ours - theirs).max() <= 1
        np.testing.assert_allclose(prot.conv2d(px, pk, [1, 1], "SAME").reveal().to_native().numpy(),
                                   tf.nn.conv2d(x.transpose(0, 2, 3, 1), k, 1, "SAME").numpy().transpose(0, 3, 1, 2),
                                   atol=2e-3)


def test_outputs_are_fresh_sharings() -> None:
    """The same product twice: the same values, different shares (fresh masks on every call)."""
    rng = np.random.default_rng(15)
    with local_protocol() as prot:
        pa = prot.define_private_variable(rng.uniform(-5, 5, (4, 16)))
        pw = prot.define_private_variable(rng.uniform(-1, 1, (16, 8)))
        y1 = prot._product_truncated(pa, pw, lambda a, b: a.matmul(b))  # not memoized, unlike matmul
        y2 = prot._product_truncated(pa, pw, lambda a, b: a.matmul(b))
        assert np.abs(ring(y1) - ring(y2)).max() <= 1
        for i in range(3):
            for j in range(2):
                assert not np.array_equal(y1.unwrapped[i][j].value.numpy(), y2.unwrapped[i][j].value.numpy())


MODELS = {  # (keras model, rounds with stock ABY3's steps, rounds with FreshABY3's)
    "mlp": (lambda: tf.keras.Sequential([L.Dense(32, activation="relu", input_shape=(64,)), L.Dense(10)]), 16, 13),
    "net-a": (lambda: tf.keras.Sequential([L.Dense(128, activation="relu", input_shape=(784,)),
                                           L.Dense(128, activation="relu"), L.Dense(10)]), 27, 23),
    "cnn": (lambda: tf.keras.Sequential([L.Reshape((8, 8, 1), input_shape=(64,)), L.Conv2D(8, 3, activation="relu"),
                                         L.AveragePooling2D(), L.Flatten(), L.Dense(10)]), 17, 15),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fewer_rounds_than_stock_aby3(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    build, stock_rounds, our_rounds = MODELS[name]
    manifest = build_plan(build(), "x").public()
    ours = rounds.of_manifest(manifest, 1)
    for method in ("matmul", "conv2d", "msb", "bit_extract"):
        monkeypatch.delattr(runtime.FreshABY3, method)
    theirs = rounds.of_manifest(manifest, 1)
    assert (theirs["rounds"], ours["rounds"]) == (stock_rounds, our_rounds)
    for p in rounds.PARTIES:  # and no party sends more
        assert ours["sent"][p]["bytes"] <= theirs["sent"][p]["bytes"]


def test_compiled_graph_with_the_per_call_counter() -> None:
    """As serve runs it: one traced function, the call counter a graph input. Every call gives the
    right values and shares that differ from the previous call's (seeds mix in the counter)."""
    rng = np.random.default_rng(16)
    with local_protocol() as prot:
        a, w = rng.uniform(-5, 5, (4, 16)), rng.uniform(-1, 1, (16, 8))
        pa, pw = prot.define_private_variable(a), prot.define_private_variable(w)

        @tf.function
        def run(call: tf.Tensor) -> Any:
            prot._call = call
            try:
                y = prot.relu(prot.matmul(pa, pw))
                return y.reveal().to_native(), [[s.value for s in pair] for pair in y.unwrapped]
            finally:
                prot._call = None

        out1, shares1 = run(tf.constant(1, tf.int64))
        out2, shares2 = run(tf.constant(2, tf.int64))
        for out in (out1, out2):
            np.testing.assert_allclose(out.numpy(), np.maximum(a @ w, 0), atol=1e-3)
        for i in range(3):
            for j in range(2):
                assert not np.array_equal(shares1[i][j].numpy(), shares2[i][j].numpy())
