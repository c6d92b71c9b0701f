"""`tirl train`: the update is exact and masked, the loop runs for GRPO and PPO, and resume is exact."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from tirl.config import load_config
from tirl.rollout import Trajectory
from tirl.train import rl_update as U
from tirl.train.batch import make_batch, micro_batches
from tirl.train.logger import read_metrics
from tirl.train.rl import RLConfig, train_rl

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def _tiny(seed=0):
    cfg = Qwen2Config(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg)


def _trajs(n=8):
    """Prompts of varied length; responses with an interpreter span (mask 0) in the middle."""
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        p = torch.randint(1, 40, (3 + i % 3,), generator=g).tolist()
        r = torch.randint(1, 40, (6 + i % 4,), generator=g).tolist()
        mask = [1, 1, 0, 0, 1] + [1] * (len(r) - 5)
        out.append(Trajectory(p, r, mask, [-1.0 if m else 0.0 for m in mask], group_index=i // 2,
                              sample_index=i % 2))
    return out


def _batch(model, trajs, rewards, algo):
    batch = make_batch(trajs, pad_id=0)
    batch.old_logprobs, _ = U.score_batch(model, batch, 1.0, 4)
    U.compute_advantages(batch, torch.tensor(rewards), algo, 2)
    return batch


def test_batch_mask_follows_the_trajectory_masks():
    trajs = _trajs()
    batch = make_batch(trajs, pad_id=0)
    for b, t in enumerate(trajs):
        P, R = len(t.prompt_ids), len(t.response_ids)
        row = batch.mask[b]
        assert row[: P - 1].sum() == 0  # prompt targets
        assert row[P - 1 : P - 1 + R].tolist() == [float(m) for m in t.loss_mask]
        assert row[P - 1 + R :].sum() == 0  # padding


def test_masked_tokens_get_no_gradient():
    model = _tiny()
    algo = U.AlgoConfig(name="grpo")
    batch = _batch(model, _trajs(), [1.0, -1.0] * 4, algo)
    lp, _ = U.forward_logprobs(model, batch, 1.0)
    lp.retain_grad()
    loss, _ = U.A.policy_loss(lp, batch.old_logprobs, batch.advantages, batch.mask)
    loss.backward()
    assert torch.all(lp.grad[batch.mask == 0] == 0)
    assert lp.grad[batch.mask == 1].abs().sum() > 0


def test_update_changes_parameters_and_accumulation_is_exact():
    algo = U.AlgoConfig(name="grpo", clip_low=0.2, clip_high=0.28)
    results = []
    for micro in (1, 8):
        model = _tiny()
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        rewards = [1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0]
        batch = _batch(model, _trajs(), rewards, algo)
        rows = U.rows_to_train(batch, algo, rewards, 2)
        U.policy_update(model, opt, sched, batch, rows, algo, mini_batch_size=8, micro_batch_size=micro,
                        epochs=1, temperature=1.0, max_grad_norm=0.0, seq_len=16,
                        generator=torch.Generator().manual_seed(0))
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):  # batch 1 x accumulate 8 == batch 8 x accumulate 1
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_micro_batches_cover_every_row_once_within_the_cap_and_spare_short_rows_the_long_ones_padding():
    g = torch.Generator().manual_seed(0)
    for cap in (1, 3, 8, 64):
        lengths = torch.randint(5, 90, (50,), generator=g).tolist()
        parts = micro_batches(lengths, cap)
        assert sorted(i for p in parts for i in p) == list(range(50))
        assert all(1 <= len(p) <= cap for p in parts)
    # 60 short answers and 4 that ran to the budget: one micro-batch of 64 would pad all to 92 tokens
    lengths = [30] * 30 + [92] * 2 + [31] * 30 + [92] * 2
    parts = micro_batches(lengths, 64)
    padded = sum(len(p) * max(lengths[i] for i in p) for p in parts)
    assert sorted(max(lengths[i] for i in p) for p in parts) == [31, 92]
    assert padded == 60 * 31 + 4 * 92 < 64 * 92 * 0.4
    assert micro_batches([], 8) == [] and micro_batches([7], 8) == [[0]]


def test_scoring_in_length_sorted_micro_batches_puts_each_rows_logprobs_back_in_its_row():
    model = _tiny()
    batch = make_batch(_trajs(), pad_id=0)
    whole, ent_whole = U.score_batch(model, batch, 1.0, 100, entropy=True)
    for micro in (1, 3):
        lp, ent = U.score_batch(model, batch, 1.0, micro, entropy=True)
        torch.testing.assert_close(lp, whole, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ent, ent_whole, rtol=1e-5, atol=1e-6)
    assert torch.all(whole[batch.mask == 0] == 0) and torch.all(whole[batch.mask == 1] < 0)


def _one_update(algo, rollout_shift=0.0):
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    batch = _batch(model, _trajs(), [1.0, -1.0] * 4, algo)
    batch.rollout_logprobs = batch.old_logprobs + rollout_shift
    rows = U.rows_to_train(batch, algo, [1.0, -1.0] * 4, 2)
    m = U.policy_update(model, opt, sched, batch, rows, algo, mini_batch_size=8, micro_batch_size=4, epochs=1,
                        temperature=1.0, max_grad_norm=0.0, seq_len=16, generator=torch.Generator().manual_seed(0))
    return [p.detach().clone() for p in model.parameters()], m


def test_tis_changes_nothing_when_the_rollout_engine_agrees_and_reweights_when_it_does_not():
    plain, _ = _one_update(U.AlgoConfig(name="grpo"))
    same, m = _one_update(U.AlgoConfig(name="grpo", tis_cap=2.0))
    assert m["tis/weight_mean"] == 1.0 and m["tis/clipped_frac"] == 0.0
    for a, b in zip(plain, same):
        assert torch.equal(a, b)
    # rollout engine half as likely on every token: weights 2, capped at 1.5 -> a 1.5x larger step
    off, m = _one_update(U.AlgoConfig(name="grpo", tis_cap=1.5), rollout_shift=-math.log(2))
    assert m["tis/clipped_frac"] == 1.0
    start = [p.detach().clone() for p in _tiny().parameters()]
    for p0, a, b in zip(start, plain, off):
        torch.testing.assert_close(b - p0, 1.5 * (a - p0), rtol=1e-4, atol=1e-6)


def _unknown_update(algo, rollout):
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    batch = _batch(model, _trajs(), [1.0, -1.0] * 4, algo)
    batch.rollout_logprobs = rollout(batch)
    rows = U.rows_to_train(batch, algo, [1.0, -1.0] * 4, 2)
    m = U.policy_update(model, opt, sched, batch, rows, algo, mini_batch_size=8, micro_batch_size=4, epochs=1,
                        temperature=1.0, max_grad_norm=0.0, seq_len=16, generator=torch.Generator().manual_seed(0))
    return [p.detach().clone() for p in model.parameters()], m, batch


def test_unknown_rollout_logprobs_get_tis_weight_one_and_stay_out_of_the_mismatch_metrics():
    # The OpenAI backend writes NaN log-probs for re-tokenised outputs: before, one NaN made the whole
    # TIS update NaN, and the mismatch metrics NaN even with TIS off.
    def shifted(batch):  # the rollout engine half as likely on every token ...
        return torch.where(batch.mask.bool(), batch.old_logprobs - math.log(2), 0.0)

    def with_unknown(batch):  # ... except rows 0 and 5, whose log-probs it did not return
        lp = shifted(batch)
        lp[[0, 5]] = torch.where(batch.mask[[0, 5]].bool(), float("nan"), 0.0)
        return lp

    def known_as_trainer(batch):  # what weight 1 means: those rows as if the engines agreed
        lp = shifted(batch)
        lp[[0, 5]] = batch.old_logprobs[[0, 5]]
        return lp

    algo = U.AlgoConfig(name="grpo", tis_cap=1.5)
    params, m, batch = _unknown_update(algo, with_unknown)
    expected, m_expected, _ = _unknown_update(algo, known_as_trainer)
    assert all(torch.isfinite(p).all() for p in params)
    for a, b in zip(params, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert m["tis/weight_mean"] == pytest.approx(m_expected["tis/weight_mean"])
    assert all(math.isfinite(v) for v in m.values()), m
    mis = U.logprob_mismatch(batch)
    sampled = batch.mask.bool()
    assert mis["rollout/logprob_unknown"] == pytest.approx(float(sampled[[0, 5]].sum() / sampled.sum()))
    assert mis["rollout/logprob_max_diff"] == pytest.approx(math.log(2), rel=1e-5)
    assert mis["rollout/logprob_mean_diff"] == pytest.approx(math.log(2), rel=1e-5)
    # TIS off: the same metrics, and nothing unknown reaches the update
    _, m_off, batch = _unknown_update(U.AlgoConfig(name="grpo"), with_unknown)
    assert U.logprob_mismatch(batch)["rollout/logprob_max_diff"] == pytest.approx(math.log(2), rel=1e-5)
    assert all(math.isfinite(v) for v in m_off.values())
    batch.rollout_logprobs = torch.where(sampled, float("nan"), 0.0)
    none_known = U.logprob_mismatch(batch)
    assert none_known["rollout/logprob_unknown"] == 1.0 and math.isnan(none_known["rollout/logprob_max_diff"])


def _update_metrics(micro, algo):
    """The metrics of one update (2 epochs x 2 mini-batches of 32 rows) run in micro-batches of `micro`."""
    model = _tiny()
    g = torch.Generator().manual_seed(5)
    rewards = torch.randint(0, 2, (64,), generator=g).float() * 2 - 1
    batch = _batch(model, _trajs(64), rewards.tolist(), algo)
    U.compute_advantages(batch, rewards, algo, 2)
    sampled = batch.mask.bool()
    # the old policy and the rollout engine off the trainer, so ratios and TIS weights spread (up to ~4)
    batch.old_logprobs = torch.where(sampled, batch.old_logprobs + 0.5 * torch.randn(batch.mask.shape, generator=g), 0.0)
    rollout = batch.old_logprobs + 0.5 * torch.randn(batch.mask.shape, generator=g)
    unknown = torch.rand(batch.mask.shape, generator=g) < 0.1  # the OpenAI backend's NaN log-probs
    batch.rollout_logprobs = torch.where(sampled, torch.where(unknown, float("nan"), rollout), 0.0)
    if algo.kl_coef:
        batch.ref_logprobs = torch.where(sampled, batch.old_logprobs - 0.3, 0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return U.policy_update(model, opt, sched, batch, U.rows_to_train(batch, algo, rewards, 2), algo,
                           mini_batch_size=32, micro_batch_size=micro, epochs=2, temperature=1.0, max_grad_norm=1.0,
                           seq_len=16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("algo", [
    U.AlgoConfig(name="grpo", tis_cap=2.0, dual_clip=3.0),
    U.AlgoConfig(name="grpo", tis_cap=2.0, kl_coef=0.1, entropy_coef=0.01),
], ids=["tis-dual-clip", "kl-entropy"])
def test_update_metrics_do_not_depend_on_the_micro_batch_size(algo):
    # Before: ratio_max was a mean of per-micro-batch maxima and the means unweighted means of
    # micro-batch means, so the same update logged other figures at another micro_batch_size.
    runs = {micro: _update_metrics(micro, algo) for micro in (64, 8, 1)}
    assert runs[64]["policy/ratio_max"] > 2 and 0 < runs[64]["policy/clipfrac"] < 1
    assert runs[64]["tis/clipped_frac"] > 0 and "entropy/mean" in runs[64]
    for micro in (8, 1):
        assert runs[micro].keys() == runs[64].keys()
        for key, value in runs[64].items():
            assert runs[micro][key] == pytest.approx(value, rel=1e-6, abs=1e-6), (key, micro, runs[micro][key], value)


def test_a_training_step_logs_the_same_figures_at_micro_batch_64_8_and_1(tmp_path):
    # Every metric of a real step (64 rows, 2 epochs of 2 mini-batches, PPO-clip, KL, entropy and TIS) but
    # timings, at three micro-batch sizes. A user reward of the tokens gives the random model's groups spread.
    shaping = tmp_path / "shaping.py"
    shaping.write_text("def by_tokens(problem, response, trajectory, reference):\n"
                       "    return 0.1 * (sum(trajectory.response_ids) % 7)\n")
    runs = {}
    for micro in (64, 8, 1):
        cfg = load_config(RLConfig, CONFIGS / "smoke_grpo.yaml", [
            "trainer.steps=1", "trainer.prompts_per_step=8", "rollout.n=8", "trainer.mini_batch_size=32",
            "trainer.ppo_epochs=2", "rollout.max_new_tokens=24", "data.test=", "algorithm.entropy_coef=0.01",
            "algorithm.kl_coef=0.1", "algorithm.tis_cap=2", "trainer.optim.lr=1e-2", "trainer.optim.warmup_steps=0",
            f"reward.function={shaping}:by_tokens",
            f"trainer.micro_batch_size={micro}"])
        train_rl(cfg, tmp_path / f"micro{micro}")
        runs[micro] = {k: v for k, v in read_metrics(tmp_path / f"micro{micro}")[0].items()
                       if not k.startswith(("time/", "throughput/", "rollout/gen_time", "rollout/exec_time"))}
    assert runs[64]["train/optimizer_steps"] == 4 and runs[64]["policy/ratio_max"] > 1.5
    assert runs[64]["policy/clipfrac"] > 0
    for micro in (8, 1):
        assert runs[micro].keys() == runs[64].keys()
        for key, value in runs[64].items():
            if isinstance(value, float):
                assert runs[micro][key] == pytest.approx(value, rel=1e-6, abs=1e-6), (key, micro, runs[micro][key], value)
            else:
                assert runs[micro][key] == value, key


def test_all_equal_groups_are_skipped():
    model = _tiny()
    algo = U.AlgoConfig(name="grpo")
    rewards = [-1.0, -1.0, 1.0, -1.0, -1.0, -1.0, 1.0, 1.0]
    batch = _batch(model, _trajs(), rewards, algo)
    assert U.rows_to_train(batch, algo, rewards, 2) == [2, 3]


def test_the_filter_drops_all_equal_groups_not_zero_advantage_rows():
    # Before: rows whose advantage was exactly 0 left the batch, though their group's rewards differed.
    drgrpo = U.AlgoConfig(name="grpo", scale_by_std=False)
    rewards = [1.0, -1.0, 0.0, 0.0, -1.0, -1.0, -1.0, -1.0]  # rows 2, 3: advantage 0 in an informative group
    batch = _batch(_tiny(), _trajs(), [1.0, -1.0] * 4, drgrpo)
    U.compute_advantages(batch, torch.tensor(rewards), drgrpo, 4)
    assert batch.advantages[2] == 0 and batch.advantages[3] == 0
    rows = U.rows_to_train(batch, drgrpo, rewards, 4)
    assert rows == [0, 1, 2, 3]
    assert U.rows_to_run(batch, rows, drgrpo) == [0, 1]  # the speed-up still spares their forward
    # ToRL's exec penalty: scores 1 / 0.5 (correct, code never ran) / -1.5; the 0.5s sit at the group mean
    torl = U.AlgoConfig(name="grpo", exec_penalty=0.5)
    rewards = [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, -1.5] + [-1.0] * 8
    batch = _batch(_tiny(), _trajs(16), [1.0, -1.0] * 8, torl)
    U.compute_advantages(batch, torch.tensor(rewards), torl, 8)
    assert batch.advantages[4] == 0
    assert U.rows_to_train(batch, torl, rewards, 8) == list(range(8))


def _adamw_update(algo, rewards, mini_batch_size=2, epochs=3):
    model = _tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    batch = _batch(model, _trajs(), rewards, algo)
    m = U.policy_update(model, opt, sched, batch, U.rows_to_train(batch, algo, rewards, 2), algo,
                        mini_batch_size=mini_batch_size, micro_batch_size=1, epochs=epochs, temperature=1.0,
                        max_grad_norm=1.0, seq_len=16, generator=torch.Generator().manual_seed(3))
    return [p.detach().clone() for p in model.parameters()], m


def test_skipping_zero_advantage_rows_changes_nothing_but_the_work():
    # groups of 2: the second and third are all-equal (advantage 0); in mini-batches of 2 rows over 3
    # shuffled epochs some mini-batch holds only such rows, and must still make its AdamW step
    # (momentum and weight decay move the weights even on a zero gradient)
    rewards = [1.0, -1.0, -1.0, -1.0, 1.0, 1.0, -1.0, 1.0]
    keep = dict(name="grpo", filter_zero_advantage=False)
    full, m_full = _adamw_update(U.AlgoConfig(skip_zero_advantage=False, **keep), rewards)
    fast, m_fast = _adamw_update(U.AlgoConfig(skip_zero_advantage=True, **keep), rewards)
    batch = _batch(_tiny(), _trajs(), rewards, U.AlgoConfig(**keep))
    rows = U.rows_to_train(batch, U.AlgoConfig(**keep), rewards, 2)
    assert len(U.rows_to_run(batch, rows, U.AlgoConfig(**keep))) == 4
    assert m_full["train/optimizer_steps"] == m_fast["train/optimizer_steps"] == 12
    for a, b in zip(full, fast):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # filtering the all-equal groups out is a different update: the token-mean normaliser shrinks
    filtered, m = _adamw_update(U.AlgoConfig(name="grpo", filter_zero_advantage=True), rewards)
    assert m["train/optimizer_steps"] == 6
    assert any(not torch.allclose(a, b) for a, b in zip(full, filtered))


def test_zero_gradient_steps_are_made_when_every_group_is_all_equal_and_none_is_filtered():
    algo = U.AlgoConfig(name="grpo", filter_zero_advantage=False)
    full, _ = _adamw_update(dataclasses.replace(algo, skip_zero_advantage=False), [1.0] * 8, epochs=2)
    fast, m = _adamw_update(algo, [1.0] * 8, epochs=2)
    assert m["train/optimizer_steps"] == 8
    for a, b in zip(full, fast):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def _tirl(*args):
    return subprocess.run([sys.executable, "-m", "tirl.cli", *args], capture_output=True, text=True,
                          timeout=600, env=os.environ.copy())


@pytest.mark.parametrize("override,needle", [
    ("rollout.n=1", "rollout.n must be >= 2"),
    ("trainer.mini_batch_size=64", "mini_batch_size (64) is larger than the batch"),
    ("algorithm.name=dpo", "grpo, ppo or rloo"),
    ("trainer.lrr=1", "unknown key 'trainer.lrr'"),
    # issue 11: every value that can be checked is checked before anything is written
    ("algorithm.clip_low=1.0", "algorithm.clip_low must be in (0, 1)"),
    ("algorithm.dual_clip=0.5", "algorithm.dual_clip must be 0 (off) or > 1"),
    ("algorithm.kl_kind=k9", "algorithm.kl_kind must be one of k1, k2, k3"),
    ("rollout.temperature=-1", "rollout.temperature must be >= 0"),
    ("trainer.optim.lr=-1e-5", "trainer.optim.lr must be >= 0"),
    ("prompt.style=retol", "unknown tag style 'retol'"),
    ("trainer.optim.schedule=cosin", "trainer.optim.schedule must be 'constant' or 'cosine'"),
    ("model.path=/nonexistent/model", "model.path: /nonexistent/model does not exist"),
    ("data.train=/nonexistent/train.jsonl", "/nonexistent/train.jsonl: no such file"),
])
def test_unworkable_configs_are_refused_before_anything_is_written(tmp_path, override, needle):
    r = _tirl("train", str(CONFIGS / "smoke_grpo.yaml"), override, "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and needle in r.stderr, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "run").exists()


EXPECTED_KEYS = [
    "reward/mean", "reward/accuracy", "tool/code_ratio", "tool/calls_mean", "tool/pass_rate",
    "tool/first_call_pos", "tool/self_correction", "tool/cap_hit_ratio", "response/length_mean",
    "entropy/mean", "policy/clipfrac", "policy/approx_kl", "train/grad_norm", "train/lr",
    "throughput/tokens_per_s", "time/generation_s", "time/sandbox_s", "time/train_s",
    "rollout/logprob_max_diff", "rollout/prefill_tokens",
]


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_cli_smoke_run(tmp_path, algo):
    run = tmp_path / algo
    # An entropy bonus gives the random tiny model a gradient even when every reward is -1.
    r = _tirl("train", str(CONFIGS / f"smoke_{algo}.yaml"), "trainer.steps=2", "algorithm.entropy_coef=0.01",
              "algorithm.kl_coef=0.01", "--run-dir", str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [1, 2]
    missing = [k for k in EXPECTED_KEYS + ["kl/mean"] if k not in metrics[-1]]
    assert not missing, missing
    if algo == "ppo":
        assert "loss/value" in metrics[-1]
    assert (run / "checkpoints" / "step-000002" / "COMPLETE").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and "eval/accuracy" in summary["eval_end"]
    # The isolation level is logged at start and recorded (CI is root: full, which training requires).
    assert summary["sandbox"]["level"] == "full" and metrics[-1]["sandbox/full_isolation"] == 1.0
    assert "sandbox: isolation full" in r.stderr
    base = AutoModelForCausalLM.from_pretrained(run / "base_model")
    trained = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step-000002" / "policy")
    assert any(not torch.equal(a, b) for a, b in zip(base.parameters(), trained.parameters()))


def test_steps_without_update_log_every_key_and_warn_once(tmp_path):
    # The random tiny model never answers: every group is all -1, so GRPO has nothing to update.
    run = tmp_path / "idle"
    r = _tirl("train", str(CONFIGS / "smoke_grpo.yaml"), "trainer.steps=2", "trainer.warn_idle_steps=2",
              "trainer.eval_size=2", "--run-dir", str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = read_metrics(run)
    for m in metrics:  # before: loss/KL/entropy/clip/grad keys were missing on such steps
        missing = [k for k in EXPECTED_KEYS + ["loss/policy", "reward/std", "reward/frac_zero_std"] if k not in m]
        assert not missing, missing
        assert m["reward/frac_zero_std"] == 1.0 and m["train/optimizer_steps"] == 0.0
    assert r.stderr.count("no policy update for 2 steps") == 1
    # the checkpoint carries the prompt settings it was trained with, for tirl eval / serve
    saved = json.loads((run / "checkpoints" / "step-000002" / "policy" / "tirl.json").read_text())
    assert saved["prompt"]["style"] == "retool" and "max_tool_calls" in saved["rollout"]
    # --resume with changed settings says what changed and refuses (unless --force)
    r = _tirl("train", str(CONFIGS / "smoke_grpo.yaml"), "trainer.steps=3", "trainer.warn_idle_steps=2",
              "trainer.eval_size=2", "rollout.temperature=0.5", "--run-dir", str(run), "--resume")
    assert r.returncode == 2 and "rollout.temperature: 1.0 -> 0.5" in r.stderr and "--force" in r.stderr


def _cfg(steps):
    return load_config(RLConfig, CONFIGS / "smoke_ppo.yaml", [f"trainer.steps={steps}", "trainer.save_every=2",
                                                               "trainer.eval_size=2"])


def test_resume_is_exact(tmp_path):
    train_rl(_cfg(4), tmp_path / "straight")
    train_rl(_cfg(2), tmp_path / "resumed")
    train_rl(_cfg(4), tmp_path / "resumed", resume=True)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "checkpoints" / "step-000004" / "policy")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "resumed" / "checkpoints" / "step-000004" / "policy")
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)

    def stable(m):
        # wall-clock figures vary; the 2-step run also evaluated at its last step (eval/*)
        return {k: v for k, v in m.items() if not k.startswith(("time/", "throughput/", "rollout/gen_time",
                                                                "rollout/exec_time", "eval/"))}

    ma, mb = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [m["step"] for m in mb] == [1, 2, 3, 4]
    for x, y in zip(ma, mb):
        x, y = stable(x), stable(y)
        assert x.keys() == y.keys()
        for k in x:  # undefined figures are logged as null
            assert x[k] == y[k] if x[k] is None or isinstance(x[k], str) else x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-6), k


def test_resume_needs_a_checkpoint_and_a_fresh_run_refuses_an_old_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        train_rl(_cfg(2), tmp_path / "empty", resume=True)
    train_rl(_cfg(2), tmp_path / "once")
    with pytest.raises(FileExistsError, match="--resume"):
        train_rl(_cfg(2), tmp_path / "once")


def test_kill_mid_run_then_resume_loses_nothing_but_uncheckpointed_steps(tmp_path):
    import signal
    import time

    run = tmp_path / "killed"
    args = [sys.executable, "-m", "tirl.cli", "train", str(CONFIGS / "smoke_grpo.yaml"), "trainer.steps=6",
            "trainer.save_every=2", "trainer.eval_size=2"]
    proc = subprocess.Popen(args + ["--run-dir", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=os.environ.copy())
    deadline = time.time() + 300
    while not (run / "checkpoints" / "step-000002" / "COMPLETE").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = _tirl("train", str(CONFIGS / "smoke_grpo.yaml"), "trainer.steps=6", "trainer.save_every=2",
              "trainer.eval_size=2", "--run-dir", str(run), "--resume")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert [m["step"] for m in read_metrics(run)] == [1, 2, 3, 4, 5, 6]
    assert (run / "checkpoints" / "step-000006" / "COMPLETE").is_file()
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_a_data_file_never_falls_back_to_the_toy_task_for_held_out_problems(tmp_path):
    from tirl.train.setup import DataConfig, load_split

    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    assert load_split(DataConfig(train=str(data)), "test") == []  # before: 50 built-in arithmetic problems
    assert len(load_split(DataConfig(test_size=3), "test")) == 3  # the built-in task keeps its held-out split


def test_the_critic_warm_up_holds_back_ppo_only(tmp_path):
    # Before: GRPO skipped its policy update for critic_warmup_steps steps too (the demo's first 5 steps).
    runs = {}
    for algo in ("grpo", "ppo"):
        run = tmp_path / algo
        r = _tirl("train", str(CONFIGS / f"smoke_{algo}.yaml"), "trainer.steps=2", "algorithm.critic_warmup_steps=1",
                  "algorithm.entropy_coef=0.01", "trainer.eval_size=1", "--run-dir", str(run))
        assert r.returncode == 0, r.stderr[-3000:]
        runs[algo] = [m["train/optimizer_steps"] for m in read_metrics(run)]
    assert runs["grpo"][0] > 0
    assert runs["ppo"][0] == 0 and runs["ppo"][1] > 0
