"""TF Encrypted glue for the coordinator side (share job and serve).

Everything that touches shares runs pinned to the owning player's device: reading and
writing share pairs happens on that player's own disk, so share bytes never pass through
the coordinator. Paths are relative to each player's working directory (its state dir).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import tf_encrypted as tfe
from tf_encrypted.config import RemoteConfig
from tf_encrypted.protocol import protocol as tfe_protocol
from tf_encrypted.protocol.aby3.aby3_tensors import ABY3PrivateTensor, ABY3PublicTensor, ShareType
from tf_encrypted.protocol.protocol import memoize
from tf_encrypted.tensor import factories, int64factory

from tfe_worker import bits
from tfe_worker.config import Config
from tfe_worker.plan import tfe_layer_args

log = logging.getLogger("tfe_worker.runtime")
PROTOCOLS = ("ABY3",)
CONTEXT_KEEP_ALIVE_S = 60  # see _connect_to_cluster


# The native factories whose shares are one tf.int8..int64 tensor (bits.split_even_odd's domain).
_NATIVE_FACTORIES = tuple(factories[n] for n in (8, 16, 32, 64))


class FreshABY3(tfe.protocol.ABY3):  # type: ignore[misc]
    """ABY3 whose correlated randomness is fresh on every call of a compiled graph.

    Stock ABY3 derives every mask seed as pairwise_key + nonce, where the nonce is a Python
    counter advanced only while *tracing*. A tf.function traced once therefore reuses the
    same masks on every call. Here a public per-call counter (a graph input) is mixed into
    every nonce: seed = key + [n, n + lo, n + hi, n, ...] with (lo, hi) the two 32-bit halves
    of the 64-bit call counter. Seeds are then distinct for distinct (n, call) pairs. The
    pairwise keys are fresh for every protocol instance (new coordinator connection), and
    the counter is strictly increasing within one, so a seed never repeats under a key.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._call: tf.Tensor | None = None
        super().__init__(*args, **kwargs)

    def _vec(self) -> tf.Tensor:
        halves = tf.bitcast(tf.reshape(self._call, [1]), tf.int32)  # [lo, hi] (little endian)
        return tf.pad(tf.reshape(halves, [2]), [[1, 5]])  # [0, lo, hi, 0, 0, 0, 0, 0]

    def pairwise_nonces(self) -> Any:
        n = super().pairwise_nonces()
        return n if self._call is None else [self._vec() + int(v) for v in n]

    def b2a_nonce(self) -> Any:
        n = super().b2a_nonce()
        return n if self._call is None else self._vec() + int(n)

    def bit_split_and_gather(self, x: Any, stride: int) -> Any:
        """TF Encrypted's, on each share, with the same bits out (tfe_worker.bits): its custom op
        walks bits one at a time and was a third of the players' CPU on large batches."""
        if (stride != 2 or not isinstance(x, (ABY3PrivateTensor, ABY3PublicTensor))
                or x.backing_dtype not in _NATIVE_FACTORIES):  # e.g. int128: its own op
            return super().bit_split_and_gather(x, stride)
        private = isinstance(x, ABY3PrivateTensor)
        if private:
            assert x.share_type == ShareType.BOOLEAN, x.share_type
        # each party's shares: a pair for a private tensor, one for a public one
        parties = x.unwrapped if private else [(v,) for v in x.unwrapped]
        z: list[list[Any]] = []
        with tf.name_scope("bit-split-gather"):
            for i, shares in enumerate(parties):
                with tf.device(self.servers[i].device_name):
                    halves = bits.split_even_odd([sh.value for sh in shares])
                    z.append([sh.factory.tensor(v, encode=False) for sh, v in zip(shares, halves)])
        if private:
            return ABY3PrivateTensor(self, z, x.is_scaled, x.share_type)
        return ABY3PublicTensor(self, [p[0] for p in z], x.is_scaled)

    @memoize  # type: ignore[untyped-decorator]
    def matmul(self, x: Any, y: Any) -> Any:
        x, y = self.lift(x, y)
        if self._fusable(x, y):
            with tf.name_scope("matmul"):
                return self._product_truncated(x, y, lambda a, b: a.matmul(b))
        return super().matmul(x, y)

    @memoize  # type: ignore[untyped-decorator]
    def conv2d(self, x: Any, w: Any, strides: Any, padding: Any) -> Any:
        x, w = self.lift(x, w)
        if self._fusable(x, w):
            with tf.name_scope("conv2d"):
                return self._product_truncated(x, w, lambda a, b: a.conv2d(b, strides, padding))
        return super().conv2d(x, w, strides, padding)

    @staticmethod
    def _fusable(x: Any, y: Any) -> bool:
        return (isinstance(x, ABY3PrivateTensor) and isinstance(y, ABY3PrivateTensor)
                and x.share_type == y.share_type == ShareType.ARITHMETIC and x.is_scaled and y.is_scaled
                and x.backing_dtype is y.backing_dtype is int64factory)

    def _product_truncated(self, x: ABY3PrivateTensor, y: ABY3PrivateTensor, op: Any) -> ABY3PrivateTensor:
        """x op y (a product of two scaled arithmetic sharings) truncated by the fractional bits:
        the same values as TF Encrypted's ABY3 (its 'heuristic' truncation, SecureQ8-style: lift by
        2^62 so that the value's top bit is 0, truncate with a mask from player 2, drop the lift),
        in two rounds instead of three.

        Stock ABY3 first turns the players' local 3-out-of-3 products z0, z1, z2 into a replicated
        sharing (a round), then players 0 and 1 open c = z + lift + r to each other (a round) and
        exchange their halves of the result (a round). Here each player masks its own product
        share and the opening of c is the first round: player 0 sends z0 + lift + r0 to player 1,
        player 1 sends z1 + r1 to player 0, and player 2 sends z2 + r - r0 - r1 to both, where r
        is player 2's fresh random mask and r0, r1 come from the seeds player 2 shares with player
        0 and player 1 respectively. Each message is masked by a value its receiver does not know
        (r1 or r for player 0, r0 or r for player 1); player 2 receives nothing; the opened c is
        masked by r as in stock ABY3. The rest (player 2's 2-out-of-2 shares of r's truncation and
        top bit, the result's masks y0 and y2 from the same seeds, the second round) is stock
        ABY3's, so the result is the same truncation with the same at most one unit of rounding
        error in the last place.
        """
        f = int64factory
        nbits = f.nbits
        amount = self.fixedpoint_config.precision_fractional
        bound_bits = nbits - 2  # TF Encrypted's heuristic bound: |value| < 2^62 in the ring
        msb_mask = -(1 << (nbits - 1))  # int64 bit pattern of the top bit
        mod_mask = (1 << (nbits - amount - 1)) - 1
        xs, ys = x.unwrapped, y.unwrapped
        z = []
        for i in range(3):
            with tf.device(self.servers[i].device_name):
                z.append((op(xs[i][0], ys[i][0]) + op(xs[i][0], ys[i][1]) + op(xs[i][1], ys[i][0])).value)
        shape = z[0].shape
        keys = self.pairwise_keys()
        with tf.name_scope("truncate"):
            with tf.device(self.servers[2].device_name):
                # seeded with player 0 (4 rows) and with player 1 (2 rows)
                with2 = f.sample_seeded_uniform([4, *shape], keys[2][1] + self.pairwise_nonces()[2]).value
                with12 = f.sample_seeded_uniform([2, *shape], keys[2][0] + self.pairwise_nonces()[1]).value
                r = f.sample_uniform(shape).value
                s = tf.bitwise.right_shift(tf.bitwise.bitwise_and(r, ~msb_mask), amount)
                r_msb = tf.cast(r < 0, tf.int64)
                c2 = z[2] + r - with2[0] - with12[0]
                s1, r_msb1 = s - with2[1], r_msb - with2[2]
                y2_on_2, y0_on_2 = with12[1], with2[3]
            with tf.device(self.servers[0].device_name):
                with0 = f.sample_seeded_uniform([4, *shape], keys[0][0] + self.pairwise_nonces()[2]).value
                c0 = z[0] + (1 << bound_bits) + with0[0]
                s0, r_msb0, y0 = with0[1], with0[2], with0[3]
            with tf.device(self.servers[1].device_name):
                with1 = f.sample_seeded_uniform([2, *shape], keys[1][1] + self.pairwise_nonces()[1]).value
                c1 = z[1] + with1[0]
                y2 = with1[1]
            tilde = []
            for i, (s_i, r_msb_i, own, out_mask) in enumerate(((s0, r_msb0, 1, y0), (s1, r_msb1, 0, y2))):
                with tf.device(self.servers[i].device_name):
                    c = c0 + c1 + c2
                    c_high = tf.bitwise.bitwise_and(tf.bitwise.right_shift(c, amount), mod_mask)
                    b = tf.where(c < 0, own - r_msb_i, r_msb_i)  # the share of r_msb XOR c_msb
                    tilde.append((c_high if i == 0 else 0) - s_i + b * (mod_mask + 1) - out_mask)
            self._update_pairwise_nonces()
            with tf.device(self.servers[0].device_name):
                pair0 = [y0, tilde[0] + tilde[1]]
            with tf.device(self.servers[1].device_name):
                pair1 = [tilde[0] + tilde[1], y2]
            shares = [[f.tensor(v, encode=False) for v in pair] for pair in (pair0, pair1, [y2_on_2, y0_on_2])]
            t = ABY3PrivateTensor(self, shares, True, ShareType.ARITHMETIC)
            # drop the lift: TF Encrypted's expression, so the constant is encoded as in stock ABY3
            return t - (1 << (bound_bits - (amount + amount)))

    @memoize  # type: ignore[untyped-decorator]
    def msb(self, x: Any) -> Any:
        x = self.lift(x)
        if self._arithmetic_native(x):
            return self._bit_extract_arithmetic(x, x.backing_dtype.nbits - 1)
        return super().msb(x)

    @memoize  # type: ignore[untyped-decorator]
    def bit_extract(self, x: Any, i: int) -> Any:
        if self._arithmetic_native(x):
            return self._bit_extract_arithmetic(x, i)
        return super().bit_extract(x, i)

    @staticmethod
    def _arithmetic_native(x: Any) -> bool:
        # int64 only: the zero sharing and constants below are in the default (int64) factory
        return (isinstance(x, ABY3PrivateTensor) and x.share_type == ShareType.ARITHMETIC
                and x.backing_dtype is int64factory)

    def _bit_extract_arithmetic(self, x: ABY3PrivateTensor, i: int) -> Any:
        """Bit i of an arithmetic sharing, as a boolean sharing: the same bit as TF Encrypted's, one
        round sooner where the input allows it.

        Both add two boolean-shared operands with the carry circuit. Stock ABY3 splits x as
        (x0 + x1) + x2: player 0 boolean-shares x0 + x1 (a round) and x2 is a share players 1 and 2
        hold. Here x is split as (x2 + x0) + x1, the same split with the players relabelled:
        player 2 (who holds x2 and x0) boolean-shares s = x2 + x0, masked by a fresh boolean zero
        sharing, and x1, which players 0 and 1 hold, is boolean share 1 as it is (nobody learns
        anything new: each sees what it saw before under another name). The difference is
        which shares depend on the input. After a truncated multiplication (every Dense/Conv2D
        layer), x0 and x2 are pseudo-random masks from pairwise seeds plus weight shares and only
        x1 depends on the input, so player 2 shares s while the layer is still running, and the
        carry circuit starts as soon as x1 is there: one round fewer before every ReLU/MaxPool.
        """
        xs = x.unwrapped
        boolean = ShareType.BOOLEAN
        with tf.name_scope("bit_extract"):
            mask = self.define_constant(1, apply_scaling=False, factory=x.backing_dtype)
            zero = self.define_constant(np.zeros(x.shape, dtype=np.int64), apply_scaling=False).unwrapped
            a = self._gen_zero_sharing(x.shape, share_type=boolean)
            with tf.device(self.servers[2].device_name):
                s_masked = (xs[2][0] + xs[2][1]) ^ a[2]  # share 2 of s = x2 + x0
            with tf.device(self.servers[0].device_name):
                op1_0 = [a[0], a[1].identity()]
                op2_0 = [zero[0], xs[0][1]]
            with tf.device(self.servers[1].device_name):
                op1_1 = [a[1], s_masked.identity()]
                op2_1 = [xs[1][0], zero[1]]
            with tf.device(self.servers[2].device_name):
                op1_2 = [s_masked, a[0].identity()]
                op2_2 = [zero[2], zero[2]]
            op1 = ABY3PrivateTensor(self, [op1_0, op1_1, op1_2], x.is_scaled, boolean)
            op2 = ABY3PrivateTensor(self, [op2_0, op2_1, op2_2], x.is_scaled, boolean)
            p = ((op1 ^ op2) >> i) & mask
            if i > 0:  # no carry into bit 0 (TF Encrypted's carry() fails for pos=-1)
                carry = self.carry(op1, op2, pos=i - 1)
                p = carry ^ p.cast(carry.backing_dtype)
            z = p.cast(factories[tf.bool])
        z.is_scaled = False
        return z


