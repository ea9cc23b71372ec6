"""tfe_worker.bits and FreshABY3.bit_split_and_gather give exactly TF Encrypted's bits.

The carry circuit behind every secure ReLU/MaxPool feeds its output straight into the next
level, so a single wrong bit would corrupt predictions: the replacement must be bit-identical to
TF Encrypted's custom op on every input, including the sign bit and the extremes of each dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from aby3_local import local_protocol
from hypothesis import given, settings
from hypothesis import strategies as st
from tf_encrypted.operations import aux

from tfe_worker import bits

DTYPES = [np.int8, np.int16, np.int32, np.int64]


def _reference(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.asarray(aux.bit_split_and_gather(tf.constant(x), 2).numpy())


def _python_reference(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Bit by bit, independent of TF: bit 2i -> bit i of out[0], bit 2i+1 -> bit i of out[1]."""
    nbits = x.dtype.itemsize * 8
    u = x.ravel().view(f"uint{nbits}").astype(np.uint64)
    out = np.zeros((2, u.size), dtype=np.uint64)
    for j in range(nbits):
        out[j % 2] |= ((u >> np.uint64(j)) & np.uint64(1)) << np.uint64(j // 2)
    return out.astype(f"uint{nbits}").view(x.dtype).reshape((2, *x.shape))


@pytest.mark.parametrize("dtype", DTYPES)
def test_edges_match_the_custom_op(dtype: Any) -> None:
    info = np.iinfo(dtype)
    edges = [0, 1, -1, 2, -2, info.min, info.max, info.min + 1, info.max - 1]
    patterns = [int.from_bytes(bytes([b] * np.dtype(dtype).itemsize), "little", signed=True)
                for b in (0x55, 0xAA, 0x0F, 0xF0, 0x33, 0xCC)]
    x = np.array(edges + patterns, dtype=dtype)
    got = bits.deinterleave([tf.constant(x)])[0].numpy()
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, _reference(x))
    np.testing.assert_array_equal(got, _python_reference(x))


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(DTYPES), data=st.data())
def test_random_tensors_match_the_custom_op(dtype: Any, data: Any) -> None:
    info = np.iinfo(dtype)
    shape = data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    n = int(np.prod(shape))
    vals = data.draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=n, max_size=n))
    x = np.array(vals, dtype=dtype).reshape(shape)
    np.testing.assert_array_equal(bits.deinterleave([tf.constant(x)])[0].numpy(), _reference(x))


@pytest.mark.parametrize("shape", [(1, 128), (16, 128), (128, 128), (3, 1000)])
def test_split_even_odd_same_bits_either_way(shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(7).integers(-(2**63), 2**63 - 1, size=shape, dtype=np.int64)
    np.testing.assert_array_equal(bits.split_even_odd([tf.constant(x)])[0].numpy(), _reference(x))


def test_small_tensors_keep_the_custom_op() -> None:
    """Below MIN_ELEMENTS one custom-op call is cheaper than ~17 small ops: the graph says which ran."""
    def ops_for(shape: tuple[int, ...]) -> set[str]:
        f = tf.function(lambda x: bits.split_even_odd([x])[0]).get_concrete_function(tf.TensorSpec(shape, tf.int64))
        return {op.type for op in f.graph.get_operations()}

    assert "BitSplitAndGather" in ops_for((1, 128))
    big = ops_for((bits.MIN_ELEMENTS,))
    assert "BitSplitAndGather" not in big and "RightShift" in big


def assert_split_like_stock_aby3(prot: Any, b: Any) -> None:
    """FreshABY3's bit_split_and_gather of b gives the very shares stock ABY3's does."""
    import tf_encrypted as tfe

    ours = prot.bit_split_and_gather(b, 2)
    stock = tfe.protocol.ABY3.bit_split_and_gather(prot, b, 2)
    for i in range(3):
        for j in range(2):
            np.testing.assert_array_equal(ours.unwrapped[i][j].value.numpy(), stock.unwrapped[i][j].value.numpy())


def test_int128_shares_keep_tf_encrypteds_own_op() -> None:
    """An int128 share is an int64 tensor with a last axis of 2: not ours to de-interleave."""
    with local_protocol(fixedpoint_config="high") as prot:
        px = prot.define_private_variable(np.random.default_rng(2).uniform(-5, 5, (16, 128)))
        assert_split_like_stock_aby3(prot, prot.a2b(px, 128))


def test_protocol_shares_identical_to_stock_aby3_and_relu_exact() -> None:
    """On a private tensor large enough to take the new path, FreshABY3's split gives the very
    shares stock ABY3's does, and a secure ReLU over it matches plaintext (TFE's local config:
    three players in this process)."""
    with local_protocol() as prot:
        xv = np.random.default_rng(1).uniform(-5, 5, (16, 128))
        assert xv.size >= bits.MIN_ELEMENTS
        px = prot.define_private_variable(xv)
        assert_split_like_stock_aby3(prot, prot.a2b(px, 64))
        relu = prot.relu(px).reveal().to_native().numpy()
        np.testing.assert_allclose(relu, np.maximum(xv, 0), atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_many_at_once_same_bits(dtype: Any) -> None:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(3)
    xs = [rng.integers(info.min, info.max, size=(16, 128), dtype=dtype, endpoint=True) for _ in range(2)]
    xs[1][0, :4] = [info.min, info.max, 0, -1]
    got = bits.split_even_odd([tf.constant(x) for x in xs])
    for g, x in zip(got, xs):
        np.testing.assert_array_equal(np.asarray(g), _reference(x))
    small = bits.split_even_odd([tf.constant(x[:1, :8]) for x in xs])  # below MIN_ELEMENTS: the custom op
    for g, x in zip(small, xs):
        np.testing.assert_array_equal(np.asarray(g), _reference(x[:1, :8]))
