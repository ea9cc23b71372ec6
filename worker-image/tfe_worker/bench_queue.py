"""Baseline: TF Encrypted's own serving path (tfe.serving.QueueServer / QueueClient).

tf-encrypted 0.9.1 implements fifo_queue only for Pond; ABY3FIFOQueue below is the ABY3
analogue (one TF FIFOQueue per player, holding that player's two replicated shares), as in
../shared/prototype/aby3_queue.py. The client shares its input with tfe.define_private_variable
and reveals the output, i.e. the original flow (the output is revealed to all players: this
path is a speed baseline, not a private one).

usage: python -m tfe_worker.bench_queue CONFIG COORD MANIFEST_JSON WEIGHTS_NPZ N
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import tf_encrypted as tfe
from tf_encrypted.protocol.aby3.aby3 import ABY3, ABY3PrivateTensor, ShareType
from tf_encrypted.queue.fifo import AbstractFIFOQueue, TFFIFOQueue

from tfe_worker.config import Config


class ABY3FIFOQueue(AbstractFIFOQueue):  # type: ignore[misc]
    def __init__(self, protocol: Any, capacity: int, shape: Sequence[int], shared_name: str | None) -> None:
        self.prot, self.shape = protocol, list(shape)
        self.factory = protocol.default_factory
        self.queues = []
        for i, srv in enumerate(protocol.servers):
            with tf.device(srv.device_name):
                self.queues.append(TFFIFOQueue(capacity=capacity, dtypes=[self.factory.native_type] * 2,
                                               shapes=[shape] * 2,
                                               shared_name=f"{shared_name}-{i}" if shared_name else None))

    def size(self):  # type: ignore[no-untyped-def]
        return self.queues[0].size()

    def enqueue(self, tensor):  # type: ignore[no-untyped-def]
        for i, srv in enumerate(self.prot.servers):
            with tf.device(srv.device_name):
                s = tensor.unwrapped[i]
                self.queues[i].enqueue([s[0].value, s[1].value])

    def dequeue(self):  # type: ignore[no-untyped-def]
        shares = [[None, None], [None, None], [None, None]]
        for i, srv in enumerate(self.prot.servers):
            with tf.device(srv.device_name):
                v0, v1 = self.queues[i].dequeue()
                shares[i][0] = self.factory.tensor(v0, encode=False).identity()
                shares[i][1] = self.factory.tensor(v1, encode=False).identity()
        return ABY3PrivateTensor(self.prot, shares, True, ShareType.ARITHMETIC)


def _connect(config_path: str, coord: str) -> None:
    from tfe_worker import runtime

    runtime.connect(Config.load(config_path), coord)
    ABY3.fifo_queue = lambda self, capacity, shape, shared_name: ABY3FIFOQueue(self, capacity, shape, shared_name)
    tfe.set_protocol(tfe.protocol.ABY3())


def run(config_path: str, coord: str, manifest_path: str, weights_path: str, n: int) -> None:
    """QueueServer and QueueClient on one coordinator connection (the queues of two coordinator
    processes would live in separate eager contexts on the players and never meet). One request
    = client enqueue, one server step, client dequeue + reveal, in that order."""
    from tfe_worker import runtime

    _connect(config_path, coord)
    with open(manifest_path) as f:
        manifest = json.load(f)
    model = runtime.build_model(manifest, 1)
    w = np.load(weights_path)
    model.set_weights([w[f"w{k}"] for k in range(len(w.files))])
    in_shape, out_shape = [1, *manifest["inputShape"]], [1, *manifest["outputShape"]]
    srv = tfe.serving.QueueServer(input_shape=in_shape, output_shape=out_shape, computation_fn=model)
    cl = tfe.serving.QueueClient(input_shape=in_shape, output_shape=out_shape)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(n):
        x = rng.uniform(0, 1, size=in_shape).astype(np.float32)
        t0 = time.perf_counter()
        cl.send_input(x)
        srv.run(num_steps=1)
        cl.receive_output()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"latencies": times}), flush=True)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