def connect(config: Config, coordinator: str, protocol: str = "ABY3", job: str = "coordinator") -> FreshABY3:
    """Join the three players as `job` ('coordinator', or 'share' for the share job) at a stable,
    routable address (the mesh authorizes each identity for its own job's device only).

    TFE's own connect_servers() advertises 'localhost:<random port>', which a remote worker
    cannot reach back and which changes on every reconnect.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not supported for serving; use one of {PROTOCOLS}")
    rc = RemoteConfig(config.hostmap)
    tfe.set_config(rc)
    cluster = tf.train.ClusterSpec({"tfe": rc.hosts, job: [coordinator]})
    _connect_to_cluster(cluster, job)
    # TFE memoizes protocol results in one module-level dict that nothing ever clears (its key
    # does not even name the protocol): every earlier connection's private tensors, variables
    # and graphs stayed reachable from it, in this process and, through their remote handles,
    # on the players. A new protocol starts from an empty memo.
    tfe_protocol.nodes.clear()
    prot = FreshABY3()
    tfe.set_protocol(prot)
    return prot


def keep_alive_secs() -> int:
    """Seconds a player keeps this process's eager context after the last RPC it received
    ($TFE_CONTEXT_KEEP_ALIVE_S, default CONTEXT_KEEP_ALIVE_S)."""
    raw = os.environ.get("TFE_CONTEXT_KEEP_ALIVE_S", "")
    try:
        secs = int(raw) if raw else CONTEXT_KEEP_ALIVE_S
    except ValueError:
        raise ValueError(f"TFE_CONTEXT_KEEP_ALIVE_S={raw!r} is not a number of seconds") from None
    if not 2 <= secs <= 3600:
        raise ValueError(f"TFE_CONTEXT_KEEP_ALIVE_S={secs} must lie in 2..3600")
    return secs


def _connect_to_cluster(cluster: tf.train.ClusterSpec, job: str) -> None:
    """tf.config.experimental_connect_to_cluster with a short keep-alive for our context on the players.

    Every process that joins the players (coordinator, share job) makes an eager context on each of
    them, holding its graphs, kernels and variables (about 25 MB per player for the digits MLP with
    two buckets). No process ever closes it: a coordinator that exits, crashes or is replaced
    leaves it behind, and TF's default keeps it for 600 s after the last RPC, so every restart
    within ten minutes added its size to each player for good (measured: +26 MB per coordinator
    restart, linear). While this process lives, TF's keep-alive thread pings the players every
    keep_alive/2 seconds; once it is gone, the players free its context keep_alive seconds later.
    """
    from tensorflow.core.protobuf.tensorflow_server_pb2 import ServerDef
    from tensorflow.python.eager import context

    ctx = context.context()
    server_def = ServerDef(cluster=cluster.as_cluster_def(), job_name=job, task_index=0, protocol="grpc",
                           default_session_config=ctx.config)
    current = ctx.get_server_def()
    if current is None or current.cluster != server_def.cluster or current.job_name != job:
        ctx.set_server_def(server_def, keep_alive_secs=keep_alive_secs())
    else:  # a reconnect of this process (its TF server keeps its port): update the same context
        ctx.update_server_def(server_def, keep_alive_secs=keep_alive_secs())


def devices(prot: FreshABY3) -> list[str]:
    return [s.device_name for s in prot.servers]


def write_pair(prot: FreshABY3, x: ABY3PrivateTensor, path: Any) -> list[tf.Operation]:
    """Player i writes ITS pair (x_i, x_{i+1}) to `path` on its own disk."""
    ops = []
    for i in range(3):
        with tf.device(prot.servers[i].device_name):
            s0, s1 = (s.value for s in x.unwrapped[i])
            ops.append(tf.io.write_file(path, tf.io.serialize_tensor(tf.stack([s0, s1]))))
    return ops


def read_pair(prot: FreshABY3, path: Any, shape: Sequence[int]) -> ABY3PrivateTensor:
    """Each player parses its own file; returns the replicated private tensor."""
    shares: list[list[Any]] = [[None, None] for _ in range(3)]
    for i in range(3):
        with tf.device(prot.servers[i].device_name):
            pair = tf.io.parse_tensor(tf.io.read_file(path), tf.int64)
            pair = tf.ensure_shape(pair, [2] + list(shape))
            shares[i] = [int64factory.tensor(pair[0], encode=False), int64factory.tensor(pair[1], encode=False)]
    return ABY3PrivateTensor(prot, shares, True, ShareType.ARITHMETIC)


def read_raw_pair(prot: FreshABY3, path: Any, shape: Sequence[int]) -> ABY3PrivateTensor:
    """Like read_pair, for raw little-endian int64 files written by a player's ingress."""
    shares: list[list[Any]] = [[None, None] for _ in range(3)]
    for i in range(3):
        with tf.device(prot.servers[i].device_name):
            raw = tf.io.decode_raw(tf.io.read_file(path), tf.int64, little_endian=True)
            pair = tf.reshape(raw, [2] + list(shape))
            shares[i] = [int64factory.tensor(pair[0], encode=False), int64factory.tensor(pair[1], encode=False)]
    return ABY3PrivateTensor(prot, shares, True, ShareType.ARITHMETIC)


