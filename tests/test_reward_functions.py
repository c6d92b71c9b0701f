"""Reward functions: loading by module or file, composing with the math grade, errors that name the culprit."""

import re
import sys
from types import SimpleNamespace

import pytest
from fixtures_models import tiny_model_dir, tiny_tokenizer  # noqa: F401 (fixtures)

from tirl.config import UserError
from tirl.rewards import Grade, RewardConfig, RewardFunctionError, Rewards, load_reward_function

MATH_RIGHT = Grade(score=1.0, correct=True, extracted="42", reference="42", reason="match")
MATH_WRONG = Grade(score=-1.0, correct=False, extracted="41", reference="42", reason="mismatch")
PROBLEM = SimpleNamespace(id="p-7", problem="6 * 7?", answer="42", extra={"data_source": "toy"})
TRAJ = SimpleNamespace(tool_calls=[SimpleNamespace(status="ok")], model_text="", infra_failed=False)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "from tirl.reward import Grade\n"  # the old import path, as users wrote it
        "def tool_bonus(problem, response, trajectory, reference):\n"
        "    return 0.25 if trajectory.tool_calls else 0.0\n"
        "def judge(problem, response, trajectory, reference):\n"
        "    ok = reference in response\n"
        "    return Grade(score=2.0 if ok else 0.0, correct=ok, extracted=None, reference=reference, reason='judge')\n"
        "def boom(problem, response, trajectory, reference):\n"
        "    raise KeyError('difficulty')\n"
        "def nan(problem, response, trajectory, reference):\n"
        "    return float('nan')\n"
        "def text(problem, response, trajectory, reference):\n"
        "    return 'good'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("my_rewards", None)


def score(cfg, problem, response, traj, grade):
    """The rewards of one sample whose model wrote `response`."""
    traj = SimpleNamespace(**{**vars(traj), "model_text": response})
    rewards = Rewards.of(cfg)
    return grade if rewards is None else rewards([problem], [traj], [grade])[0]


def test_add_shapes_the_math_score_and_keeps_its_verdict(user_module):
    cfg = RewardConfig(function="my_rewards:tool_bonus")
    g = score(cfg, PROBLEM, "the answer is 42", TRAJ, MATH_WRONG)
    assert (g.score, g.correct, g.reason) == (-0.75, False, "mismatch")
    assert score(cfg, PROBLEM, "x", SimpleNamespace(tool_calls=[], infra_failed=False), MATH_RIGHT).score == 1.0


def test_replace_uses_the_user_grade_or_its_sign(user_module):
    g = score(RewardConfig(function="my_rewards:judge", combine="replace"), PROBLEM, "it is 42", TRAJ, MATH_WRONG)
    assert (g.score, g.correct, g.reason) == (2.0, True, "judge")
    g = score(RewardConfig(function="my_rewards:tool_bonus", combine="replace"), PROBLEM, "", TRAJ, MATH_WRONG)
    assert (g.score, g.correct, g.reason) == (0.25, True, "custom")


def test_a_file_path_loads_without_being_importable(tmp_path):
    (tmp_path / "r.py").write_text("def f(problem, response, trajectory, reference):\n    return len(problem.id)\n")
    assert score(RewardConfig(function=f"{tmp_path}/r.py:f"), PROBLEM, "", TRAJ, MATH_RIGHT).score == 4.0


def test_no_function_is_the_math_grade_itself():
    assert score(RewardConfig(), PROBLEM, "", TRAJ, MATH_RIGHT) is MATH_RIGHT


@pytest.mark.parametrize("fn,needle", [
    ("my_rewards:boom", "reward function boom failed on problem p-7: KeyError: 'difficulty'"),
    ("my_rewards:nan", "returned nan on problem p-7: expected a finite number or a Grade"),
    ("my_rewards:text", "returned 'good' on problem p-7"),
])
def test_errors_in_user_code_name_the_function_and_the_problem(user_module, fn, needle):
    with pytest.raises(RewardFunctionError) as e:
        score(RewardConfig(function=fn), PROBLEM, "", TRAJ, MATH_RIGHT)
    assert needle in str(e.value)


@pytest.mark.parametrize("spec,needle", [
    ("no_such_module_xyz:f", "importing no_such_module_xyz failed: ModuleNotFoundError"),
    ("my_rewards:absent", "my_rewards has no callable 'absent'"),
    ("/nowhere/r.py:f", "no such file /nowhere/r.py"),
])
def test_loading_errors_say_what_is_missing(user_module, spec, needle):
    with pytest.raises(RewardFunctionError, match=needle):
        load_reward_function(spec)


