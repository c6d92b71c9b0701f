"""Infrastructure faults never blamed on the model (issue 29): retries, infra-failed samples ended and left
out of grading, statistics and loss, a sandbox that stays down ending the run in bounded time, the step
deadline, generation server errors, weight versions, and who wrote which text."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest
import torch
from fixtures_models import tiny_model_dir, tiny_tokenizer  # noqa: F401 (fixtures)
from helpers_rollout import INJECTED, BrokenSandbox, FixedResults, FlakySandbox, HangingSandbox, Result
from test_rollout import scripted

from tirl import algorithms as A
from tirl.data import Problem
from tirl.formats import RETOOL
from tirl.generation import FINISH_ERROR, GenerationOutput
from tirl.rewards import INFRA_FAILED, RewardConfig, Rewards
from tirl.rollout import Trajectory, rollout
from tirl.rollout.config import RolloutConfig
from tirl.rollout.episodes import grade_trajectory, play
from tirl.rollout.faults import InfraDown, StaleRollout, check_weight_versions, trainable
from tirl.train import rl_update as U
from tirl.train.batch import make_batch

torch.set_num_threads(1)

FAST = dict(exec_retry_backoff_s=0.01, exec_retry_deadline_s=5.0)
OK = FixedResults(Result("ok", "1\n"))


def block(code: str) -> str:
    return f"<code>\n```python\n{code}\n```\n</code>"


ANSWER = "It is 1.\n<answer>\n\\boxed{1}\n</answer>"


def test_an_infra_failure_that_a_retry_cures_is_invisible(tiny_tokenizer):
    tok = tiny_tokenizer
    sb = FlakySandbox(OK, fail_codes={"print(1)": 2})  # its first two runs fail as infrastructure
    (t,), m = rollout(scripted(tok, [block("print(1)") + ANSWER]), ["p"], tok, sb, RETOOL, max_new_tokens=300,
                      exec_retries=2, **FAST)
    assert t.tool_calls[0].status == "ok" and not t.infra_failed and t.finish_reason == "answer"
    assert m["rollout/exec_retries"] == 2 and sb.batches == [["print(1)"]] * 3


def test_a_call_that_keeps_failing_ends_its_sample_and_the_model_writes_no_more(tiny_tokenizer):
    """bad()'s call fails as infrastructure on every attempt, in the same batch as good() (which runs):
    bad's sample ends at once, marked infra_failed; before, the error was shown to the model, which wrote
    on, and the sample was graded as the model's wrong answer."""
    tok = tiny_tokenizer
    sb = FlakySandbox(OK, fail_codes={"bad()": math.inf})
    texts = [[block("good()") + ANSWER, block("bad()") + "More writing after the error. " + ANSWER]]
    trajs, m = rollout(scripted(tok, texts), ["p"], tok, sb, RETOOL, n=2, max_new_tokens=300, exec_retries=2, **FAST)
    good, bad = trajs
    assert not good.infra_failed and good.finish_reason == "answer"
    assert bad.infra_failed and bad.finish_reason == "infra" and INJECTED in bad.infra_error
    assert bad.tool_calls[-1].status == "sandbox_error" and bad.tool_calls[-1].span[1] == len(bad.response_ids)
    assert "More writing" not in bad.text  # nothing sampled after the failure
    assert sb.injected == ["bad()"] * 3 and m["rollout/exec_retries"] == 2
    g = grade_trajectory(bad, "1", RETOOL, exec_penalty=0.5)
    assert (g.score, g.correct, g.reason) == (0.0, False, INFRA_FAILED)  # not graded, not penalised


def test_a_sandbox_that_stays_down_ends_the_rollout_with_one_line(tiny_tokenizer):
    tok = tiny_tokenizer
    sb = BrokenSandbox()
    t0 = time.monotonic()
    with pytest.raises(InfraDown) as e:
        rollout(scripted(tok, [block("print(1)") + ANSWER] * 3), ["p", "q", "r"], tok, sb, RETOOL, max_new_tokens=300,
                exec_retries=1, exec_retry_backoff_s=0.05, exec_retry_deadline_s=0.6)
    assert time.monotonic() - t0 < 5 and sb.calls >= 3  # retried while nothing ran, until the deadline
    msg = str(e.value)
    assert "\n" not in msg and "sandbox is down" in msg and "worker pool is gone" in msg


def test_a_hung_call_is_cut_at_the_step_deadline(tiny_tokenizer):
    tok = tiny_tokenizer
    sb = HangingSandbox()
    texts = [[block("fine()") + ANSWER, block("hang()") + ANSWER]]
    t0 = time.monotonic()
    try:
        trajs, _ = rollout(scripted(tok, texts), ["p"], tok, sb, RETOOL, n=2, max_new_tokens=300, step_timeout_s=0.5,
                           **FAST)
    finally:
        sb.release.set()
    assert time.monotonic() - t0 < 5
    fine, hung = trajs
    assert not fine.infra_failed and fine.tool_calls[0].status == "ok"
    assert hung.infra_failed and "rollout.step_timeout_s=0.5" in hung.infra_error


