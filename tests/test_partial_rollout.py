"""Partial rollouts (`rollout.partial`): a rollout in flight takes newer weights between its turns, each
token keeps the version that sampled it, the staleness bound reads the oldest, and the settings that
cannot work are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures_models import tiny_model_dir, tiny_tokenizer  # noqa: F401 (fixtures)
from helpers_rollout import SubprocessRunner
from scripted_generator import ScriptedGenerator
from test_async import _Producer

from tirl.config import load_config
from tirl.formats import RETOOL
from tirl.rollout import Trajectory, rollout
from tirl.train.feed import AsyncFeed
from tirl.train.logger import read_metrics
from tirl.train.rl import RLConfig, train_rl, validate
from tirl.train.staleness import fresh_enough
from tirl.train.step_record import STEP_FILE

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TWO_CALLS = ("First.\n<code>\n```python\nprint(1)\n```\n</code>Then.\n<code>\n```python\nprint(2)\n```\n</code>"
             "So.\n<answer>\n\\boxed{2}\n</answer>")
NO_CALL = "Just.\n<answer>\n\\boxed{3}\n</answer>"


def _play(tok, versions):
    """Two prompts (one that calls code twice, one that answers at once) with a weights hook that hands
    out `versions` in turn."""
    texts = [TWO_CALLS, NO_CALL]
    gen = ScriptedGenerator(lambda key: tok.encode(texts[key[2]], add_special_tokens=False), tok)
    handed = iter(versions)
    result = rollout(gen, ["Q1: ", "Q2: "], tok, SubprocessRunner(), RETOOL, max_new_tokens=300,
                     weights=lambda: next(handed))
    return gen, result


def test_tokens_after_new_weights_carry_their_version_and_old_caches_are_dropped(tiny_tokenizer):
    gen, ((calls, answer), metrics) = _play(tiny_tokenizer, [3, 4, 6])
    first, second = calls.tool_calls
    # before turn 0 the weights were version 3; after each tool call the hook handed newer ones
    assert calls.version_runs == [(0, 3), (first.span[1], 4), (second.span[1], 6)]
    assert calls.weight_version == 3  # the oldest: what the staleness bound reads
    assert answer.version_runs == [(0, 3)] and answer.weight_version == 3
    assert metrics["rollout/weight_updates"] == 2.0
    key = gen.calls[0][0]
    assert gen.released.count(key) == 3  # its keys/values of version 3, then 4, were dropped; then it ended
    # tokens are exactly the script's: the change of weights lost nothing
    sampled = [t for t, m in zip(calls.response_ids, calls.loss_mask) if m]
    assert tiny_tokenizer.decode(sampled).startswith("First.")


def test_unchanged_weights_leave_one_run_and_keep_the_caches(tiny_tokenizer):
    gen, ((calls, _), metrics) = _play(tiny_tokenizer, [5, 5, 5])
    assert calls.version_runs == [(0, 5)] and metrics["rollout/weight_updates"] == 0.0
    assert gen.released.count(gen.calls[0][0]) == 1  # released once, when it finished


def test_the_continuous_loop_refuses_a_weights_hook(tiny_tokenizer):
    gen = ScriptedGenerator(lambda key: [], tiny_tokenizer)
    gen.decode_batch = None  # the loop only asks whether it has one
    with pytest.raises(ValueError, match="continuous=false"):
        rollout(gen, ["Q: "], tiny_tokenizer, SubprocessRunner(), RETOOL, continuous=True, weights=lambda: 0)


def test_the_staleness_bound_reads_the_oldest_token():
    old = Trajectory([1], weight_version=3, version_runs=[(0, 3), (4, 5)])  # newest token fresh, oldest not
    ok = Trajectory([1], weight_version=4, version_runs=[(0, 4), (4, 5)])
    whole = Trajectory([1], weight_version=5)
    fresh, m = fresh_enough([old, ok, whole], learner_version=5, max_staleness=1)
    assert fresh == [False, True, True]
    assert m["async/stale_dropped"] == 1.0 and m["async/partial_share"] == pytest.approx(2 / 3)


def test_the_feed_hands_a_rollout_new_weights_between_turns_but_never_half_an_update():
    policy, copy = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with torch.no_grad():
        policy.weight.fill_(0.0)
    producer = _Producer(copy)
    feed = AsyncFeed(producer, policy, copy, 1, start=0, last=2, partial=True)
    try:
        feed.next(1), feed.next(2)  # the producer played steps 1 and 2 with version 0 and stopped (last=2)
        hook = producer.backend.weights
        assert hook == feed.newest_weights and hook() == 0
        with feed.learning():
            with torch.no_grad():
                policy.weight.fill_(0.5)  # half an update
            assert hook() == 0 and float(copy.weight.detach()[0, 0]) == 0.0  # plays on with what it holds, no wait
            with torch.no_grad():
                policy.weight.fill_(1.0)
            feed.publish(policy, version=1)
        assert hook() == 1 and float(copy.weight.detach()[0, 0]) == 1.0
    finally:
        feed.close()


@pytest.mark.parametrize("overrides,needle", [
    (["rollout.partial=true"], "needs trainer.max_staleness >= 1"),
    (["rollout.partial=true", "trainer.max_staleness=1", "algorithm.tis_cap=2", "distributed.backend=ray"],
     "needs distributed.backend=local"),
    (["rollout.partial=true", "trainer.max_staleness=1", "algorithm.tis_cap=2", "rollout.continuous=true"],
     "needs rollout.continuous=false"),
])
def test_partial_rollouts_that_cannot_work_are_refused_in_one_line(overrides, needle):
    cfg = load_config(RLConfig, CONFIGS / "smoke_grpo.yaml", overrides)
    with pytest.raises(ValueError) as err:
        validate(cfg)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_partial_run_logs_each_token_run_s_version_within_the_bound(tmp_path):
    cfg = load_config(RLConfig, CONFIGS / "smoke_grpo.yaml", [
        "trainer.steps=3", "trainer.max_staleness=1", "rollout.partial=true", "algorithm.decoupled_cap=5",
        "algorithm.entropy_coef=0.01", "trainer.eval_size=1", "trainer.save_every=0"])
    train_rl(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / STEP_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        for t in r["trajs"]:
            runs = t.get("versions") or [[0, t["version"]]]
            versions = [v for _, v in runs]
            assert versions == sorted(versions) and versions[0] == t["version"]
            assert all(0 <= r["step"] - 1 - v <= 1 for v in versions)
    assert all("async/partial_share" in m and m["async/stale_dropped"] == 0.0 for m in read_metrics(tmp_path / "run"))
