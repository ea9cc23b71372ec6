"""Fixed-point encoding used by TF Encrypted's ABY3 (fixed64 heuristic).

Values live in the ring Z_2^64 (int64 with wrap-around) scaled by 2^16. TFE keeps 11
integral bits for single-precision values, so inputs must satisfy |x| < 2^11.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class FixedPoint:
    ring_bits: int = 64
    fractional_bits: int = 16
    integral_bits: int = 11

    @property
    def scale(self) -> int:
        return 1 << self.fractional_bits

    @property
    def bound(self) -> float:
        """Exclusive bound on |x| for an input value."""
        return float(1 << self.integral_bits)

    def to_dict(self) -> dict[str, int]:
        return {
            "ringBits": self.ring_bits,
            "fractionalBits": self.fractional_bits,
            "integralBits": self.integral_bits,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FixedPoint:
        fp = cls(int(d["ringBits"]), int(d["fractionalBits"]), int(d["integralBits"]))
        if fp.ring_bits != 64:
            raise ValueError(f"unsupported ring size 2^{fp.ring_bits}: this client speaks Z_2^64")
        return fp

    def check(self, x: npt.ArrayLike) -> FloatArray:
        """Return x as float64 or raise ValueError if it cannot be encoded faithfully."""
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"input must be numeric, got dtype {arr.dtype}")
        a = arr.astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise ValueError("input contains NaN or infinity")
        if a.size and float(np.max(np.abs(a))) >= self.bound:
            raise ValueError(
                f"input value {float(np.max(np.abs(a)))!r} is outside the fixed-point range "
                f"|x| < {self.bound:g} (2^{self.integral_bits}); rescale the input"
            )
        return a

    def encode(self, x: npt.ArrayLike) -> Int64Array:
        a = self.check(x)
        return np.round(a * self.scale).astype(np.int64)

    def decode(self, v: npt.NDArray[Any]) -> FloatArray:
        return np.asarray(v, dtype=np.int64).astype(np.float64) / self.scale


DEFAULT = FixedPoint()
