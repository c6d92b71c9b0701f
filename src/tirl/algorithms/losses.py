"""Losses: the clipped policy surrogate (with clip-higher, dual clip and TIS weights), the clipped value
loss, the entropy bonus; each returns `(loss, metrics)` with namespaced, detached float metrics."""

from __future__ import annotations

import torch

from tirl.algorithms.aggregate import aggregate
from tirl.algorithms.masked import MAX_LOG_RATIO, Tensor, as_float, check_mask, check_same_shape, masked_mean


def truncated_is_weights(old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor,
                         cap: float) -> tuple[Tensor, dict]:
    """Truncated importance sampling (TIS) weights min(pi_old / pi_rollout, cap), per token, no grad.

    When another engine (a vLLM server, stale weights, bf16 sampling) generated the rollout, the
    tokens come from pi_rollout, not from the trainer's pi_old that the PPO ratio starts from. The
    weight corrects for that; the cap bounds its variance. Where the two agree, every weight is 1.

    A rollout log-prob of NaN means unknown (the OpenAI backend's re-tokenised outputs and the stop
    text it appends): nothing to correct with, so that token keeps weight 1, as it would without TIS,
    and the NaN never reaches the weights (picked with `torch.where`).

    Returns ((B, T) weights, 0 at masked positions, and metrics over valid tokens:
    ``tis/weight_mean`` (the mean factor the loss gets, unknown tokens at their 1) and
    ``tis/clipped_frac`` (share of tokens at the cap; an unknown one never is)).
    """
    check_same_shape(old_logprobs=old_logprobs, rollout_logprobs=rollout_logprobs)
    if cap <= 0:
        raise ValueError(f"the TIS cap must be positive, got {cap}")
    m = check_mask(mask, old_logprobs)
    known = m & ~torch.isnan(rollout_logprobs)
    log_w = torch.where(known, old_logprobs.detach() - rollout_logprobs.detach(), 0.0)
    raw = torch.exp(log_w.clamp(max=MAX_LOG_RATIO))
    clipped = known & (raw > cap)
    w = torch.where(known, raw.clamp(max=cap), torch.where(m, 1.0, 0.0))
    metrics = {"tis/weight_mean": as_float(masked_mean(w, m)),
               "tis/clipped_frac": as_float(masked_mean(clipped.float(), m))}
    return w, metrics


def decoupled_is_weights(prox_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor,
                         cap: float) -> tuple[Tensor, dict]:
    """Decoupled PPO's behaviour weights (Hilton et al. 2021; AReaL, Fu et al. 2025), per token, no grad.

    With asynchronous rollouts the tokens were sampled by a behaviour policy up to k updates older than
    the proximal policy the PPO ratio starts from (the learner's weights before the update). The loss
    then weighs each token by pi_prox / pi_behav, in full; a token whose weight exceeds ``cap`` is masked
    (weight 0: no gradient, still counted in the normaliser, like a token the clip zeroes), as AReaL's
    ``behav_imp_weight_cap`` does, instead of truncated to the cap as :func:`truncated_is_weights` does.

    A behaviour log-prob of NaN (unknown) keeps weight 1, as in :func:`truncated_is_weights`.

    Returns ((B, T) weights, 0 at masked positions, and metrics over valid tokens:
    ``decoupled/weight_mean`` (of the weights the loss gets), ``decoupled/weight_max`` (the largest raw
    weight, masked ones included) and ``decoupled/masked_frac`` (share of tokens over the cap)).
    """
    check_same_shape(prox_logprobs=prox_logprobs, behaviour_logprobs=behaviour_logprobs)
    if cap <= 0:
        raise ValueError(f"the decoupled PPO cap must be positive, got {cap}")
    m = check_mask(mask, prox_logprobs)
    known = m & ~torch.isnan(behaviour_logprobs)
    log_w = torch.where(known, prox_logprobs.detach() - behaviour_logprobs.detach(), 0.0)
    raw = torch.exp(log_w.clamp(max=MAX_LOG_RATIO))
    over = known & (raw > cap)
    w = torch.where(over, 0.0, torch.where(known, raw, torch.where(m, 1.0, 0.0)))
    metrics = {"decoupled/weight_mean": as_float(masked_mean(w, m)),
               "decoupled/weight_max": as_float(torch.where(m, raw, 0.0).max()) if m.any() else 0.0,
               "decoupled/masked_frac": as_float(masked_mean(over.float(), m))}
    return w, metrics


def policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                clip_low: float = 0.2, clip_high: float = 0.2, dual_clip: float | None = None,
                agg: str = "token-mean", normalizer: float | None = None,
                weights: Tensor | None = None) -> tuple[Tensor, dict]:
    """PPO clipped surrogate (Schulman et al. 2017) with clip-higher and dual clip.

    Per token, with ratio r = exp(logprobs - old_logprobs) and advantage A:
        loss = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))
    and, if ``dual_clip`` = c > 1, for A < 0 only (Ye et al. 2020): loss = min(loss, -c A), which
    bounds how hard a very large ratio is pushed down. ``clip_high > clip_low`` is DAPO's
    clip-higher (ReTool: 0.2 / 0.28, dual clip 10).

    Args:
        logprobs: (B, T) log-probs of the sampled tokens under the current policy (with grad).
        old_logprobs: (B, T) under the policy that sampled them (no grad needed).
        advantages: (B, T), or (B,) broadcast over tokens (GRPO / RLOO).
        mask: (B, T) 1 = sampled token.
        agg, normalizer: see :func:`aggregate`.
        weights: optional (B, T) per-token factors (no grad) applied to the clipped loss, e.g.
            :func:`truncated_is_weights`; None = 1 everywhere.

    Returns:
        (loss, metrics). Metrics, over valid tokens of this call:
            ``policy/clipfrac``: share of tokens whose gradient the clip zeroes,
            ``policy/clipfrac_low`` / ``policy/clipfrac_high``: ... below / above the range,
            ``policy/dual_clipfrac``: share where the dual-clip bound is active,
            ``policy/approx_kl``: k3 estimate of KL(old || new), mean of (r - 1) - log r over the
                tokens sampled from the old policy (unbiased and >= 0, as in cleanrl/verl),
            ``policy/ratio_mean``, ``policy/ratio_max``.
    """
    check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs)
    m = check_mask(mask, logprobs)
    if advantages.dim() == 1:
        if advantages.shape[0] != logprobs.shape[0]:
            raise ValueError(f"advantages (B,) has {advantages.shape[0]} rows, logprobs has "
                             f"{logprobs.shape[0]}")
        advantages = advantages[:, None].expand_as(logprobs)
    elif advantages.shape != logprobs.shape:
        raise ValueError(f"advantages shape {tuple(advantages.shape)} must be (B,) or (B, T) = "
                         f"{tuple(logprobs.shape)}")
    if clip_low < 0 or clip_high < 0 or clip_low >= 1:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if dual_clip is not None and dual_clip <= 1:
        raise ValueError(f"dual_clip must be > 1 (Ye et al. 2020), got {dual_clip}")

    # where(), not multiplication: a garbage log-prob at padding must not become inf/NaN.
    log_ratio = torch.where(m, logprobs - old_logprobs.detach(), 0.0).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    adv = torch.where(m, advantages.detach().to(ratio.dtype), 0.0)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss_mat = torch.maximum(unclipped, clipped)
    dual_active = torch.zeros_like(m)
    if dual_clip is not None:
        bound = -adv * dual_clip
        dual_active = (adv < 0) & (loss_mat > bound)
        loss_mat = torch.where(adv < 0, torch.minimum(loss_mat, bound), loss_mat)
    if weights is not None:
        check_same_shape(weights=weights, logprobs=logprobs)
        loss_mat = loss_mat * torch.where(m, weights.detach().to(loss_mat.dtype), 0.0)
    loss = aggregate(loss_mat, m, agg, normalizer)

    with torch.no_grad():
        clip_active = clipped > unclipped
        metrics = {
            "policy/clipfrac": as_float(masked_mean(clip_active.float(), m)),
            "policy/clipfrac_low": as_float(masked_mean((clip_active & (ratio < 1)).float(), m)),
            "policy/clipfrac_high": as_float(masked_mean((clip_active & (ratio > 1)).float(), m)),
            "policy/dual_clipfrac": as_float(masked_mean(dual_active.float(), m)),
            "policy/approx_kl": as_float(masked_mean(ratio - 1 - log_ratio, m)),
            "policy/ratio_mean": as_float(masked_mean(ratio, m)),
            "policy/ratio_max": as_float(torch.where(m, ratio, 0.0).max()) if m.any() else 0.0,
        }
    return loss, metrics


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
               clip: float | None = 0.2, agg: str = "token-mean",
               normalizer: float | None = None) -> tuple[Tensor, dict]:
    """Clipped value loss of PPO: ``0.5 * max((V - R)^2, (V_clip - R)^2)``.

    ``V_clip = old_V + clamp(V - old_V, -clip, clip)`` keeps the critic close to the values it
    had at rollout time; ``clip=None`` gives the plain squared error.

    Args:
        values: (B, T) current critic values (with grad).
        old_values: (B, T) values at rollout time. returns: (B, T) targets from
            :func:`gae_advantages`. mask: (B, T) 1 = sampled token.

    Returns:
        (loss, metrics) with ``value/clipfrac`` (share of tokens where the clipped error is the
        larger, so the gradient is zero), ``value/mean``, ``value/mse`` (unclipped).
    """
    check_same_shape(values=values, old_values=old_values, returns=returns)
    m = check_mask(mask, values)
    v = torch.where(m, values, 0.0)
    ret = torch.where(m, returns.detach(), 0.0)
    err = (v - ret) ** 2
    if clip is None:
        loss_mat = 0.5 * err
        clip_active = torch.zeros_like(m)
    else:
        old = torch.where(m, old_values.detach(), 0.0)
        v_clipped = old + (v - old).clamp(-clip, clip)
        err_clipped = (v_clipped - ret) ** 2
        loss_mat = 0.5 * torch.maximum(err, err_clipped)
        clip_active = err_clipped > err
    loss = aggregate(loss_mat, m, agg, normalizer)
    with torch.no_grad():
        metrics = {
            "value/clipfrac": as_float(masked_mean(clip_active.float(), m)),
            "value/mean": as_float(masked_mean(values, m)),
            "value/mse": as_float(masked_mean(err, m)),
        }
    return loss, metrics


def entropy_loss(entropy: Tensor, mask: Tensor, agg: str = "token-mean",
                 normalizer: float | None = None) -> tuple[Tensor, dict]:
    """Negative aggregated entropy (B, T) -> scalar: adding ``coef * loss`` rewards exploration.

    Returns (loss, {"entropy/mean": mean entropy over valid tokens}).
    """
    loss = -aggregate(entropy, mask, agg, normalizer)
    return loss, {"entropy/mean": as_float(masked_mean(entropy.detach(), mask))}
