"""Grading: +1 for a correct final answer, -1 otherwise, for the answer styles benchmarks use."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tirl.rewards import grade, grade_detailed

# (model's boxed answer, reference, correct?) drawn from MATH-500 / AIME / GSM8K answer styles.
CASES = [
    # integers, AIME 000-999 with leading zeros, commas, signs
    ("45", "45", True),
    ("045", "45", True),
    ("7", "007", True),
    ("1,000", "1000", True),
    ("1000", "1,000", True),
    ("12{,}345", "12345", True),
    ("-3", "-3", True),
    ("3", "-3", False),
    ("44", "45", False),
    ("450", "45", False),
    # fractions and decimals
    ("\\frac{1}{2}", "\\frac12", True),
    ("0.5", "\\frac{1}{2}", True),
    ("\\dfrac{3}{4}", "\\frac{3}{4}", True),
    ("3/4", "\\frac{3}{4}", True),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),
    ("\\frac{1}{3}", "0.33", False),
    ("-\\frac{7}{2}", "-3.5", True),
    ("\\frac{7}{2}", "-\\frac{7}{2}", False),
    ("\\tfrac{5}{8}", "\\frac58", True),
    # radicals and pi
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\sqrt{2}", "\\sqrt{3}", False),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", True),
    ("3\\sqrt{5}", "\\sqrt{45}", True),
    ("2\\pi", "2 \\pi", True),
    ("\\pi/2", "\\frac{\\pi}{2}", True),
    ("\\frac{\\pi}{3}", "\\frac{\\pi}{2}", False),
    ("4+2\\sqrt{3}", "2\\sqrt{3}+4", True),
    # intervals and inequalities
    ("[2,5)", "[2,5)", True),
    ("(-\\infty, 3]", "(-\\infty,3]", True),
    ("[2,5]", "[2,5)", False),
    ("(0,1)\\cup(2,3)", "(0,1) \\cup (2,3)", True),
    # sets and tuples
    ("\\{1,2,3\\}", "\\{3,2,1\\}", True),
    ("\\{1,2\\}", "\\{1,2,3\\}", False),
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("(1,2)", "(2,1)", False),
    ("(2,-1)", "(2, -1)", True),
    # percentages and units
    ("25\\%", "25", True),
    ("25", "25\\%", True),
    ("10\\text{ cm}", "10", True),
    ("90^\\circ", "90", True),
    ("\\$18.90", "18.90", True),
    ("5 \\text{ inches}", "6", False),
    # text answers
    ("\\text{Evelyn}", "\\text{Evelyn}", True),
    ("\\text{(C)}", "\\text{(C)}", True),
    ("\\text{odd}", "\\text{odd}", True),
    ("\\text{even}", "\\text{odd}", False),
    # algebraic expressions and equations
    ("p - q", "p-q", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("x^2+1", "(x+1)^2", False),
    ("y = 2x+3", "y=2x+3", True),
    ("2x+3", "y=2x+3", True),
    ("\\frac{x+1}{2}", "\\frac{1}{2}x+\\frac{1}{2}", True),
    ("a^2 - b^2", "(a-b)(a+b)", True),
    # matrices and vectors
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    ("\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False),
    # scientific notation and large numbers
    ("1.5\\times 10^3", "1500", True),
    ("2^{10}", "1024", True),
    ("3^4", "80", False),
    ("10^{6}", "1000000", True),
    # close but wrong
    ("0.3333", "\\frac{1}{3}", False),
    ("3.14", "\\pi", False),
    ("99", "98", False),
    ("\\frac{1}{2}", "\\frac{1}{4}", False),
    ("-0.5", "0.5", False),
]


@pytest.mark.parametrize("answer,reference,correct", CASES)
def test_grade_table(answer, reference, correct):
    response = f"Some reasoning.\n<answer>\n\\boxed{{{answer}}}\n</answer>"
    g = grade_detailed(response, reference)
    assert g.correct is correct, g
    assert g.score == (1.0 if correct else -1.0)


def test_table_is_large_enough():
    assert len(CASES) >= 60


def test_no_box_is_incorrect_unless_lenient():
    response = "The answer is 42."
    assert grade(response, "42") == -1.0
    g = grade_detailed(response, "42", lenient=True)
    assert g.correct and g.reason == "lenient_match" and g.extracted == "42"


def test_last_box_wins_and_answer_tag_preferred():
    assert grade("first \\boxed{1}, then \\boxed{2}", "2") == 1.0
    assert grade("<answer>\\boxed{3}</answer> afterthought \\boxed{4}", "3") == 1.0


def test_exec_penalty_only_when_code_never_ran():
    r = "\\boxed{5}"
    assert grade(r, "5", code_ran=False, exec_penalty=0.5) == 0.5
    assert grade(r, "6", code_ran=False, exec_penalty=0.5) == -1.5
    assert grade(r, "5", code_ran=True, exec_penalty=0.5) == 1.0
    assert grade(r, "5", code_ran=None, exec_penalty=0.5) == 1.0


@pytest.mark.parametrize(
    "answer",
    ["9^{9^{9^{9^{9}}}}", "{" * 400 + "1" + "}" * 400, "10^{10^{10^{10}}}!"],
)
def test_pathological_answer_does_not_hang(answer):
    g = grade_detailed(f"\\boxed{{{answer}}}", "5", timeout_s=1.0)
    assert not g.correct and g.score == -1.0
    # The grader is still usable afterwards (a stuck worker was replaced, not reused).
    assert grade("\\boxed{\\frac{1}{2}}", "0.5") == 1.0


def test_overlong_answer_is_refused():
    g = grade_detailed("\\boxed{" + "1+" * 2000 + "1}", "4001")
    assert g.reason == "too_long" and not g.correct


def test_grading_off_the_main_thread():
    out = []
    t = threading.Thread(target=lambda: out.append(grade("\\boxed{\\frac{3}{6}}", "1/2")))
    t.start()
    t.join()
    assert out == [1.0]


def test_thousand_gradings_in_four_threads():
    items = [(f"\\boxed{{\\frac{{{i}}}{{7}}}}", f"{i}/7" if i % 3 else f"{i + 1}/7") for i in range(1000)]
    with ThreadPoolExecutor(4) as pool:
        scores = list(pool.map(lambda it: grade(*it), items))
    assert len(scores) == 1000
    assert scores == [1.0 if i % 3 else -1.0 for i in range(1000)]


INTEGER_PAIRS = [("283644", "283644"), ("283645", "283644"), ("007", "7"), ("-0", "0"), ("-5", "5"),
                 ("12345678901234567890", "12345678901234567890"), ("12345678901234567891", "12345678901234567890"),
                 ("0", "00"), ("-12", "-12"), ("1000", "100")]


@pytest.mark.parametrize("answer,reference", INTEGER_PAIRS)
def test_integer_answers_skip_math_verify_and_agree_with_it(answer, reference, monkeypatch):
    """Two integer literals are compared as integers (no grading process), with math-verify's verdict."""
    import tirl.rewards.math_grade as reward

    expected = reward._verify(reference, answer)
    monkeypatch.setattr(reward, "_bounded_verify", lambda *a, **k: pytest.fail("math-verify was asked"))
    g = grade_detailed(f"<answer>\\boxed{{{answer}}}</answer>", reference)
    assert g.correct is expected
    assert g.reason == ("exact" if expected else "mismatch")


