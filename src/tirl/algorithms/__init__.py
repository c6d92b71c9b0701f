"""Advantages and losses for RL with a code interpreter: pure tensor functions.

Everything here takes tensors and floats and returns tensors, or ``(loss, metrics)``
where ``metrics`` maps namespaced keys (``"policy/clipfrac"``) to detached Python
floats. No I/O, no configs, no models: the trainer composes these functions.

Modules: `masked` (masked statistics, input checks), `advantages` (GRPO, RLOO, GAE), `aggregate`
(loss aggregation), `losses` (policy, value, entropy, TIS weights), `kl` (KL estimators, loss and
reward penalty, adaptive coefficient), `logprobs` (log-probs and entropies from logits). Every public
name is re-exported here: `from tirl import algorithms as A; A.policy_loss(...)`.

Notation:
    B: number of sequences (responses) in a (micro-)batch.
    T: number of response tokens (padded).
    V: vocabulary size.
    G: group size, the number of samples drawn for one prompt.
    N: number of scalar rewards, N = (number of prompts) * G.

Mask contract (every function that takes ``mask``): ``mask`` is (B, T), bool or a float
holding only 0 and 1. 1 marks a token the policy sampled; 0 marks prompt, padding or
interpreter output (tool tokens in the middle of a response). Masked positions contribute
exactly nothing: losses pick values with ``torch.where`` rather than multiplying by the mask,
so a NaN/inf at a masked position (e.g. a log-prob of padding) cannot leak into the loss or
its gradient, and their gradient is exactly zero.

Loss aggregation lives in one function, :func:`aggregate`, used by every loss. Each mode is
"a sum divided by a normaliser"; by default the normaliser comes from the local batch, and a
trainer with gradient accumulation passes the normaliser of the whole mini-batch (see
:func:`global_normalizer`) so that the sum of micro-batch losses equals the full-batch loss.

Simplifications / not covered:
    - Outcome rewards only enter PPO through :func:`outcome_token_rewards` (reward on the last
      sampled token); process rewards are possible through ``gae_advantages`` but untested here.
    - No DAPO dynamic sampling (dropping groups whose rewards are all equal): such groups simply
      get zero GRPO advantages. The trainer may filter them.
    - No sequence-level importance ratios (GSPO). Rollout/trainer mismatch is corrected per token
      by :func:`truncated_is_weights` (TIS) or :func:`decoupled_is_weights` (decoupled PPO), which
      :func:`policy_loss` takes as ``weights``.
"""

from tirl.algorithms.advantages import (
    expand_to_tokens,
    gae_advantages,
    grpo_advantages,
    outcome_token_rewards,
    rloo_advantages,
)
from tirl.algorithms.aggregate import AGG_MODES, aggregate, global_normalizer
from tirl.algorithms.kl import KL_KINDS, adaptive_kl_coef, kl_loss, kl_penalty, kl_reward_penalty
from tirl.algorithms.logprobs import entropy_from_logits, model_token_logprobs, token_logprobs
from tirl.algorithms.losses import decoupled_is_weights, entropy_loss, policy_loss, truncated_is_weights, value_loss
from tirl.algorithms.masked import masked_mean, masked_sum, masked_var, whiten

__all__ = [
    "AGG_MODES", "KL_KINDS", "masked_sum", "masked_mean", "masked_var", "whiten",
    "grpo_advantages", "rloo_advantages", "expand_to_tokens", "outcome_token_rewards",
    "gae_advantages", "aggregate", "global_normalizer", "policy_loss", "truncated_is_weights", "decoupled_is_weights", "adaptive_kl_coef", "value_loss",
    "kl_penalty", "kl_loss", "kl_reward_penalty", "entropy_from_logits", "entropy_loss",
    "model_token_logprobs", "token_logprobs",
]