def test_config_refuses_unknown_combine_and_a_spec_without_callable():
    with pytest.raises(ValueError, match="reward.combine must be one of add, replace"):
        RewardConfig(combine="mul").validate()
    with pytest.raises(ValueError, match="module.path:callable"):
        RewardConfig(function="my_rewards").validate()


def test_an_answer_only_the_interpreter_printed_scores_nothing(tmp_path, tiny_tokenizer):  # noqa: F811
    """The model writes no \\boxed; its code's output does. The built-in grade and a format reward that
    reads who wrote what (`trajectory.segments`) both give it nothing; the same answer written by the
    model itself earns both."""
    from helpers_rollout import FixedResults, Result
    from test_rollout import scripted

    from tirl.data import Problem
    from tirl.formats import RETOOL
    from tirl.rollout import RolloutConfig
    from tirl.rollout.episodes import play

    (tmp_path / "fmt.py").write_text(
        "def boxed_format(problem, response, trajectory, reference):\n"
        "    model = ''.join(text for who, text in trajectory.segments if who == 'model')\n"
        "    assert model == response  # the model's runs are exactly the response it is graded on\n"
        "    return 0.5 if '\\\\boxed{' in model else 0.0\n")
    printed = "<answer>\n\\boxed{42}\n</answer>"
    code = "<code>\n```python\nprint(answer)\n```\n</code>"
    texts = [[code + "Done.", code + "So:\n" + printed]]  # hack: only the interpreter boxed it; honest
    sandbox = FixedResults(Result("ok", printed + "\n"))
    reward = Rewards(RewardConfig(function=f"{tmp_path}/fmt.py:boxed_format"))
    trajs, grades, _ = play(scripted(tiny_tokenizer, texts), tiny_tokenizer, sandbox, [Problem("p", "6*7?", "42")],
                            RETOOL, RolloutConfig(n=2, max_new_tokens=200, max_tool_calls=1), reward_fn=reward)
    hack, honest = trajs
    assert [who for who, _ in hack.segments] == ["model", "interpreter", "model"]
    assert "\\boxed{42}" in hack.segments[1][1] and "\\boxed{42}" not in hack.model_text
    assert (grades[0].correct, grades[0].reason, grades[0].score) == (False, "no_answer", -1.0)  # math -1, format 0
    assert (grades[1].correct, grades[1].score) == (True, 1.5)  # math +1, format +0.5


# --- several functions, weighted; the three signatures ------------------------------------------------
def _sample(pid, text, failed=False):
    return (SimpleNamespace(id=pid, problem=f"question {pid}", answer="42", extra={"level": len(pid)},
                            data_source="toy"),
            SimpleNamespace(tool_calls=[], model_text=text, infra_failed=failed))


@pytest.fixture
def funcs(tmp_path, monkeypatch):
    (tmp_path / "several.py").write_text(
        "calls = []\n"
        "def short(prompts, completions, **kwargs):\n"
        "    calls.append(sorted(kwargs))\n"
        "    return [-len(c) / 10 for c in completions]\n"
        "def by_level(prompts, completions, level):\n"
        "    return [float(x) for x in level]\n"
        "def maybe(prompts, completions, **kwargs):\n"
        "    return [None if c == 'skip' else 1.0 for c in completions]\n"
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    return {'score': 2.0 if ground_truth in solution_str else 0.0}\n"
        "def too_few(prompts, completions, **kwargs):\n"
        "    return [1.0]\n"
        "def text(prompts, completions, **kwargs):\n"
        "    return ['x'] * len(completions)\n"
        "def odd(a, b):\n"
        "    return 1.0\n")
    monkeypatch.chdir(tmp_path)  # `several:short`: a module in the working directory, no PYTHONPATH
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield tmp_path
    sys.modules.pop("several", None)


def _entries(*pairs):
    return RewardConfig(functions=[{"function": f, "weight": w} for f, w in pairs])


def test_weighted_functions_sum_and_each_value_is_kept(funcs):
    rewards = Rewards(_entries(("correct", 1.0), ("several:short", 0.5), ("several:by_level", 2.0),
                               ("several:compute_score", 0.25)))
    assert [t.style for t in rewards.terms] == ["correct", "batch", "batch", "verl"]
    (p1, t1), (p2, t2) = _sample("a", "it is 42"), _sample("bbb", "no idea")
    g1, g2 = rewards([p1, p2], [t1, t2], [MATH_RIGHT, MATH_WRONG])
    assert g1.rewards == {"correct": 1.0, "short": -0.8, "by_level": 1.0, "compute_score": 2.0}
    assert g1.score == pytest.approx(1.0 - 0.4 + 2.0 + 0.5) and g1.correct and g1.reason == "match"
    assert g2.rewards == {"correct": -1.0, "short": -0.7, "by_level": 3.0, "compute_score": 0.0}
    assert g2.score == pytest.approx(-1.0 - 0.35 + 6.0) and not g2.correct
    import several

    assert several.calls == [["answer", "level", "trajectories"]]  # the columns by name, prompts/completions apart


