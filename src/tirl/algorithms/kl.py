"""KL to a reference policy: per-token estimators (k1, k2, k3), as a loss term or a reward penalty, and
the adaptive coefficient controller."""

from __future__ import annotations

import torch

from tirl.algorithms.aggregate import aggregate
from tirl.algorithms.masked import MAX_LOG_RATIO, Tensor, as_float, check_mask, check_same_shape, masked_mean

KL_KINDS = ("k1", "k2", "k3")


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k3",
               mask: Tensor | None = None) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled by pi (Schulman 2020), (B, T).

    With log-ratio ``lr = ref_logprobs - logprobs``:
        ``k1 = -lr`` (unbiased, can be negative, high variance);
        ``k2 = lr^2 / 2`` (biased, low variance; its gradient is the true KL gradient);
        ``k3 = exp(lr) - 1 - lr`` (unbiased and always >= 0: GRPO's "low-variance KL").

    As a loss term use k3 or k2; k1's gradient is zero in expectation, so k1 is only useful as a
    reward penalty. With ``mask`` given, masked positions return 0 with zero gradient; k3's
    log-ratio is clamped to +-20 so exp() cannot overflow.
    """
    check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_ratio = ref_logprobs.detach() - logprobs
    if mask is not None:
        log_ratio = torch.where(check_mask(mask, logprobs), log_ratio, 0.0)
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    if kind == "k3":
        log_ratio = log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
        return torch.exp(log_ratio) - 1 - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_KINDS}")


def kl_loss(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, kind: str = "k3",
            agg: str = "token-mean", normalizer: float | None = None) -> tuple[Tensor, dict]:
    """KL to the reference policy as a loss term (GRPO style); multiply by the KL coefficient.

    Shapes (B, T). Returns (loss, {"kl/mean": mean per-token estimate over valid tokens}).
    """
    kl = kl_penalty(logprobs, ref_logprobs, kind, mask)
    loss = aggregate(kl, mask, agg, normalizer)
    return loss, {"kl/mean": as_float(masked_mean(kl.detach(), mask))}


def adaptive_kl_coef(coef: float, observed_kl: float, target: float, n_samples: int, horizon: int) -> float:
    """The next KL coefficient of the adaptive controller (Ziegler et al. 2019): move it by at most
    20% x n_samples / horizon per step, up when the observed KL is above `target`, down when below."""
    if target <= 0 or horizon <= 0:
        raise ValueError(f"adaptive KL needs target > 0 and horizon > 0, got {target}, {horizon}")
    error = min(max(observed_kl / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + error * n_samples / horizon)


@torch.no_grad()
def kl_reward_penalty(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, coef: float,
                      kind: str = "k1") -> Tensor:
    """Per-token reward ``-coef * KL`` for PPO-style KL control (Ziegler et al. 2019), (B, T).

    Add it to :func:`outcome_token_rewards` before :func:`gae_advantages`. Zero at masked positions,
    detached (rewards are not differentiated). k1 is the classic choice here: unbiased, and
    its sign noise averages out through the returns.
    """
    return -coef * kl_penalty(logprobs, ref_logprobs, kind, mask)