class FailingGenerator:
    """Wraps a generator: the requests of trajectories in `fail` (sample indices) get `FINISH_ERROR`."""

    def __init__(self, inner, fail):
        self.inner, self.fail = inner, set(fail)

    def generate(self, requests, params):
        outs = self.inner.generate(requests, params)
        return [GenerationOutput([], [], FINISH_ERROR, extras={"error": "http://gen/v1/completions failed"})
                if r.key[3] in self.fail else o for r, o in zip(requests, outs)]

    def release(self, keys):
        self.inner.release(keys)


def test_a_generation_the_server_could_not_make_is_infra_failed(tiny_tokenizer):
    tok = tiny_tokenizer
    gen = FailingGenerator(scripted(tok, [[ANSWER, ANSWER]]), fail={1})
    ok, failed = rollout(gen, ["p"], tok, OK, RETOOL, n=2, max_new_tokens=100).trajectories
    assert ok.finish_reason == "answer" and not ok.infra_failed
    assert failed.infra_failed and failed.finish_reason == "infra" and failed.response_ids == []
    assert "gen/v1/completions" in failed.infra_error


def _never_void(problem, response, trajectory, reference):
    return pytest.fail("a reward function ran on a void sample") if trajectory.infra_failed else 0.0


def test_play_never_penalises_or_scores_an_infra_failure(tiny_tokenizer):
    """exec_penalty 0.5, no retries: the injected failures' samples are void, not -1.5; the reward
    figures are over the others. Before: those samples scored -1.5 (wrong, and 'code never ran')."""
    tok = tiny_tokenizer
    sb = FlakySandbox(OK, fail_codes={"bad()": math.inf})
    texts = [[block("good()") + ANSWER, block("bad()") + ANSWER], [block("bad()") + ANSWER, ANSWER]]
    gen = scripted(tok, texts)
    problems = [Problem("a", "p", "1"), Problem("b", "q", "2")]
    trajs, grades, m = play(gen, tok, sb, problems, RETOOL, RolloutConfig(n=2, max_new_tokens=300, exec_retries=0,
                                                                          **FAST), exec_penalty=0.5,
                            reward_fn=Rewards(RewardConfig(functions=[{"function": "correct"},
                                                                      {"function": "python:probe"}]),
                                              {"probe": _never_void}))
    assert [t.infra_failed for t in trajs] == [False, True, True, False]
    assert [g.reason for g in grades][1:3] == [INFRA_FAILED] * 2 and [g.score for g in grades] == [1.0, 0.0, 0.0, -1.0]
    assert m["reward/mean"] == 0.0 and m["reward/accuracy"] == 0.5  # over the two graded samples


def test_trainable_drops_void_samples_and_groups_left_without_a_comparison():
    def traj(failed):
        return Trajectory([1], infra_failed=failed, infra_error="boom" if failed else "")
    trajs = [traj(f) for f in (False, True, False, False) + (True, False, True, True)]
    valid, m = trainable(trajs, 4)
    assert valid == [True, False, True, True] + [False] * 4  # group 2 kept one sample: nothing to compare
    assert m == {"rollout/infra_failed": 4.0, "rollout/infra_dropped_groups": 1.0}
    valid, m = trainable(trajs, 4, min_valid=1)  # PPO: a lone sample still trains
    assert valid == [True, False, True, True, False, True, False, False] and m["rollout/infra_dropped_groups"] == 0
    with pytest.raises(InfraDown, match="every sample of the step .4. failed.*boom"):
        trainable([traj(True)] * 4, 2)


def _slow_grpo(rewards, valid, G, scale):
    """Reference: GRPO of each group's valid samples alone, 0 elsewhere."""
    out = torch.zeros_like(rewards)
    for g in range(0, len(rewards), G):
        idx = [i for i in range(g, g + G) if valid[i]]
        if len(idx) >= 2:
            out[idx] = A.grpo_advantages(rewards[idx], len(idx), scale_by_std=scale)
    return out


@pytest.mark.parametrize("scale", [True, False])
def test_masked_group_advantages_equal_the_valid_samples_alone(scale):
    torch.manual_seed(0)
    rewards = torch.randn(12)
    rewards[1] = float("nan")  # a void sample's reward never leaks
    valid = torch.tensor([1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0], dtype=torch.bool)
    got = A.grpo_advantages(rewards, 4, scale_by_std=scale, valid=valid)
    assert torch.allclose(got, _slow_grpo(rewards, valid, 4, scale), atol=1e-6)
    assert torch.allclose(A.grpo_advantages(rewards[4:8], 4, scale_by_std=scale),  # all valid: unchanged
                          A.grpo_advantages(rewards[4:8], 4, scale_by_std=scale, valid=torch.ones(4, dtype=torch.bool)),
                          atol=1e-6)
    rl = A.rloo_advantages(rewards, 4, valid=valid)
    assert rl[0] == pytest.approx(float(rewards[0] - (rewards[2] + rewards[3]) / 2)) and rl[1] == 0 and rl[8:].eq(0).all()


