"""DAPO's dynamic sampling and overlong handling; user rewards reaching the trainer."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tirl.rewards import Grade
from tirl.rollout.episodes import overlong_penalty, with_overlong_penalty
from tirl.train.dapo import dynamic_sample, informative

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_overlong_penalty_hand_values():
    # L_max 100, L_cache 20: free up to 80, then linear to -1 at 100, -1 beyond
    assert [overlong_penalty(n, 100, 20) for n in (10, 80, 85, 90, 100, 130)] == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    assert overlong_penalty(100, 100, 0) == 0.0  # off
    g = Grade(1.0, True, "4", "4", "match")
    assert with_overlong_penalty(g, 90, 100, 20).score == 0.5
    assert with_overlong_penalty(g, 90, 100, 20).correct  # shaping, not a verdict


def test_informative_groups():
    assert informative([1, 1, -1, 1, -1, -1], 2) == [False, True, False]


def _grades(scores):
    return [Grade(s, s > 0, None, "x", "match" if s > 0 else "mismatch") for s in scores]


class FakePlay:
    """Odd problems get mixed rewards, even ones all-wrong; records what was played."""

    def __init__(self, n):
        self.n, self.calls = n, []

    def __call__(self, problems, round_):
        self.calls.append(([p.id for p in problems], round_))
        trajs = [SimpleNamespace(group_index=i, p=p.id) for i, p in enumerate(problems) for _ in range(self.n)]
        scores = [s for p in problems for s in ((1.0, -1.0) if p.id % 2 else (-1.0, -1.0))]
        return trajs, _grades(scores), {"reward/mean": sum(scores) / len(scores), "rollout/gen_time_s": 1.0}


def _stream():
    items = iter(SimpleNamespace(id=i) for i in range(100))
    return lambda k: [next(items) for _ in range(k)]


def test_dynamic_sampling_refills_the_batch_with_informative_groups():
    play = FakePlay(n=2)
    problems, trajs, grades, metrics, played = dynamic_sample(play, _stream(), k=3, n=2, max_rounds=4)
    assert [p.id for p in problems] == [1, 3, 5]
    assert play.calls == [([0, 1, 2], 0), ([3, 4, 5], 1)]
    assert [t.p for t in trajs] == [1, 1, 3, 3, 5, 5]
    assert [t.group_index for t in trajs] == [0, 0, 1, 1, 2, 2]  # renumbered for the batch
    assert [g.score for g in grades] == [1.0, -1.0] * 3
    assert [p.id for p, _ in played] == [0, 1, 2, 3, 4, 5]  # every sampled group, for rewards.jsonl
    assert metrics["dapo/rounds"] == 2 and metrics["dapo/groups_kept"] == 3 and metrics["dapo/groups_short"] == 0
    assert metrics["dapo/informative_ratio"] == pytest.approx(3 / 6)
    assert metrics["rollout/gen_time_s"] == 2.0  # durations add up over rounds
    assert metrics["reward/mean"] == pytest.approx((-2 / 3 + -1 / 3) / 2)  # rates: mean over groups


def test_when_rounds_run_out_informative_groups_come_first_and_all_equal_ones_fill_up():
    play = FakePlay(n=2)
    problems, _, _, metrics, _ = dynamic_sample(play, _stream(), k=4, n=2, max_rounds=2)
    # rounds [0..3], [4..7]: informative 1, 3, 5, 7 -> enough after round 2
    assert [p.id for p in problems] == [1, 3, 5, 7] and metrics["dapo/groups_short"] == 0
    problems, _, _, metrics, _ = dynamic_sample(FakePlay(n=2), _stream(), k=4, n=2, max_rounds=1)
    assert [p.id for p in problems] == [0, 1, 2, 3] and metrics["dapo/groups_short"] == 2


def test_dynamic_sampling_stops_after_max_rounds_and_says_how_short_it_is():
    play = FakePlay(n=2)
    evens = iter(SimpleNamespace(id=2 * i) for i in range(100))
    problems, trajs, _, metrics, played = dynamic_sample(play, lambda k: [next(evens) for _ in range(k)],
                                                         k=4, n=2, max_rounds=3)
    assert [p.id for p in problems] == [0, 2, 4, 6]  # all-equal groups fill the batch: no gradient, but samples
    assert len(trajs) == 8 and len(play.calls) == 3 and len(played) == 12
    assert metrics["dapo/groups_short"] == 4 and metrics["dapo/informative_ratio"] == 0.0


# --- through tirl train --------------------------------------------------------------------------------------
def _tirl(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tirl.cli", *args], capture_output=True, text=True,
                          timeout=600, env=os.environ.copy(), cwd=cwd)


def _metrics(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_dynamic_sampling_in_a_real_run_plays_every_round_when_no_group_differs(tmp_path):
    # A random tiny model is always wrong: every group is all-equal, so each step plays every round.
    run = tmp_path / "run"
    r = _tirl("train", str(CONFIGS / "smoke_grpo.yaml"), "trainer.steps=2", "rollout.max_new_tokens=12",
              "algorithm.dynamic_sampling=true", "algorithm.dynamic_sampling_max_rounds=3", "data.test=''",
              "--run-dir", str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _metrics(run)
    assert [m["dapo/rounds"] for m in rows] == [3.0, 3.0]
    assert all(m["dapo/groups_short"] == 2.0 for m in rows)  # prompts_per_step of smoke_grpo
    rewards = [json.loads(ln) for ln in (run / "rewards.jsonl").read_text().splitlines()]
    assert len(rewards) == 2 * 3 * 2  # steps x rounds x prompts: every sampled group is recorded
    assert [r["epoch"] for r in rewards] == [0] * 12  # 12 of smoke_grpo's 200 problems


def test_overlong_responses_are_penalised_and_filtered_in_a_real_run(tmp_path):
    run = tmp_path / "run"
    r = _tirl("train", str(CONFIGS / "smoke_grpo.yaml"), "trainer.steps=2", "rollout.max_new_tokens=12",
              "algorithm.overlong_buffer=4", "algorithm.overlong_filter=true", "data.test=''",
              "--run-dir", str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    samples = [json.loads(ln) for ln in (run / "samples.jsonl").read_text().splitlines()]
    for s in samples:
        base = 1.0 if s["grade"]["correct"] else -1.0
        n = len(s["response_ids"])
        assert s["grade"]["score"] == pytest.approx(base + min(0.0, (8 - n) / 4))  # free up to 12 - 4 tokens
    cut = sum(s["finish_reason"] == "length" for s in samples)
    assert cut and sum(m["dapo/overlong_filtered"] for m in _metrics(run)) >= cut


def test_a_user_reward_reaches_the_trainer(tmp_path):
    (tmp_path / "shaping.py").write_text(
        "def by_tokens(problem, response, trajectory, reference):\n"
        "    return 0.01 * (sum(trajectory.response_ids) % 7)\n")
    run = tmp_path / "run"
    r = _tirl("train", str(CONFIGS / "smoke_grpo.yaml"), "trainer.steps=1", "rollout.max_new_tokens=24",
              f"reward.function={tmp_path}/shaping.py:by_tokens", "data.test=''", "--run-dir", str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    samples = [json.loads(ln) for ln in (run / "samples.jsonl").read_text().splitlines()]
    for s in samples:
        base = 1.0 if s["grade"]["correct"] else -1.0
        assert s["grade"]["score"] == pytest.approx(base + 0.01 * (sum(s["response_ids"]) % 7))
    # sampled responses differ, so their shaped rewards do (a length bonus would not: all may hit the budget)
    assert _metrics(run)[0]["train/optimizer_steps"] >= 1


def test_a_failing_user_reward_stops_the_run_naming_function_and_problem(tmp_path):
    (tmp_path / "bad.py").write_text("def f(problem, response, trajectory, reference):\n    return 1 / 0\n")
    r = _tirl("train", str(CONFIGS / "smoke_grpo.yaml"), "trainer.steps=1", "rollout.max_new_tokens=8",
              f"reward.function={tmp_path}/bad.py:f", "data.test=''", "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2
    assert "reward function f failed on problem" in r.stderr and "ZeroDivisionError" in r.stderr


@pytest.mark.parametrize("override,needle", [
    ("algorithm.overlong_buffer=500", "must be below rollout.max_new_tokens"),
    ("reward.combine=mul", "reward.combine must be one of add, replace"),
    ("algorithm.dynamic_sampling_metric=reward", "algorithm.dynamic_sampling_metric must be one of acc, score"),
    ("reward.function=nomodule", "module.path:callable"),
])
def test_dapo_and_reward_settings_are_checked_before_anything_is_written(tmp_path, override, needle):
    r = _tirl("train", str(CONFIGS / "smoke_grpo.yaml"), override, "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def test_adaptive_kl_moves_the_coefficient_and_resume_continues_it(tmp_path):
    base = ["train", str(CONFIGS / "smoke_grpo.yaml"), "rollout.max_new_tokens=12", "data.test=''",
            "algorithm.kl_coef=0.05", "algorithm.kl_target=1e-9", "algorithm.kl_horizon=8",
            "algorithm.entropy_coef=0.01", "trainer.save_every=1"]
    r = _tirl(*base, "trainer.steps=3", "--run-dir", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _metrics(tmp_path / "a")
    coefs = [m["kl/coef"] for m in rows]
    # step 1: the policy is the reference, KL 0 -> error -0.2 x 8 samples / horizon 8: x0.8
    assert rows[0]["kl/observed"] == 0.0 and coefs[:2] == pytest.approx([0.05, 0.04])
    # then the policy has moved, KL is above the (tiny) target: the coefficient rises again
    assert rows[1]["kl/observed"] > 1e-9 and coefs[2] == pytest.approx(0.04 * 1.2)
    r = _tirl(*base, "trainer.steps=2", "--run-dir", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr[-3000:]
    r = _tirl(*base, "trainer.steps=3", "--run-dir", str(tmp_path / "b"), "--resume", "--force")
    assert r.returncode == 0, r.stderr[-3000:]
    assert [m["kl/coef"] for m in _metrics(tmp_path / "b")] == pytest.approx(coefs)


def test_dynamic_sampling_judges_groups_on_accuracy_by_default_as_dapo_does():
    # Before: the shaped score decided. Problem 0's samples are both right, one without running code
    # (ToRL's exec penalty: 1.0 and 0.5): its scores differ but it teaches nothing about correctness.
    def play(problems, round_):
        scores = {0: (1.0, 0.5), 1: (1.0, -1.0), 2: (-1.0, -1.5), 3: (0.5, -1.0)}
        grades = [g for p in problems for g in _grades(scores[p.id % 4])]
        return [SimpleNamespace(group_index=i) for i in range(len(grades))], grades, {}

    problems, *_, metrics, _ = dynamic_sample(play, _stream(), k=2, n=2, max_rounds=2)
    assert [p.id for p in problems] == [1, 3] and metrics["dapo/rounds"] == 2
    problems, *_, metrics, _ = dynamic_sample(play, _stream(), k=2, n=2, max_rounds=2, metric="score")
    assert [p.id for p in problems] == [0, 1] and metrics["dapo/rounds"] == 1
    with pytest.raises(ValueError, match="dynamic_sampling_metric must be one of acc, score"):
        dynamic_sample(play, _stream(), k=2, n=2, max_rounds=1, metric="reward")
