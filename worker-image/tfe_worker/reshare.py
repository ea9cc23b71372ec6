"""The reshare job: a new share generation from an existing one, without the model (docs/recovery.md).

  --recover serverL  the two other players hand serverL (which lost its disk) a fresh pair:
                     s, t from the pairwise key only they share; new components
                     x_L + s, x_A + t, x_B - s - t (A = L+1, B = L+2)
  --refresh          all three re-randomize with ABY3's zero sharing: y_j = x_j + a_j

Like the share job it joins the players as `share-gN` and only places ops on their devices:
every share and every key stays on the players (tensors move player to player), nothing
here ever holds a share, a key or a weight. The public manifest is read from a player that
holds the source generation and written to all three last, marking the new one complete.

The arithmetic is in pure functions over anything with + and - (numpy arrays in the unit
tests, TF int64 tensors on the players' devices here): ring Z/2^64, wrapping.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any, TypeVar

from tfe_client import wire
from tfe_client.errors import ProtocolError
from tfe_worker.config import Config
from tfe_worker.workers import wait_ready

log = logging.getLogger("tfe_worker.reshare")
EXIT_INVALID = 2
T = TypeVar("T")


# -- the share arithmetic (pure) ----------------------------------------------------------------

def survivors(lost: int) -> tuple[int, int]:
    """(A, B) = (L+1, L+2) mod 3: A holds (x_A, x_B), B holds (x_B, x_L)."""
    if lost not in (0, 1, 2):
        raise ValueError(f"no party {lost}")
    return (lost + 1) % 3, (lost + 2) % 3


def recover_at_a(pair: tuple[T, T], s: T, t: T) -> tuple[T, T]:
    """A's new pair from its (x_A, x_B): (x_A + t, x_B - s - t); it sends the first to L."""
    xa, xb = pair
    return xa + t, xb - s - t  # type: ignore[operator]


def recover_at_b(pair: tuple[T, T], s: T, t: T) -> tuple[T, T]:
    """B's new pair from its (x_B, x_L): (x_B - s - t, x_L + s); it sends the second to L."""
    xb, xl = pair
    return xb - s - t, xl + s  # type: ignore[operator]


def recover_at_lost(from_a: tuple[T, T], from_b: tuple[T, T]) -> tuple[T, T]:
    """L's new pair (x_L', x_A'): B's second component, A's first."""
    return from_b[1], from_a[0]


def recover(pairs: Sequence[tuple[T, T] | None], lost: int, s: T, t: T) -> list[tuple[T, T]]:
    """All three new pairs, by party index, from the survivors' pairs (pairs[lost] is ignored)."""
    a, b = survivors(lost)
    pa, pb = pairs[a], pairs[b]
    if pa is None or pb is None:
        raise ValueError("recovery needs the pairs of both other parties")
    out: list[tuple[T, T] | None] = [None, None, None]
    out[a] = recover_at_a(pa, s, t)
    out[b] = recover_at_b(pb, s, t)
    out[lost] = recover_at_lost(out[a], out[b])  # type: ignore[arg-type]
    return out  # type: ignore[return-value]


def refresh_component(pair: tuple[T, T], alpha: T) -> T:
    """Party j's new own component y_j = x_j + a_j (a: a zero sharing); it sends it to party j-1."""
    return pair[0] + alpha  # type: ignore[no-any-return, operator]


def refresh(pairs: Sequence[tuple[T, T]], alphas: Sequence[T]) -> list[tuple[T, T]]:
    """All three new pairs (y_j, y_{j+1})."""
    y = [refresh_component(pairs[j], alphas[j]) for j in range(3)]
    return [(y[j], y[(j + 1) % 3]) for j in range(3)]


def new_manifest(source: dict[str, Any], generation: int, kind: str, lost: int | None, now: int) -> dict[str, Any]:
    """The manifest of the derived generation: the source's, with its own generation and provenance."""
    out = dict(source, generation=generation, createdAt=now)
    derived: dict[str, Any] = {"from": int(source["generation"]), "kind": kind}
    if lost is not None:
        derived["recovered"] = wire.WORKERS[lost]
    out["derivedFrom"] = derived
    return out


# -- on the players (TF Encrypted) --------------------------------------------------------------

def _read(path: str, shape: Sequence[int]) -> tuple[Any, Any]:
    import tensorflow as tf

    pair = tf.ensure_shape(tf.io.parse_tensor(tf.io.read_file(path), tf.int64), [2, *shape])
    return pair[0], pair[1]


def _write(path: str, pair: tuple[Any, Any]) -> None:
    import tensorflow as tf

    tf.io.write_file(path, tf.io.serialize_tensor(tf.stack(list(pair))))


