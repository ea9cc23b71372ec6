"""2-of-3 replicated secret sharing over Z_2^64, in ABY3's layout.

x = x0 + x1 + x2 (mod 2^64); party i holds the pair (x_i, x_{i+1 mod 3}).
A pair is an int64 array of shape (2, *x.shape).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from tfe_client.errors import InconsistentSharesError

Int64Array = npt.NDArray[np.int64]
PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (1, 2), (2, 0))
PARTIES = 3


def random_ring(shape: tuple[int, ...]) -> npt.NDArray[np.uint64]:
    """Uniform elements of Z_2^64 from the OS CSPRNG."""
    n = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(os.urandom(8 * n), dtype=np.uint64).reshape(shape).copy()


def share(v: Int64Array) -> list[Int64Array]:
    """Split ring elements v into the three parties' pairs."""
    u = np.ascontiguousarray(v, dtype=np.int64).view(np.uint64)
    s0 = random_ring(u.shape)
    s1 = random_ring(u.shape)
    s2 = u - s0 - s1  # uint64 arithmetic wraps mod 2^64
    s = [a.view(np.int64) for a in (s0, s1, s2)]
    return [np.stack([s[i], s[j]]) for i, j in PAIRS]


def reconstruct(pairs: Sequence[Int64Array], names: Sequence[str] = ("server0", "server1", "server2")) -> Int64Array:
    """Rebuild the ring elements from all three pairs, checking that replicas agree.

    Party i's second share must equal party (i+1)'s first share; a mismatch means a worker
    is faulty or malicious, and raises InconsistentSharesError naming both workers.
    """
    if len(pairs) != PARTIES:
        raise ValueError(f"need {PARTIES} share pairs, got {len(pairs)}")
    shapes = {p.shape for p in pairs}
    if len(shapes) != 1 or pairs[0].shape[0] != 2:
        raise ValueError(f"share pairs must have one shape (2, ...), got {sorted(map(str, shapes))}")
    z = [np.asarray(pairs[i][0], dtype=np.int64) for i in range(PARTIES)]
    for i, j in PAIRS:
        if not np.array_equal(pairs[i][1], z[j]):
            raise InconsistentSharesError(j, (names[i], names[j]))
    total = z[0].view(np.uint64) + z[1].view(np.uint64) + z[2].view(np.uint64)
    return total.view(np.int64)
