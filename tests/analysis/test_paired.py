import math

import pytest

from tirl.analysis.paired import paired_by_id, paired_difference


def test_pairing_removes_the_problems_own_difficulty():
    # b solves 50 of 100; a solves the same 50 and 10 more: a clear +10 points, never a tie
    b = [1.0] * 50 + [0.0] * 50
    a = [1.0] * 60 + [0.0] * 40
    p = paired_difference(a, b)
    assert p.diff == pytest.approx(0.10)
    half = 1.959963984540054 * math.sqrt(0.1 * 0.9 * 100 / 99) / 10  # sd of ten 1s among 100
    assert (p.lo, p.hi) == pytest.approx((0.10 - half, 0.10 + half))
    assert p.excludes_zero and p.points() == "+10.0 [+4.1, +15.9]"


def test_disagreements_both_ways_leave_zero_inside():
    a = [1.0, 0.0] * 20
    b = [0.0, 1.0] * 20
    p = paired_difference(a, b)
    assert p.diff == 0 and p.lo < 0 < p.hi and not p.excludes_zero


def test_avg_at_k_scores_and_identical_models():
    p = paired_difference([0.25, 0.5, 1.0], [0.25, 0.5, 1.0])
    assert (p.diff, p.lo, p.hi) == (0, 0, 0)


def test_mismatched_problems_are_refused():
    with pytest.raises(ValueError, match="same problems: 2 against 3"):
        paired_difference([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="different problems"):
        paired_by_id({"a": 1.0, "b": 0.0}, {"a": 1.0, "c": 0.0})
    assert paired_by_id({"x": 1.0, "y": 0.0, "z": 1.0}, {"z": 0.0, "y": 0.0, "x": 1.0}).diff == pytest.approx(1 / 3)
