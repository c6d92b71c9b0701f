"""The word-problem task: right answers, disjoint deterministic splits, many phrasings, real-sandbox traces."""

import datetime
import re

import pytest

from tirl.formats import RETOOL, extract_boxed
from tirl.rewards import grade
from tirl.sandbox import Sandbox
from tirl.tasks import WORD_KINDS, generate_task, task_traces
from tirl.tasks.word_traces import make_word_traces
from tirl.tasks.words import generate_words, in_test_split


def test_answers_are_the_programs_output_and_exact_integers():
    items = generate_words(80, seed=1)
    with Sandbox() as sb:
        results = sb.run_batch([it.code for it in items])
    for it, res in zip(items, results):
        assert res.status == "ok", (it.code, res.stderr)
        assert res.stdout.strip() == it.answer
        assert re.fullmatch(r"-?\d+", it.answer), it.answer


def test_answers_checked_by_hand_for_one_story_of_each_kind():
    by_kind = {}
    for it in generate_words(64, seed=3, level=3):
        by_kind.setdefault(it.kind, it)
    assert set(by_kind) == set(WORD_KINDS)
    it = by_kind["days_between"]
    dates = re.findall(r"(\w+) (\d+), (\d{4})", it.problem)
    months = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
              "November", "December"]
    a, b = (datetime.date(int(y), months.index(m) + 1, int(d)) for m, d, y in dates)
    assert int(it.answer) == (b - a).days
    it = by_kind["leftover"]
    n, k = (int(x) for x in re.findall(r"\d+", it.problem)[:2])
    assert int(it.answer) == n % k


def test_splits_are_disjoint_deterministic_and_large_enough():
    train = generate_task("words", 3000, split="train", seed=0, level=2)
    test = generate_task("words", 300, split="test", seed=0, level=2)
    assert {t.problem for t in train}.isdisjoint(t.problem for t in test)
    assert all(in_test_split(t.problem) for t in test) and not any(in_test_split(t.problem) for t in train)
    assert [t.problem for t in test] == [t.problem for t in generate_task("words", 300, split="test", seed=0, level=2)]
    # another seed's training set never contains a test problem either
    other = generate_task("words", 3000, split="train", seed=7, level=2)
    assert {t.problem for t in other}.isdisjoint(t.problem for t in test)


def test_kinds_are_balanced_and_phrasings_vary():
    items = generate_words(400, seed=0)
    kinds = [it.kind for it in items]
    assert {k: kinds.count(k) for k in WORD_KINDS} == {k: 50 for k in WORD_KINDS}
    # the same kind is asked in several ways: count distinct opening words per kind
    for kind in WORD_KINDS:
        openers = {tuple(it.problem.split()[:3]) for it in items if it.kind == kind}
        assert len(openers) >= 3, kind


def test_level_two_mixes_easy_and_hard_problems():
    items = generate_words(400, seed=0, level=2)
    easy = sum(it.level == 1 for it in items) / len(items)
    assert 0.2 < easy < 0.4
    assert max(int(it.answer) for it in items if it.level == 3) > 10**6
    assert len({it.problem for it in generate_words(2000, level=1)}) == 2000  # the easy space is not tiny


def test_unknown_task_or_kind_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown built-in task 'wrds'"):
        generate_task("wrds", 5, split="train", seed=0, level=2)
    with pytest.raises(ValueError, match="unknown word-problem kind"):
        generate_words(5, kinds=("mul",))


def test_traces_show_the_real_sandbox_output_and_a_real_traceback():
    items = generate_words(24, seed=2)
    with Sandbox() as sb:
        rows = make_word_traces(items, sb.run_batch, style=RETOOL, mix={"code": 1, "text": 1, "fix": 1}, seed=0)
    by_kind = {}
    for r in rows:
        by_kind.setdefault(r["kind"], r)
        response = r["messages"][1]["content"]
        if r["kind"] != "text":
            assert grade(response, r["answer"]) == 1.0
    fix = by_kind["fix"]["messages"][1]["content"]
    assert fix.count("<code>") == 2 and "Error" in fix.split("</interpreter>")[0]
    assert "Traceback" in fix or "SyntaxError" in fix
    code = by_kind["code"]["messages"][1]["content"]
    assert f"<interpreter>\n{by_kind['code']['answer']}\n</interpreter>" in code
    assert "<code>" not in by_kind["text"]["messages"][1]["content"]


def test_text_traces_are_wrong_at_the_error_rate_and_right_otherwise():
    items = generate_words(200, seed=4)
    rows = make_word_traces(items, lambda codes: [_ok(c) for c in codes], mix={"text": 1}, text_error_rate=0.5)
    right = sum(extract_boxed(r["messages"][1]["content"]) == r["answer"] for r in rows)
    assert 70 < right < 130
    exact = make_word_traces(items, lambda codes: [_ok(c) for c in codes], mix={"text": 1}, text_error_rate=0.0)
    assert all(extract_boxed(r["messages"][1]["content"]) == r["answer"] for r in exact)


def test_a_program_disagreeing_with_the_answer_is_refused():
    items = generate_words(3, seed=0)
    with pytest.raises(RuntimeError, match="expected"):
        make_word_traces(items, lambda codes: [_Res("ok", "0\n", "") for _ in codes], mix={"code": 1})


def test_arithmetic_task_is_unchanged_by_the_dispatch():
    from tirl.tasks import generate

    assert generate_task("arithmetic", 20, split="train", seed=0, level=2) == generate(20, seed=0, level=2)
    rows = task_traces("arithmetic", generate(5, seed=0), style=RETOOL, mix={"code": 1}, text_error_rate=0, seed=0)
    assert all("<code>" in r["messages"][1]["content"] for r in rows)


class _Res:
    def __init__(self, status, stdout, stderr):
        self.status, self.stdout, self.stderr = status, stdout, stderr


def _ok(code):
    lines = []
    exec(code, {"print": lambda *a: lines.append(" ".join(map(str, a)))})
    return _Res("ok", "\n".join(lines) + "\n", "")