def write_public(prot: FreshABY3, text: str, path: str) -> None:
    """Public metadata replicated to every player's disk."""
    for i in range(3):
        with tf.device(prot.servers[i].device_name):
            tf.io.write_file(path, tf.constant(text))


def share_weights(prot: FreshABY3, weights: Sequence[np.ndarray[Any, Any]], prefix: str) -> None:
    """Secret-share plaintext weights; each player writes its own pairs under prefix/."""
    for k, w in enumerate(weights):
        x = prot.define_private_variable(w)
        write_pair(prot, x.read_value(), f"{prefix}/w{k}.tp")


def build_model(manifest: dict[str, Any], batch: int) -> Any:
    """tfe.keras Sequential with the manifest's architecture and a fixed batch size."""
    layers = []
    for pos, spec in enumerate(manifest["layers"]):
        cls = getattr(tfe.keras.layers, spec["kind"])
        bis = [batch] + list(manifest["inputShape"]) if pos == 0 else None
        layers.append(cls(**tfe_layer_args(spec, bis)))
    if not layers or manifest["layers"][0]["kind"] in ("ReLU", "Activation"):
        raise ValueError("the first layer of a private model must have parameters or a shape")
    return tfe.keras.Sequential(layers)


def load_weights(prot: FreshABY3, model: Any, manifest: dict[str, Any], prefix: str) -> None:
    """Assign the players' stored share pairs to the model's private variables, on the players."""
    k = 0
    for layer, spec in zip(model.layers, manifest["layers"]):
        shapes = spec["weightShapes"]
        if not shapes:
            continue
        layer.set_weights([read_pair(prot, f"{prefix}/w{k + j}.tp", s) for j, s in enumerate(shapes)])
        k += len(shapes)
