"""avg@k, pass@k and maj@k against values computed by hand."""

import itertools
import math

import pytest

from tirl.analysis.scores import avg_at_k, maj_at_k, majority_answer, pass_at_k


def test_pass_at_k_hand_values():
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # n=5, c=2, k=1: the plain success rate 2/5
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    # n=10, c=3, k=5: 1 - C(7,5)/C(10,5) = 1 - 21/252
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 1, 4) == 1.0  # n - c < k: every draw of 4 contains the correct one


def test_pass_at_k_matches_enumeration():
    for n, c, k in [(6, 2, 3), (7, 1, 2), (8, 5, 4)]:
        samples = [True] * c + [False] * (n - c)
        draws = list(itertools.combinations(samples, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(d) for d in draws) / len(draws))


def test_pass_at_k_large_n_is_stable():
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert 0.0 <= pass_at_k(10_000, 7, 100) <= 1.0
    assert pass_at_k(10_000, 7, 100) == pytest.approx(1 - math.comb(9993, 100) / math.comb(10_000, 100))


def test_pass_at_k_refuses_impossible_inputs():
    with pytest.raises(ValueError, match="at least 8"):
        pass_at_k(4, 1, 8)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_avg_at_k():
    assert avg_at_k([True, False, True, True]) == 0.75
    assert avg_at_k([]) == 0.0


def test_majority_vote_and_ties():
    # "12" twice beats "13" once; \dfrac and \frac are the same vote.
    assert majority_answer(["12", "13", " 12 "]) == ("12", 0)
    assert majority_answer(["\\dfrac{1}{2}", "3", "\\frac{1}{2}"])[0] == "\\frac{1}{2}"
    # tie 1-1: the answer reached first wins
    assert majority_answer(["7", "8"]) == ("7", 0)
    assert majority_answer([None, "", None]) == (None, -1)


def test_maj_at_k_uses_the_first_k_samples():
    answers = ["5", "6", "6", "5", "5"]
    correct = [True, False, False, True, True]
    assert maj_at_k(answers, correct, k=3) is False  # "6" wins among the first three
    assert maj_at_k(answers, correct) is True  # "5" wins 3-2 over all five
    assert maj_at_k([None, None], [False, False]) is False
