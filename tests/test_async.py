"""Asynchronous RL (`trainer.max_staleness: k`): the producer runs ahead, never more than k updates, never
with half an update, and bad settings are refused in one line."""

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from tirl.config import load_config
from tirl.rollout import Trajectory
from tirl.rollout.faults import StaleRollout
from tirl.train.feed import AsyncFeed
from tirl.train.logger import read_metrics
from tirl.train.producer import ScoredBatch
from tirl.train.rl import RLConfig, train_rl, validate
from tirl.train.staleness import fresh_enough
from tirl.train.step_record import STEP_FILE

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class _Backend:
    version = None

    def sync_weights(self, model, version):
        self.version = version
        return {}


class _Producer:
    """Plays instantly; each 'trajectory' records the weight its copy held and the version it was told."""

    def __init__(self, copy):
        self.backend, self.copy, self.started = _Backend(), copy, []

    def produce(self, step):
        self.started.append(step)
        t = Trajectory([1], weight_version=self.backend.version)
        held = float(self.copy.weight.detach().flatten()[0])
        return ScoredBatch(step, [], [t], [], {"held": held}, [], [], (0, 0), step, 0.0)


@pytest.mark.parametrize("k", [1, 2])
def test_the_producer_runs_k_updates_ahead_never_more_and_plays_the_weights_its_version_names(k):
    policy, copy = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with torch.no_grad():
        policy.weight.fill_(0.0)  # version 0's weights
    producer = _Producer(copy)
    feed = AsyncFeed(producer, policy, copy, k, start=0, last=8)
    ages = []
    try:
        for step in range(1, 9):
            scored = feed.next(step)
            (traj,) = scored.trajectories
            ages.append(step - 1 - traj.weight_version)
            # the weights the batch was played with are those of the version it is stamped with
            assert scored.metrics["held"] == float(traj.weight_version)
            with feed.learning():  # an "update": every weight becomes the new version's number
                for v in (0.5, float(step)):  # a half-written update is never seen
                    with torch.no_grad():
                        policy.weight.fill_(v)
                    time.sleep(0.01)
                feed.publish(policy, version=step)
            time.sleep(0.05)  # the learner is slower than the producer: the producer waits at the bound
    finally:
        feed.close()
    assert ages[0] == 0 and max(ages) == k and all(0 <= a <= k for a in ages)
    assert not feed.thread.is_alive()


def test_a_producer_error_reaches_the_learner_and_close_ends_the_thread():
    class Broken(_Producer):
        def produce(self, step):
            raise RuntimeError("sandbox down")

    policy, copy = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    feed = AsyncFeed(Broken(copy), policy, copy, 1, start=0, last=3)
    with pytest.raises(RuntimeError, match="sandbox down"):
        feed.next(1)
    feed.close()
    assert not feed.thread.is_alive()


def test_too_old_samples_are_left_out_and_counted_newer_ones_stop_the_run():
    trajs = [Trajectory([1], weight_version=v) for v in (5, 4, 3, 3)]
    fresh, m = fresh_enough(trajs, learner_version=5, max_staleness=1)
    assert fresh == [True, True, False, False]
    assert m["async/stale_dropped"] == 2.0 and m["async/age_max"] == 2.0 and m["async/age_mean"] == 1.25
    assert (m["async/age_0"], m["async/age_1"]) == (0.25, 0.25)
    with pytest.raises(StaleRollout, match="newer than the learner's 5"):
        fresh_enough([Trajectory([1], weight_version=6)], learner_version=5, max_staleness=1)
    with pytest.raises(StaleRollout, match="expected version 5"):  # k = 0: the synchronous loop's check
        fresh_enough([Trajectory([1], weight_version=4)], learner_version=5, max_staleness=0)


@pytest.mark.parametrize("overrides,needle", [
    (["trainer.max_staleness=1"], "set an off-policy correction, algorithm.tis_cap"),
    (["trainer.max_staleness=-1"], "trainer.max_staleness must be >= 0"),
    (["trainer.max_staleness=1", "algorithm.tis_cap=2", "distributed.trainer_workers=2"], "is not yet supported"),
    (["algorithm.tis_cap=2", "algorithm.decoupled_cap=5"], "set one"),
    (["algorithm.decoupled_cap=0.5"], "algorithm.decoupled_cap must be 0 (off) or > 1"),
])
def test_unworkable_asynchronous_settings_are_refused_in_one_line(overrides, needle):
    cfg = load_config(RLConfig, CONFIGS / "smoke_grpo.yaml", overrides)
    with pytest.raises(ValueError) as err:
        validate(cfg)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("config,correction", [("smoke_grpo.yaml", "algorithm.decoupled_cap=5"),
                                               ("smoke_ppo.yaml", "algorithm.tis_cap=2")])
def test_a_run_at_max_staleness_1_never_trains_on_a_sample_older_than_1(tmp_path, config, correction):
    cfg = load_config(RLConfig, CONFIGS / config, ["trainer.steps=4", "trainer.max_staleness=1", correction,
                                                   "algorithm.entropy_coef=0.01", "trainer.eval_size=1",
                                                   "trainer.save_every=0", "algorithm.critic_warmup_steps=0"])
    train_rl(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / STEP_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    ages = [r["step"] - 1 - t["version"] for r in rows for t in r["trajs"]]
    assert all(0 <= a <= 1 for a in ages), ages  # from the logged versions
    metrics = read_metrics(tmp_path / "run")
    for m, r in zip(metrics, rows):
        assert m["async/age_max"] == max(r["step"] - 1 - t["version"] for t in r["trajs"])
        assert m["async/stale_dropped"] == 0.0 and m["train/optimizer_steps"] > 0
    weight = "decoupled/weight_mean" if "decoupled" in correction else "tis/weight_mean"
    assert all(abs(m[weight] - 1.0) < 0.5 for m in metrics)
    assert (tmp_path / "run" / "checkpoints" / "step-000004" / "COMPLETE").is_file()


def test_a_resume_at_k_2_re_plays_the_groups_in_flight_deterministically_and_trains_nothing_twice(tmp_path):
    """Steps 3 and 4 were in flight (played ahead) when step 2's checkpoint was written: two resumes from
    that checkpoint re-play them alike, from the checkpoint's weights, and continue the data after step 2."""
    def cfg(steps):
        return load_config(RLConfig, CONFIGS / "smoke_grpo.yaml", [
            f"trainer.steps={steps}", "trainer.max_staleness=2", "algorithm.decoupled_cap=5",
            "algorithm.entropy_coef=0.01", "trainer.eval_size=1", "trainer.save_every=2"])

    train_rl(cfg(2), tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    runs = []
    for name in ("a", "b"):
        train_rl(cfg(5), tmp_path / name, resume=True)
        runs.append([json.loads(line) for line in (tmp_path / name / STEP_FILE).read_text().splitlines()])
    a, b = runs
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5]  # each step trained once
    for step in (3, 4):  # re-played: with the checkpoint's weights (version 2), alike in both resumes
        assert a[step - 1] == b[step - 1] and {t["version"] for t in a[step - 1]["trajs"]} == {2}
    trained = {p for r in a[:2] for p in r["problems"]}
    assert not trained & {p for r in a[2:] for p in r["problems"]}  # the data continues after step 2
    rewards = [json.loads(line)["step"] for line in (tmp_path / "a" / "rewards.jsonl").read_text().splitlines()]
    assert rewards == [s for s in range(1, 6) for _ in range(2)]  # 2 problems a step, each step logged once
