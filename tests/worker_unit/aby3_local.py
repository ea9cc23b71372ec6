"""FreshABY3 on TF Encrypted's local config (three players in this test process)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf


@contextlib.contextmanager
def local_protocol(**kw: Any) -> Iterator[Any]:
    """FreshABY3 set as the protocol for the block; TFE's node memo cleared and a default
    FreshABY3 set afterwards."""
    import tf_encrypted as tfe
    from tf_encrypted.protocol import protocol as tfe_protocol

    from tfe_worker.runtime import FreshABY3

    prot = FreshABY3(**kw)
    tfe.set_protocol(prot)
    try:
        yield prot
    finally:
        tfe_protocol.nodes.clear()
        tfe.set_protocol(FreshABY3())
        tfe_protocol.nodes.clear()


def share_ring(prot: Any, v: np.ndarray[Any, Any], rng: np.random.Generator, scaled: bool = False) -> Any:
    """An arithmetic ABY3 sharing of the int64 ring elements v (random shares, wrapping mod 2^64)."""
    from tf_encrypted.protocol.aby3.aby3_tensors import ABY3PrivateTensor, ShareType
    from tf_encrypted.tensor import int64factory

    info = np.iinfo(np.int64)
    s0, s1 = (rng.integers(info.min, info.max, size=v.shape, dtype=np.int64, endpoint=True) for _ in range(2))
    s2 = (v.astype(np.int64).view(np.uint64) - s0.view(np.uint64) - s1.view(np.uint64)).view(np.int64)
    s = (s0, s1, s2)
    shares = []
    for i in range(3):
        with tf.device(prot.servers[i].device_name):
            shares.append([int64factory.tensor(tf.constant(s[i]), encode=False),
                           int64factory.tensor(tf.constant(s[(i + 1) % 3]), encode=False)])
    return ABY3PrivateTensor(prot, shares, scaled, ShareType.ARITHMETIC)


def ring(x: Any) -> np.ndarray[Any, Any]:
    """The revealed int64 ring elements of a private tensor."""
    return np.asarray(x.reveal().unwrapped[0].value.numpy())