def recover_tensor(prot: Any, src: str, dst: str, shape: Sequence[int], lost: int, nonce: int) -> None:
    """One weight tensor: src pairs on A and B -> dst pairs on all three (L's from A's and B's)."""
    import tensorflow as tf
    from tf_encrypted.tensor import int64factory

    a, b = survivors(lost)
    dev = [s.device_name for s in prot.servers]
    keys = prot.pairwise_keys()  # keys[j] = (seed_j, seed_j+1); seed_B is on B and A = B-1 only
    shared = {a: keys[a][1], b: keys[b][0]}
    new: dict[int, tuple[Any, Any]] = {}
    for party, step in ((a, recover_at_a), (b, recover_at_b)):
        with tf.device(dev[party]):
            s = int64factory.sample_seeded_uniform(list(shape), seed=shared[party] + nonce).value
            t = int64factory.sample_seeded_uniform(list(shape), seed=shared[party] + nonce + 1).value
            new[party] = step(_read(src, shape), s, t)
            _write(dst, new[party])
    with tf.device(dev[lost]):
        _write(dst, tuple(tf.identity(x) for x in recover_at_lost(new[a], new[b])))


def refresh_tensor(prot: Any, src: str, dst: str, shape: Sequence[int]) -> None:
    """One weight tensor re-randomized on all three with a fresh zero sharing."""
    import tensorflow as tf

    dev = [s.device_name for s in prot.servers]
    from tf_encrypted.tensor import int64factory

    alphas = prot._gen_zero_sharing(list(shape), factory=int64factory)  # a_j on party j's device
    y = []
    for j in range(3):
        with tf.device(dev[j]):
            y.append(refresh_component(_read(src, shape), alphas[j].value))
    for j in range(3):
        with tf.device(dev[j]):
            _write(dst, (tf.identity(y[j]), tf.identity(y[(j + 1) % 3])))


def weight_shapes(manifest: dict[str, Any]) -> list[list[int]]:
    return [list(s) for layer in manifest["layers"] for s in layer["weightShapes"]]


def run(config: Config, name: str, source: int, generation: int, coordinator: str, lost: int | None,
        ready_timeout: float) -> None:
    if generation <= source:
        raise ValueError(f"--generation {generation} must be newer than --from-generation {source}")
    wait_ready(config, ready_timeout)
    import tensorflow as tf

    from tfe_worker import runtime

    t0 = time.monotonic()
    prot = runtime.connect(config, coordinator, "ABY3", job="share")
    src, dst = f"models/{name}/{source}", f"models/{name}/{generation}"
    reader = prot.servers[survivors(lost)[0] if lost is not None else 0].device_name
    with tf.device(reader):
        raw = tf.io.read_file(f"{src}/manifest.json").numpy()
    try:
        man = wire.Manifest.parse(json.loads(raw)).to_json()
    except (ValueError, ProtocolError) as e:
        raise ValueError(f"the manifest of generation {source} is unreadable: {e}") from None
    if man["name"] != name or man["generation"] != source:
        raise ValueError(f"the manifest of generation {source} names {man['name']} generation {man['generation']}")
    shapes = weight_shapes(man)
    for k, shape in enumerate(shapes):
        if lost is None:
            refresh_tensor(prot, f"{src}/w{k}.tp", f"{dst}/w{k}.tp", shape)
        else:
            recover_tensor(prot, f"{src}/w{k}.tp", f"{dst}/w{k}.tp", shape, lost, 2 * k)
    kind = "refresh" if lost is None else "recovery"
    runtime.write_public(prot, json.dumps(new_manifest(man, generation, kind, lost, int(time.time()))),
                         f"{dst}/manifest.json")  # last: marks completion
    what = f"{wire.WORKERS[lost]} recovered from its peers" if lost is not None else "shares refreshed"
    log.info("model %s: generation %d from generation %d (%s) in %.1fs (%d weight tensors)", name, generation,
             source, what, time.monotonic() - t0, len(shapes))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tfe-worker reshare")
    p.add_argument("--config", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--from-generation", type=int, required=True)
    p.add_argument("--generation", type=int, required=True)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--recover", choices=list(wire.WORKERS), help="the worker that lost its shares")
    mode.add_argument("--refresh", action="store_true", help="re-randomize all three pairs")
    p.add_argument("--coordinator-address", required=True, help="host:port the workers can reach this job at")
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--termination-log", default="/dev/termination-log")
    a = p.parse_args(argv)
    lost = None if a.refresh else wire.WORKERS.index(a.recover)
    try:
        run(Config.load(a.config), a.name, a.from_generation, a.generation, a.coordinator_address, lost,
            a.ready_timeout)
    except (ValueError, TimeoutError) as e:
        msg = f"reshare failed: {e}"
        print(msg, file=sys.stderr)
        try:
            with open(a.termination_log, "w") as f:
                f.write(msg[:4000])
        except OSError:
            pass
        return EXIT_INVALID if isinstance(e, ValueError) else 1
    return 0
