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


def share_ring(prot: Any, v: np.ndarray[Any, Any]) -> Any:
    """An arithmetic ABY3 sharing of the int64 ring elements v: the client's own sharing
    (tfe_client.sharing), party i's pair on party i's device."""
    from tf_encrypted.protocol.aby3.aby3_tensors import ABY3PrivateTensor, ShareType
    from tf_encrypted.tensor import int64factory

    from tfe_client import sharing

    shares = []
    for i, pair in enumerate(sharing.share(v)):
        with tf.device(prot.servers[i].device_name):
            shares.append([int64factory.tensor(tf.constant(s), encode=False) for s in pair])
    return ABY3PrivateTensor(prot, shares, False, ShareType.ARITHMETIC)


def ring(x: Any) -> np.ndarray[Any, Any]:
    """The revealed int64 ring elements of a private tensor."""
    return np.asarray(x.reveal().unwrapped[0].value.numpy())
