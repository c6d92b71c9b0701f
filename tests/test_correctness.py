"""Issue 11's correctness fixes, each pinned by a test that failed before the fix."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from fixtures_models import tiny_model_dir, tiny_tokenizer  # noqa: F401 (fixtures)
from helpers_rollout import SubprocessRunner
from test_rollout import scripted

from tirl.formats import RETOOL, TORL, extract_answer
from tirl.rollout import ToolCall, Trajectory, rollout
from tirl.train import rl_update as U
from tirl.train.batch import RLBatch
from tirl.rollout.episodes import code_ran, grade_trajectory

torch.set_num_threads(1)


def test_an_answer_printed_by_code_is_not_the_models(tiny_tokenizer):
    # Reward hacking route: code that prints \boxed{...}; the model itself never writes an answer.
    hack = "<code>\n```python\nprint('<answer>' + chr(92) + 'boxed{' + str(6*7) + '}</' + 'answer>')\n```\n</code>"
    (t,), _ = rollout(scripted(tiny_tokenizer, [hack]), ["Q: "], tiny_tokenizer, SubprocessRunner(), RETOOL,
                      max_new_tokens=200, max_tool_calls=1, on_tool_cap="stop")
    assert "\\boxed{42}" in t.text and "\\boxed{42}" not in t.model_text  # shown, but not written
    g = grade_trajectory(t, "42", RETOOL)
    assert (g.correct, g.reason) == (False, "no_answer")


def test_retool_style_requires_the_answer_tag():
    assert extract_answer("so \\boxed{7}", RETOOL) is None
    assert extract_answer("<answer>\n\\boxed{7}\n</answer>", RETOOL) == "7"
    assert extract_answer("so \\boxed{7}", TORL) == "7"  # ToRL's rule: the last box anywhere


def test_exec_penalty_applies_when_any_code_did_not_execute():
    def traj(*statuses):
        return Trajectory([1], tool_calls=[ToolCall("x", s, "", 0.0, (0, 0)) for s in statuses],
                          model_text="<answer>\\boxed{3}</answer>")
    assert code_ran(traj()) is None
    assert code_ran(traj("ok", "ok")) is True
    assert code_ran(traj("error", "ok")) is False  # before: True (one clean run hid the failure)
    assert code_ran(traj("ok", "capped")) is True  # over the cap: never offered to the sandbox
    assert grade_trajectory(traj("error", "ok"), "3", RETOOL, exec_penalty=0.5).score == pytest.approx(0.5)


def test_critic_and_policy_load_without_dropout(tiny_model_dir):  # noqa: F811
    from tirl.train.rl import RLConfig
    from tirl.train.rl_models import load_critic as _load_critic, load_policy as _load_policy

    critic = _load_critic(str(tiny_model_dir))
    assert any(isinstance(m, torch.nn.Dropout) for m in critic.modules())
    assert all(m.p == 0 for m in critic.modules() if isinstance(m, torch.nn.Dropout))
    critic.train()  # updates run in train mode: values must equal the eval-mode ones they are clipped to
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    a, b = critic(input_ids=ids).logits, critic(input_ids=ids).logits
    critic.eval()
    assert torch.equal(a, b) and torch.allclose(a, critic(input_ids=ids).logits)
    policy = _load_policy(str(tiny_model_dir), RLConfig())
    assert all(m.p == 0 for m in policy.modules() if isinstance(m, torch.nn.Dropout))


def _rl_batch(mask: torch.Tensor, **fields: torch.Tensor) -> RLBatch:
    """An RLBatch around `mask` (B, T); ids and rollout log-probs are placeholders these tests never read."""
    B, T = mask.shape
    return RLBatch(input_ids=torch.zeros(B, T + 1, dtype=torch.long), attention_mask=torch.ones(B, T + 1),
                   mask=mask, rollout_logprobs=torch.zeros(B, T), row=torch.arange(B), **fields)


@pytest.mark.parametrize("name", ["grpo", "rloo"])
def test_kl_in_reward_changes_grpo_and_rloo_advantages(name):
    torch.manual_seed(0)
    mask = torch.ones(4, 5)
    batch = _rl_batch(mask, old_logprobs=-torch.rand(4, 5), ref_logprobs=-torch.rand(4, 5) * 3)
    rewards = torch.tensor([1.0, 1.0, -1.0, -1.0])
    cfg = U.AlgoConfig(name=name, kl_coef=0.5, kl_kind="k1")
    U.compute_advantages(batch, rewards, dataclasses.replace(cfg, kl_mode="loss"), 4)
    without = batch.advantages.clone()
    m = U.compute_advantages(batch, rewards, dataclasses.replace(cfg, kl_mode="reward"), 4)
    # before: kl_mode=reward validated and was silently ignored (identical advantages)
    assert not torch.allclose(without, batch.advantages)
    kl = (batch.old_logprobs - batch.ref_logprobs).sum(-1)  # k1 summed over each response
    expected = _rl_batch(mask)
    U.compute_advantages(expected, rewards - 0.5 * kl, dataclasses.replace(cfg, kl_coef=0.0), 4)
    torch.testing.assert_close(batch.advantages, expected.advantages)  # the penalty enters as a reward
    assert m["kl/reward_penalty_mean"] == pytest.approx(float(-0.5 * kl.mean()), rel=1e-5)


def test_a_step_without_update_logs_every_policy_key():
    batch = _rl_batch(torch.ones(2, 3), old_logprobs=torch.zeros(2, 3), old_entropy=torch.full((2, 3), 0.7))
    m = U.no_update_metrics(batch, U.AlgoConfig())
    for key in ("loss/policy", "train/grad_norm", "train/optimizer_steps", "policy/clipfrac", "policy/approx_kl"):
        assert m[key] == 0.0
    assert m["entropy/mean"] == pytest.approx(0.7)


def test_a_misspelt_batch_field_raises_and_an_unfilled_one_is_named():
    batch = _rl_batch(torch.ones(2, 3))
    with pytest.raises(AttributeError):
        batch.old_logprob = torch.zeros(2, 3)  # before: a dict took any key, and the update read another
    with pytest.raises(ValueError, match="RLBatch.old_logprobs is not set"):
        U.logprob_mismatch(batch)
