"""Fixed point and 2-of-3 replicated sharing: whole-array comparisons."""

import numpy as np
import pytest

from tfe_client import sharing
from tfe_client.errors import InconsistentSharesError
from tfe_client.fixedpoint import DEFAULT, FixedPoint


def test_encode_decode_exact_on_grid() -> None:
    x = np.array([[0.0, 1.0, -1.0, 0.5], [2047.9999847412109375, -2047.5, 1 / 65536, -3 / 65536]])
    enc = DEFAULT.encode(x)
    np.testing.assert_array_equal(enc, np.array([[0, 65536, -65536, 32768],
                                                 [134217727, -134184960, 1, -3]], dtype=np.int64))
    np.testing.assert_array_equal(DEFAULT.decode(enc), x)


def test_encode_rounds_to_nearest() -> None:
    np.testing.assert_array_equal(DEFAULT.encode([0.4 / 65536, 0.6 / 65536, -0.6 / 65536]), [0, 1, -1])


@pytest.mark.parametrize("bad,msg", [
    ([np.nan], "NaN or infinity"),
    ([np.inf], "NaN or infinity"),
    ([2048.0], "outside the fixed-point range"),
    ([-5000.0], "outside the fixed-point range"),
    (np.array(["a"]), "numeric"),
])
def test_encode_rejects(bad: object, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        DEFAULT.encode(bad)  # type: ignore[arg-type]


def test_fixedpoint_dict_roundtrip_and_ring_check() -> None:
    assert FixedPoint.from_dict(DEFAULT.to_dict()) == DEFAULT
    assert DEFAULT.to_dict() == {"ringBits": 64, "fractionalBits": 16, "integralBits": 11}
    with pytest.raises(ValueError, match="ring size"):
        FixedPoint.from_dict({"ringBits": 128, "fractionalBits": 16, "integralBits": 11})


def test_share_layout_and_reconstruct() -> None:
    v = DEFAULT.encode(np.linspace(-100, 100, 24).reshape(4, 6))
    pairs = sharing.share(v)
    assert [p.shape for p in pairs] == [(2, 4, 6)] * 3
    # party i holds (x_i, x_{i+1}): the second share of i is the first share of i+1
    for i, j in sharing.PAIRS:
        np.testing.assert_array_equal(pairs[i][1], pairs[j][0])
    total = sum(p[0].view(np.uint64) for p in pairs).view(np.int64)  # type: ignore[union-attr]
    np.testing.assert_array_equal(total, v)
    np.testing.assert_array_equal(sharing.reconstruct(pairs), v)


def test_any_two_pairs_but_not_one_carry_information() -> None:
    v = DEFAULT.encode(np.ones((1000,)))
    a, b = sharing.share(v), sharing.share(v)
    # one party's view is fresh uniform randomness each time: no element repeats across sharings
    assert not np.any(a[0] == b[0])
    # the three additive shares are not the secret itself
    assert not np.any(a[0][0] == v)


def test_reconstruct_names_the_disagreeing_workers() -> None:
    pairs = sharing.share(DEFAULT.encode(np.zeros((3,))))
    pairs[1] = pairs[1].copy()
    pairs[1][1, 0] += 1  # server1's copy of z2 differs from server2's
    with pytest.raises(InconsistentSharesError, match="z2 differs between server1 and server2") as e:
        sharing.reconstruct(pairs)
    assert e.value.holders == ("server1", "server2")


def test_reconstruct_rejects_wrong_count_and_shapes() -> None:
    pairs = sharing.share(DEFAULT.encode(np.zeros((3,))))
    with pytest.raises(ValueError, match="need 3"):
        sharing.reconstruct(pairs[:2])
    with pytest.raises(ValueError, match="one shape"):
        sharing.reconstruct([pairs[0], pairs[1], pairs[2][:, :2]])