def test_non_integer_answers_still_reach_math_verify(monkeypatch):
    import tirl.rewards.math_grade as reward

    asked = []
    real = reward._bounded_verify
    monkeypatch.setattr(reward, "_bounded_verify", lambda *a, **k: asked.append(a) or real(*a, **k))
    assert grade("\\boxed{1000}", "10^{3}") == 1.0
    assert grade("\\boxed{\\frac{2}{4}}", "0.5") == 1.0
    assert grade("\\boxed{51\\%}", "0.5") == -1.0  # a stated number unequal to the reference: math-verify decides
    assert len(asked) == 3


# GSM8K / SVAMP: a numeric reference and the ways a model states that number.
NUMERIC_SAME = [("$1,234.00", "1234"), ("1,234", "1234"), ("18 dollars", "18"), ("\\$18", "18"),
                ("18\\text{ dollars}", "18"), ("\\text{18 dollars}", "18"), ("18.0", "18"), ("$18.50", "18.5"),
                ("2.50", "2.5"), ("1,000,000", "1000000"), ("12{,}345", "12345"), ("18 dollars.", "18"),
                ("-.5", "-0.5"), ("$ 70,000", "70000"), ("72 clips", "72"), ("5 %", "5"), ("\\$0.25", ".25")]
NUMERIC_DIFFERENT = [("18 dollars", "19"), ("1,234", "1.234"), ("12", "1.2"), ("5i", "5"), ("5 apples and 3 pears", "5"),
                     ("1,23", "123"), ("$18.51", "18.5"), ("-18", "18"), ("180 minutes", "3")]


@pytest.mark.parametrize("answer,reference", NUMERIC_SAME)
def test_a_stated_number_equals_a_numeric_reference_without_math_verify(answer, reference, monkeypatch):
    import tirl.rewards.math_grade as reward

    monkeypatch.setattr(reward, "_bounded_verify", lambda *a, **k: pytest.fail("math-verify was asked"))
    g = grade_detailed(f"<answer>\\boxed{{{answer}}}</answer>", reference)
    assert g.correct, g


@pytest.mark.parametrize("answer,reference", NUMERIC_DIFFERENT)
def test_other_numbers_and_non_numbers_are_not_a_numeric_match(answer, reference):
    assert not grade_detailed(f"<answer>\\boxed{{{answer}}}</answer>", reference).correct


def test_grade_all_keeps_order_and_equals_one_by_one():
    """The batch grader (threads over the grading processes) returns each trajectory's own grade."""
    from tirl.formats import RETOOL
    from tirl.rollout import Trajectory
    from tirl.rollout.episodes import grade_all, grade_trajectory

    answers = ["\\frac{1}{2}", "0.5", "7", "x+1", "\\sqrt{4}", "3", "1/3", "12"]
    refs = ["1/2", "1/2", "8", "1+x", "2", "3", "0.25", "12"]
    trajs = [Trajectory([1], model_text=f"<answer>\\boxed{{{a}}}</answer>", group_index=i)
             for i, a in enumerate(answers)]
    together = grade_all(trajs, refs, RETOOL)
    assert [g.correct for g in together] == [True, True, False, True, True, True, False, True]
    assert together == [grade_trajectory(t, r, RETOOL) for t, r in zip(trajs, refs)]


def test_a_fresh_grading_process_is_warm_before_its_first_timed_comparison():
    """The first comparison of a new worker used to pay for its start (an interpreter and math-verify's
    imports, ~0.6 s idle and several seconds on a loaded machine) within `timeout_s`: graded a timeout."""
    import tirl.rewards.math_grade as reward

    reward.shutdown()  # a fresh pool: the next comparison starts a worker
    g = grade_detailed("<answer>\\boxed{0.833333333333}</answer>", "0.8333333333333334", timeout_s=0.5)
    assert g.reason == "match" and g.correct, g