@pytest.mark.parametrize("name", ["grpo", "ppo"])
def test_void_rows_get_no_advantage(name):
    trajs = [Trajectory([1, 2], [3, 4, 5], [1, 1, 1], [-0.5] * 3) for _ in range(4)]
    trajs[1] = Trajectory([1, 2], [], [], [], infra_failed=True)  # a generation error: no token at all
    batch = make_batch(trajs, 0)
    batch.old_values = torch.zeros_like(batch.mask)
    valid = torch.tensor([True, False, True, True])
    cfg = U.AlgoConfig(name=name)
    U.compute_advantages(batch, torch.tensor([1.0, float("nan"), -1.0, 1.0]), cfg, 4 if name == "grpo" else 1,
                         valid=valid)
    adv = batch.advantages
    assert torch.isfinite(adv).all() and (adv[1] == 0).all() and (adv[0] != 0).any()


def test_the_learner_refuses_rollouts_of_another_weight_version():
    trajs = [Trajectory([1], weight_version=v) for v in (4, 4, 3)]
    with pytest.raises(StaleRollout, match="version 3, the learner expected version 4"):
        check_weight_versions(trajs, 4)
    check_weight_versions(trajs[:2], 4)


def test_the_local_backend_stamps_the_version_it_was_synced_to(tiny_tokenizer):
    from tirl.distributed.local import LocalBackend

    tok = tiny_tokenizer
    backend = LocalBackend(scripted(tok, [ANSWER, ANSWER]), tok, OK, RETOOL)
    backend.sync_weights(None, version=7)
    trajs, _ = backend.rollout([tok.encode("p"), tok.encode("q")], RolloutConfig(max_new_tokens=50), shards=2)
    assert [t.weight_version for t in trajs] == [7, 7]


def test_the_worker_stamps_its_version(tiny_tokenizer, monkeypatch):
    from tirl.distributed.shards import cut_shards
    from tirl.distributed.worker import RolloutWorker

    tok = tiny_tokenizer
    worker = RolloutWorker.__new__(RolloutWorker)  # the rollout part only: no model to load here
    worker.spec, worker.name, worker.version, worker.hold_dir = SimpleNamespace(style=RETOOL), "w", 5, None
    worker.generator, worker.tokenizer, worker.sandbox = scripted(tok, [ANSWER]), tok, OK
    (shard,) = cut_shards([tok.encode("p")], 1, 0)
    assert [t.weight_version for t in worker.rollout(shard, RolloutConfig(max_new_tokens=50), 5).trajectories] == [5]


def _voiding_play(real_play, void, version_shift=0):
    """`play` whose samples `void` come back infra-failed, with alternating +1/-1 rewards for the others
    (so every group has something to learn)."""
    from tirl.rewards import Grade

    def fake(*args, **kwargs):
        trajs, grades, metrics = real_play(*args, **kwargs)
        for i, t in enumerate(trajs):
            t.infra_failed, t.infra_error = i in void, "boom" if i in void else ""
            t.weight_version += version_shift
            grades[i] = Grade(0.0, False, None, "1", INFRA_FAILED) if i in void else \
                Grade(1.0 if i % 2 else -1.0, bool(i % 2), "1", "1", "exact")
        return trajs, grades, metrics
    return fake


def _smoke(steps=1):
    from pathlib import Path

    from tirl.config import load_config
    from tirl.train.rl import RLConfig

    return load_config(RLConfig, Path(__file__).resolve().parents[1] / "configs" / "smoke_grpo.yaml",
                       [f"trainer.steps={steps}", "data.test=", "rollout.max_new_tokens=16"])


def test_the_learner_trains_on_valid_samples_only(tmp_path, monkeypatch):
    """2 groups of 4: group 0 loses sample 0, group 1 keeps one sample (dropped). Before: the void
    samples' 0 scores entered the group baselines and their rows were trained on (8 rows)."""
    import tirl.train.producer as producer
    import tirl.train.rl as rl
    from tirl.train.logger import read_metrics

    monkeypatch.setattr(producer, "play", _voiding_play(producer.play, void={0, 4, 5, 6}))
    rl.train_rl(_smoke(), tmp_path / "run")
    (m,) = read_metrics(tmp_path / "run")
    assert (m["rollout/infra_failed"], m["rollout/infra_dropped_groups"], m["train/rows"]) == (4.0, 1.0, 3.0)
    assert m["train/optimizer_steps"] == 1.0


def test_the_learner_refuses_a_batch_from_another_weight_version(tmp_path, monkeypatch):
    import tirl.train.producer as producer
    import tirl.train.rl as rl

    monkeypatch.setattr(producer, "play", _voiding_play(producer.play, void=set(), version_shift=1))
    with pytest.raises(StaleRollout, match="version 1, the learner expected version 0"):
        rl.train_rl(_smoke(), tmp_path / "run")
