"""The share arithmetic of recovery and refresh (docs/recovery.md), on numpy int64 (ring Z/2^64)."""

import numpy as np
import pytest

from tfe_worker import reshare

SHAPE = (4, 3)


def ring(rng, shape=SHAPE):
    return rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=shape, dtype=np.int64,
                        endpoint=True)


def sharing(rng, secret):
    x0, x1 = ring(rng), ring(rng)
    x2 = secret - x0 - x1
    comps = [x0, x1, x2]
    return [(comps[i], comps[(i + 1) % 3]) for i in range(3)]


def reconstruct(pairs):
    return pairs[0][0] + pairs[1][0] + pairs[2][0]


def consistent(pairs):
    return all(np.array_equal(pairs[i][1], pairs[(i + 1) % 3][0]) for i in range(3))


@pytest.fixture()
def rng():
    return np.random.default_rng(7)


def test_survivors_are_the_two_others():
    assert reshare.survivors(0) == (1, 2)
    assert reshare.survivors(1) == (2, 0)
    assert reshare.survivors(2) == (0, 1)
    with pytest.raises(ValueError):
        reshare.survivors(3)


@pytest.mark.parametrize("lost", [0, 1, 2])
def test_recovery_keeps_the_secret_exactly_and_gives_fresh_consistent_pairs(rng, lost):
    secret = ring(rng)
    old = sharing(rng, secret)
    s, t = ring(rng), ring(rng)
    damaged = [p if i != lost else None for i, p in enumerate(old)]
    new = reshare.recover(damaged, lost, s, t)
    assert consistent(new)
    assert np.array_equal(reconstruct(new), secret)  # a zero sharing added: exact, no truncation
    for i in range(3):  # every party's pair changed (the survivors' too)
        assert not np.array_equal(new[i][0], old[i][0]) and not np.array_equal(new[i][1], old[i][1])


@pytest.mark.parametrize("lost", [0, 1, 2])
def test_recovered_pair_is_the_old_one_masked_by_s_and_t(rng, lost):
    """L gets x_L + s and x_A + t: without s, t (the survivors' seed) it says nothing about the old pair,
    and with its old pair it yields s and t, never the third component."""
    old = sharing(rng, ring(rng))
    s, t = ring(rng), ring(rng)
    a, _ = reshare.survivors(lost)
    new = reshare.recover([p if i != lost else None for i, p in enumerate(old)], lost, s, t)
    assert np.array_equal(new[lost][0] - old[lost][0], s)
    assert np.array_equal(new[lost][1] - old[lost][1], t)
    assert np.array_equal(new[a][1] - old[a][1], -s - t)


def test_recovery_needs_both_survivors(rng):
    old = sharing(rng, ring(rng))
    with pytest.raises(ValueError):
        reshare.recover([old[0], None, None], 1, ring(rng), ring(rng))


def test_refresh_with_a_zero_sharing(rng):
    secret = ring(rng)
    old = sharing(rng, secret)
    f = [ring(rng) for _ in range(3)]  # ABY3: a_j = F(seed_j) - F(seed_j+1)
    alphas = [f[j] - f[(j + 1) % 3] for j in range(3)]
    new = reshare.refresh(old, alphas)
    assert consistent(new)
    assert np.array_equal(reconstruct(new), secret)
    for i in range(3):
        assert not np.array_equal(new[i][0], old[i][0])


def test_refresh_with_non_zero_alphas_changes_the_secret(rng):
    """The test above can fail: alphas that do not sum to zero change what the pairs hold."""
    secret = ring(rng)
    new = reshare.refresh(sharing(rng, secret), [ring(rng) for _ in range(3)])
    assert not np.array_equal(reconstruct(new), secret)


def test_new_manifest_records_where_it_came_from():
    src = {"name": "m", "generation": 3, "createdAt": 1, "layers": []}
    out = reshare.new_manifest(src, 5, "recovery", 1, 99)
    assert out["generation"] == 5 and out["createdAt"] == 99
    assert out["derivedFrom"] == {"from": 3, "kind": "recovery", "recovered": "server1"}
    assert src["generation"] == 3  # the source is not modified
    assert reshare.new_manifest(src, 4, "refresh", None, 1)["derivedFrom"] == {"from": 3, "kind": "refresh"}


def test_weight_shapes_in_order():
    man = {"layers": [{"weightShapes": [[64, 8], [8]]}, {"weightShapes": []}, {"weightShapes": [[8, 10], [10]]}]}
    assert reshare.weight_shapes(man) == [[64, 8], [8], [8, 10], [10]]