def test_dropping_correct_leaves_the_verdict_but_not_the_score(funcs):
    (p, t), = [_sample("a", "it is 42")]
    (g,) = Rewards(_entries(("several:short", 1.0)))([p], [t], [MATH_RIGHT])
    assert g.score == pytest.approx(-0.8) and g.correct and g.rewards == {"short": -0.8}


def test_a_batched_none_is_zero_in_the_sum_and_left_out_of_the_mean(funcs):
    from tirl.rewards import component_means

    (p1, t1), (p2, t2) = _sample("a", "skip"), _sample("b", "ok")
    g1, g2 = Rewards(_entries(("correct", 1.0), ("several:maybe", 3.0)))([p1, p2], [t1, t2], [MATH_RIGHT, MATH_RIGHT])
    assert (g1.score, g1.rewards["maybe"], g2.score) == (1.0, None, 4.0)
    assert component_means([g1.rewards, g2.rewards]) == {"correct": 1.0, "maybe": 1.0}


def test_a_sample_the_sandbox_failed_reaches_no_function(funcs):
    from tirl.rewards import INFRA_FAILED

    void = Grade(0.0, False, None, "42", INFRA_FAILED)
    (p1, t1), (p2, t2) = _sample("a", "it is 42", failed=True), _sample("b", "it is 42")
    g1, g2 = Rewards(_entries(("correct", 1.0), ("several:too_few", 1.0)))([p1, p2], [t1, t2], [void, MATH_RIGHT])
    assert g1 is void and g2.score == 2.0  # too_few's one value is right for the one live sample


@pytest.mark.parametrize("spec,needle", [
    ("several:too_few", "reward function too_few returned 1 values for 2 completions"),
    ("several:text", "reward function text returned 'x' on problem a: expected a finite number or None"),
    ("several:odd", "reward function odd: takes (a, b); expected (problem, response, trajectory, reference)"),
])
def test_a_function_that_returns_no_reward_is_named_in_one_line(funcs, spec, needle):
    with pytest.raises(RewardFunctionError) as e:
        rewards = Rewards(_entries((spec, 1.0)))
        rewards(*zip(*[_sample("a", "x"), _sample("b", "y")]), [MATH_RIGHT, MATH_RIGHT])
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("cfg,needle", [
    (RewardConfig(function="m:f", functions=[{"function": "correct"}]), "set reward.function or reward.functions"),
    (_entries(("correct", 1.0), ("a.py:correct", 1.0)), "reward.functions[0] and [1] are both named 'correct'"),
    (_entries(("m:mean", 1.0)), "the name 'mean' is a figure the trainer logs"),
    (_entries(("nocolon", 1.0)), "reward.functions[0].function must be 'correct'"),
    (_entries(("correct", float("nan"))), "reward.functions[0].weight must be a finite number"),
])
def test_the_reward_config_is_refused_before_anything_loads(cfg, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        cfg.validate()


def test_a_python_callable_missing_from_the_hand_over_is_named():
    with pytest.raises(RewardFunctionError, match="python:short' was handed over from Python"):
        Rewards(_entries(("python:short", 1.0)))
    rewards = Rewards(_entries(("python:short", 2.0)), {"short": lambda prompts, completions: [1.0] * len(completions)})
    assert rewards(*zip(_sample("a", "x")), [MATH_RIGHT])[0].score == 2.0


def test_a_built_in_task_problem_without_columns_reaches_a_batched_function(funcs):
    """The held-out split of `data.test: builtin` holds task items, with no `extra` columns (the README's
    snippet trains on rows and evaluates on those)."""
    item = SimpleNamespace(id="t-0", problem="12 * 34?", answer="408")
    (g,) = Rewards(_entries(("several:short", 1.0), ("several:compute_score", 1.0)))(
        [item], [SimpleNamespace(tool_calls=[], model_text="408", infra_failed=False)], [MATH_RIGHT])
    assert g.rewards == {"short": -0.3, "compute_score": 0.0}
