"""Benchmark scores over k samples per problem: avg@k, pass@k (unbiased), maj@k.

* avg@k — mean correctness over all samples (what ReTool and ToRL report as accuracy).
* pass@k — the unbiased estimator of Chen et al. 2021 (arXiv 2107.03374, eq. 1):
  1 - C(n - c, k) / C(n, k) for n samples of which c are correct, computed as a running product
  so large n does not overflow.
* maj@k — majority vote over the extracted answers of the first k samples. Answers are grouped by a
  light normal form (whitespace, `\\left`/`\\right`, `\\dfrac`/`\\tfrac`, trailing period), not by
  full math equivalence, so `0.5` and `\\frac{1}{2}` count as different votes. Samples without an
  answer do not vote. Ties go to the answer reached first (lowest sample index). The vote is
  correct when the winning group's samples were graded correct.

Pure functions: lists in, floats out.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c correct) is correct."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def avg_at_k(correct: Sequence[bool]) -> float:
    return sum(map(bool, correct)) / len(correct) if correct else 0.0


def vote_key(answer: str) -> str:
    s = re.sub(r"\\left|\\right|\s+", "", answer)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    return s.rstrip(".")


def majority_answer(answers: Sequence[str | None]) -> tuple[str | None, int]:
    """The winning vote key and the index of its first sample (None, -1 when nobody answered)."""
    keys = [vote_key(a) if a is not None and a.strip() else None for a in answers]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None, -1
    best = max(counts.values())
    for i, k in enumerate(keys):  # first to reach the top count wins ties
        if k is not None and counts[k] == best:
            return k, i
    raise AssertionError("unreachable")


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int | None = None) -> bool:
    """Whether the majority answer among the first k samples is a correct one."""
    k = len(answers) if k is None else k
    _, first = majority_answer(answers[:k])
    return first >= 0 and bool(correct[first])
