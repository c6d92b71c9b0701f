"""The built-in task: deterministic, disjoint splits, correct references, traces in the rollout's format."""

import subprocess
import sys

import pytest

from tirl.formats import RETOOL, TORL, extract_boxed, find_closed_code
from tirl.rewards import grade
from tirl.tasks import KINDS, generate, make_traces


def test_deterministic_under_a_seed():
    a = generate(50, seed=3, kinds=KINDS)
    assert a == generate(50, seed=3, kinds=KINDS)
    assert a != generate(50, seed=4, kinds=KINDS)


def test_splits_are_disjoint_and_items_distinct():
    train = generate(400, split="train", kinds=KINDS)
    test = generate(100, split="test", kinds=KINDS)
    assert len({t.problem for t in train}) == 400
    assert not {t.problem for t in train} & {t.problem for t in test}


def test_reference_answers_are_correct_by_executing_the_python():
    items = generate(40, kinds=KINDS, level=3)
    program = "\n".join(t.code for t in items)
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == [t.answer for t in items]


def test_levels_scale_operands():
    small = generate(5, level=1)[0].problem
    large = generate(5, level=3)[0].problem
    assert len(large) > len(small)
    with pytest.raises(ValueError, match="level"):
        generate(1, level=9)
    with pytest.raises(ValueError, match="unknown task kind"):
        generate(1, kinds=["calculus"])


@pytest.mark.parametrize("style", [RETOOL, TORL], ids=["retool", "torl"])
def test_traces_grade_and_run_as_the_rollout_would(style):
    items = generate(60, kinds=KINDS)
    traces = make_traces(items, style=style, mix={"code": 1, "text": 1, "fix": 1}, text_error_rate=1.0)
    kinds = {t["kind"] for t in traces}
    assert kinds == {"code", "text", "fix"}
    for item, trace in zip(items, traces):
        text = trace["messages"][1]["content"]
        score = grade(text, item.answer)
        if trace["kind"] == "text":
            assert score == -1.0  # error rate 1.0: every text trace states a wrong digit
            assert find_closed_code(text, style) is None and style.stop not in text
        else:
            assert score == 1.0
            # the first block, cut at its stop, is the code the rollout would run
            first_stop = text.index(style.stop) + len(style.stop)
            code = find_closed_code(text[:first_stop], style)
            assert (code == item.code) == (trace["kind"] == "code")
            assert extract_boxed(text) == item.answer


def test_a_check_trace_answers_with_the_interpreters_number_next_to_a_wrong_estimate():
    items = generate(40, split="train", seed=0, level=2, kinds=["mul"])
    traces = make_traces(items, mix={"check": 1.0}, text_error_rate=1.0)
    for item, trace in zip(items, traces):
        text = trace["messages"][1]["content"]
        estimate = text.split(" = ")[1].split("\n")[0]
        assert estimate != item.answer
        assert f"<interpreter>\n{item.answer}\n</interpreter>" in text
        assert text.endswith(f"\\boxed{{{item.answer}}}\n</answer>")


def test_balanced_sft_problems_make_every_answer_length_equally_common():
    import collections

    from tirl.tasks import balance_answer_lengths

    pool = generate(4000, split="train", seed=0, level=2, kinds=["mul"])
    natural = collections.Counter(len(i.answer) for i in pool)
    assert natural[5] < natural[6] / 3  # 3-digit products: 5 digits 17% of the time
    items = balance_answer_lengths(pool, 1000, seed=0)
    assert collections.Counter(len(i.answer) for i in items) == {5: 500, 6: 500}
    assert len({i.id for i in items}) == 1000
    assert items == balance_answer_lengths(pool, 1000, seed=0)
    assert len(balance_answer_lengths(pool[:50], 100, seed=0)) == 50  # a short pool gives what it has


def test_answer_digits_keeps_one_answer_length_on_both_splits_and_changes_nothing_when_unset():
    import pytest

    from tirl.tasks import generate_task

    for split in ("train", "test"):
        items = generate(300, split=split, seed=3, level=2, kinds=["mul"], answer_digits=6)
        assert {len(i.answer) for i in items} == {6} and len({i.problem for i in items}) == 300
    # Unset, the draw is the task's own: the same problems as before the option existed.
    assert [i.problem for i in generate(3, seed=3, level=2, kinds=["mul"])] == [
        "What is 735 * 980?", "What is 799 * 203?", "What is 632 * 988?"]
    with pytest.raises(ValueError, match="has a 9-digit answer"):
        generate(5, seed=0, level=2, kinds=["mul"], answer_digits=9)
    with pytest.raises(ValueError, match="arithmetic task only"):
        generate_task("words", 5, split="train", seed=0, level=1, answer_digits=3)
