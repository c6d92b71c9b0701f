"""The difference between two models scored on the same problems, with a paired 95% interval.

Each problem gives both models a score in [0, 1] (greedy: 0 or 1; avg@k: the share of k samples
correct). The difference of the means is the mean of the per-problem differences d_i = a_i - b_i, and
its interval is mean(d) +- 1.96 * sd(d) / sqrt(n): pairing removes the problems' own difficulty from the
noise, so two models that agree on most problems get a tight interval (for 0/1 scores this is the
normal approximation behind McNemar's test). Pure functions: lists in, floats out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

Z95 = 1.959963984540054


@dataclass(frozen=True)
class PairedDifference:
    diff: float
    lo: float
    hi: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def points(self) -> str:
        """'+12.3 [+9.1, +15.5]' in percentage points."""
        return f"{100 * self.diff:+.1f} [{100 * self.lo:+.1f}, {100 * self.hi:+.1f}]"


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """mean(a) - mean(b) over paired scores, with its 95% interval (see the module)."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same problems: {len(a)} against {len(b)}")
    if len(a) < 2:
        raise ValueError(f"a paired interval needs at least 2 problems, got {len(a)}")
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = Z95 * sd / math.sqrt(n)
    return PairedDifference(mean, mean - half, mean + half, n)


def paired_by_id(a: Mapping[str, float], b: Mapping[str, float]) -> PairedDifference:
    """`paired_difference` over the problems both score maps hold; refuses maps of different problems."""
    if a.keys() != b.keys():
        only = sorted(a.keys() ^ b.keys())
        raise ValueError(f"the two evaluations scored different problems ({len(only)} differ, e.g. {only[0]!r})")
    ids = sorted(a)
    return paired_difference([a[i] for i in ids], [b[i] for i in ids])
