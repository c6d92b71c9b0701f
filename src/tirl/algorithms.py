"""Advantages and losses for RL with a code interpreter: pure tensor functions.

Everything here takes tensors and floats and returns tensors, or ``(loss, metrics)``
where ``metrics`` maps namespaced keys (``"policy/clipfrac"``) to detached Python
floats. No I/O, no configs, no models: the trainer composes these functions.

Still one idea (the math of an RL update), but at ~550 lines over the soft cap: its sections
(checks, masked statistics, advantages, aggregation, losses) become `algorithms/` modules, re-exported
here, in phase B of the restructure (issue 12), together with the other package moves.

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
      by :func:`truncated_is_weights` (TIS), which :func:`policy_loss` takes as ``weights``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# From logits to per-token quantities; re-exported here, where trainers look for them.
from tirl.logprobs import entropy_from_logits, token_logprobs  # noqa: E402

Tensor = torch.Tensor

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-sum", "seq-mean-token-sum-norm")
# verl's name for the Dr. GRPO constant-length mode; the same sum and the same normaliser as seq-sum.
_SEQ_SUM = ("seq-sum", "seq-mean-token-sum-norm")
KL_KINDS = ("k1", "k2", "k3")
# exp() of a log-ratio beyond this overflows float32 long before it means anything; verl and
# TRL clamp similarly. Ratios this far from 1 are clipped by the surrogate anyway.
_MAX_LOG_RATIO = 20.0


# --------------------------------------------------------------------------- checks


def _check_mask(mask: Tensor, like: Tensor, name: str = "mask") -> Tensor:
    """Validate ``mask`` against ``like`` (same shape, only 0/1) and return it as bool."""
    if mask.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)} but the values have shape "
                         f"{tuple(like.shape)}; they must match (B, T)")
    if mask.dtype == torch.bool:
        return mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must hold only 0 and 1 (1 = token sampled by the policy)")
    return mask.bool()


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"shapes must match: {shapes}")
    if len(next(iter(shapes.values()))) != 2:
        raise ValueError(f"expected 2-d (B, T) tensors, got {shapes}")


def _check_group(n: int, group_size: int) -> None:
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for a group baseline, got {group_size}")
    if n % group_size != 0:
        raise ValueError(f"{n} rewards cannot be split into groups of {group_size}: samples of one "
                         f"prompt must be contiguous rows [i*G, (i+1)*G)")


# --------------------------------------------------------------------------- masked statistics


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over positions where ``mask`` is 1 (masked NaN/inf are ignored)."""
    m = _check_mask(mask, x)
    picked = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return picked.sum() if dim is None else picked.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over valid positions; 0 where there are none (instead of NaN)."""
    m = _check_mask(mask, x)
    count = m.sum() if dim is None else m.sum(dim)
    return masked_sum(x, m, dim) / count.clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all valid positions (a scalar).

    Unbiased (Bessel) by default, like verl's ``masked_var``; needs at least 2 valid positions.
    """
    m = _check_mask(mask, x)
    count = int(m.sum())
    if count < (2 if unbiased else 1):
        raise ValueError(f"masked_var needs at least {2 if unbiased else 1} valid positions, got {count}")
    centred = x - masked_mean(x, m)
    var = masked_sum(centred * centred, m) / count
    return var * count / (count - 1) if unbiased else var


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise ``x`` (B, T) to unit variance over valid tokens only; masked positions become 0.

    ``shift_mean=True`` also centres to mean 0 (standard PPO advantage whitening).
    ``shift_mean=False`` keeps the original mean and only rescales the spread around it,
    ``(x - mean) / std + mean``: when every response in a batch is wrong the advantages stay
    negative instead of being half flipped to positive. Statistics use the unbiased variance
    over valid tokens so that prompt, padding and tool tokens never shift them.
    """
    m = _check_mask(mask, x)
    mean = masked_mean(x, m)
    out = (x - mean) * torch.rsqrt(masked_var(x, m) + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, torch.zeros((), dtype=out.dtype, device=out.device))


# --------------------------------------------------------------------------- advantages


def grpo_advantages(rewards: Tensor, group_size: int, scale_by_std: bool = True,
                    eps: float = 1e-6) -> Tensor:
    """Group-normalised advantages of GRPO (Shao et al. 2024): ``(r - mean_g) / (std_g + eps)``.

    Args:
        rewards: (N,) one scalar per response; the G samples of prompt i are rows [i*G, (i+1)*G).
        group_size: G >= 2.
        scale_by_std: False gives Dr. GRPO (Liu et al. 2025), ``r - mean_g``: dividing by the
            group std up-weights prompts that are nearly always solved or failed.
        eps: keeps groups with identical rewards at advantage 0 rather than 0/0.

    Returns:
        (N,) advantages; broadcast over tokens with :func:`expand_to_tokens`.

    The std is the unbiased (Bessel-corrected) sample std, as ``torch.std`` gives by default and
    as verl and TRL use, so a learning rate tuned there transfers. With G=2 and rewards [1, -1]
    this gives +-0.707 (population std would give +-1).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-d (N,), got shape {tuple(rewards.shape)}")
    _check_group(rewards.numel(), group_size)
    groups = (rewards if rewards.is_floating_point() else rewards.float()).view(-1, group_size)
    adv = groups - groups.mean(dim=1, keepdim=True)
    if scale_by_std:
        adv = adv / (groups.std(dim=1, unbiased=True, keepdim=True) + eps)
    return adv.reshape(-1)


def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out advantages (Ahmadian et al. 2024): ``r_i - mean_{j != i} r_j``.

    Args:
        rewards: (N,) with contiguous groups of G as in :func:`grpo_advantages`.
        group_size: G >= 2.

    Returns:
        (N,) advantages. Equal to ``G / (G - 1) * (r_i - mean_g)``; the baseline excludes the
        sample itself, so the policy-gradient estimate stays unbiased.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-d (N,), got shape {tuple(rewards.shape)}")
    _check_group(rewards.numel(), group_size)
    groups = (rewards if rewards.is_floating_point() else rewards.float()).view(-1, group_size)
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - baseline).reshape(-1)


def expand_to_tokens(advantages: Tensor, mask: Tensor) -> Tensor:
    """Broadcast per-sequence advantages (B,) to (B, T), zero on masked positions."""
    if advantages.dim() != 1 or advantages.shape[0] != mask.shape[0]:
        raise ValueError(f"advantages must be (B,) = ({mask.shape[0]},), got {tuple(advantages.shape)}")
    adv = advantages[:, None].expand(mask.shape)
    return torch.where(_check_mask(mask, adv), adv, 0.0)


def outcome_token_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """Place each sequence's scalar reward (B,) on its last sampled token; returns (B, T).

    A sequence with no sampled token cannot carry a reward: that raises ValueError.
    """
    if mask.dim() != 2:
        raise ValueError(f"mask must be (B, T), got shape {tuple(mask.shape)}")
    m = _check_mask(mask, mask)
    if rewards.shape != (m.shape[0],):
        raise ValueError(f"rewards must be (B,) = ({m.shape[0]},), got {tuple(rewards.shape)}")
    if not bool(m.any(dim=1).all()):
        raise ValueError("a sequence has no sampled token (mask row all 0), it cannot carry a reward")
    positions = torch.arange(m.shape[1], device=m.device).expand_as(m)
    last = torch.where(m, positions, -1).max(dim=1).values
    out = torch.zeros(m.shape, dtype=rewards.dtype if rewards.is_floating_point() else torch.float32,
                      device=rewards.device)
    out[torch.arange(m.shape[0], device=m.device), last] = rewards.to(out.dtype)
    return out


@torch.no_grad()
def gae_advantages(token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
                   lam: float = 1.0) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) that jumps over tool tokens.

    Args:
        token_rewards: (B, T) reward per token, nonzero only where mask is 1 (typically the
            outcome reward on the last sampled token, see :func:`outcome_token_rewards`, plus any
            per-token KL penalty).
        values: (B, T) critic values V(s_t); values at masked positions are ignored.
        mask: (B, T) 1 = sampled token.
        gamma, lam: discount and GAE lambda (ReTool's PPO uses 1 and 1).

    Returns:
        (advantages, returns), both (B, T), 0 at masked positions; returns = advantages + values
        on valid tokens (the critic's regression target).

    Tool spans: interpreter output sits in the middle of a response with mask 0. The policy did
    not choose those tokens, so they are not time steps: the backward recursion carries the next
    valid token's value and the running GAE through a masked position unchanged. The TD error of
    the last sampled token before a tool span therefore bootstraps from the value of the first
    sampled token after it, and the critic's values at interpreter tokens never enter. Discounting
    counts sampled tokens only. After the last sampled token the episode ends (next value 0).

    Gradients are not tracked (advantages and returns are targets).
    """
    _check_same_shape(token_rewards=token_rewards, values=values)
    m = _check_mask(mask, values)
    if bool((token_rewards[~m] != 0).any()):
        raise ValueError("token_rewards has nonzero entries at masked positions (mask 0); a reward "
                         "there would be silently lost: put it on a sampled token")
    B, T = values.shape
    rewards, vals = token_rewards.to(values.dtype), values
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)
    running = torch.zeros_like(next_value)
    advantages = torch.zeros_like(vals)
    for t in range(T - 1, -1, -1):
        valid = m[:, t]
        delta = rewards[:, t] + gamma * next_value - vals[:, t]
        new_running = delta + gamma * lam * running
        running = torch.where(valid, new_running, running)
        next_value = torch.where(valid, vals[:, t], next_value)
        advantages[:, t] = torch.where(valid, new_running, 0.0)
    returns = torch.where(m, advantages + vals, 0.0)
    return advantages, returns


# --------------------------------------------------------------------------- aggregation


def aggregate(loss_mat: Tensor, mask: Tensor, mode: str = "token-mean",
              normalizer: float | None = None) -> Tensor:
    """Reduce a per-token loss (B, T) to a scalar; the one place that decides how.

    Modes (each is a sum divided by ``normalizer``):
        ``"token-mean"``: sum over all valid tokens / number of valid tokens. Every token weighs
            the same (DAPO); long responses weigh more.
        ``"seq-mean-token-mean"``: per sequence the mean over its valid tokens, then summed over
            sequences / number of sequences with a valid token (original GRPO, PPO in RLHF).
        ``"seq-sum"``: sum over all valid tokens / (B * T) by default, i.e. the mean over sequences
            of (token sum / constant length). Dr. GRPO: pass ``normalizer = number of sequences
            * max response length`` so that no length-dependent factor biases the gradient.
            ``"seq-mean-token-sum-norm"`` is verl's name for it and behaves identically.

    Args:
        loss_mat: (B, T) per-token loss.
        mask: (B, T) 1 = counts.
        mode: one of ``AGG_MODES``.
        normalizer: the denominator. None uses the local batch as described above. With gradient
            accumulation pass :func:`global_normalizer` of the whole mini-batch's mask: then the
            sum of micro-batch losses equals the full-batch loss exactly.

    Returns:
        0-d tensor. An all-masked batch gives 0 (with a zero gradient), never NaN.
    """
    m = _check_mask(mask, loss_mat)
    picked = torch.where(m, loss_mat, torch.zeros((), dtype=loss_mat.dtype, device=loss_mat.device))
    if mode == "token-mean":
        total = picked.sum()
    elif mode == "seq-mean-token-mean":
        total = (picked.sum(dim=1) / m.sum(dim=1).clamp(min=1)).sum()
    elif mode in _SEQ_SUM:
        total = picked.sum()
    else:
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {AGG_MODES}")
    if normalizer is None:
        normalizer = global_normalizer(m, mode)
    if normalizer <= 0:
        raise ValueError(f"normalizer must be positive, got {normalizer}")
    return total / normalizer


def global_normalizer(mask: Tensor, mode: str, seq_len: int | None = None) -> float:
    """The denominator :func:`aggregate` uses for ``mask`` (B, T), as a float.

    Compute it once on the whole mini-batch mask and pass it to every micro-batch loss.
    ``seq_len`` (seq-sum only) is the constant length; default ``mask.shape[1]``. With
    micro-batches padded to different lengths, pass the configured maximum response length.
    Never below 1, so an all-masked batch gives a zero loss.
    """
    m = mask.bool() if mask.dtype != torch.bool else mask
    if m.dim() != 2:
        raise ValueError(f"mask must be (B, T), got shape {tuple(m.shape)}")
    if mode == "token-mean":
        n = float(m.sum())
    elif mode == "seq-mean-token-mean":
        n = float(m.any(dim=1).sum())
    elif mode in _SEQ_SUM:
        n = float(m.shape[0] * (m.shape[1] if seq_len is None else seq_len))
    else:
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {AGG_MODES}")
    return max(n, 1.0)


# --------------------------------------------------------------------------- losses


def _float(x: Tensor) -> float:
    return float(x.detach())


def truncated_is_weights(old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor,
                         cap: float) -> tuple[Tensor, dict]:
    """Truncated importance sampling (TIS) weights min(pi_old / pi_rollout, cap), per token, no grad.

    When another engine (a vLLM server, stale weights, bf16 sampling) generated the rollout, the
    tokens come from pi_rollout, not from the trainer's pi_old that the PPO ratio starts from. The
    weight corrects for that; the cap bounds its variance. Where the two agree, every weight is 1.

    Returns ((B, T) weights, 0 at masked positions, and metrics ``tis/weight_mean``,
    ``tis/clipped_frac`` (share of tokens at the cap) over valid tokens).
    """
    _check_same_shape(old_logprobs=old_logprobs, rollout_logprobs=rollout_logprobs)
    if cap <= 0:
        raise ValueError(f"the TIS cap must be positive, got {cap}")
    m = _check_mask(mask, old_logprobs)
    log_w = torch.where(m, old_logprobs.detach() - rollout_logprobs.detach(), 0.0)
    raw = torch.exp(log_w.clamp(max=_MAX_LOG_RATIO))
    w = torch.where(m, raw.clamp(max=cap), 0.0)
    metrics = {"tis/weight_mean": _float(masked_mean(w, m)),
               "tis/clipped_frac": _float(masked_mean((raw > cap).float(), m))}
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
    _check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs)
    m = _check_mask(mask, logprobs)
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
    log_ratio = torch.where(m, logprobs - old_logprobs.detach(), 0.0).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
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
        _check_same_shape(weights=weights, logprobs=logprobs)
        loss_mat = loss_mat * torch.where(m, weights.detach().to(loss_mat.dtype), 0.0)
    loss = aggregate(loss_mat, m, agg, normalizer)

    with torch.no_grad():
        clip_active = clipped > unclipped
        metrics = {
            "policy/clipfrac": _float(masked_mean(clip_active.float(), m)),
            "policy/clipfrac_low": _float(masked_mean((clip_active & (ratio < 1)).float(), m)),
            "policy/clipfrac_high": _float(masked_mean((clip_active & (ratio > 1)).float(), m)),
            "policy/dual_clipfrac": _float(masked_mean(dual_active.float(), m)),
            "policy/approx_kl": _float(masked_mean(ratio - 1 - log_ratio, m)),
            "policy/ratio_mean": _float(masked_mean(ratio, m)),
            "policy/ratio_max": _float(torch.where(m, ratio, 0.0).max()) if m.any() else 0.0,
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
    _check_same_shape(values=values, old_values=old_values, returns=returns)
    m = _check_mask(mask, values)
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
            "value/clipfrac": _float(masked_mean(clip_active.float(), m)),
            "value/mean": _float(masked_mean(values, m)),
            "value/mse": _float(masked_mean(err, m)),
        }
    return loss, metrics


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
    _check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_ratio = ref_logprobs.detach() - logprobs
    if mask is not None:
        log_ratio = torch.where(_check_mask(mask, logprobs), log_ratio, 0.0)
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    if kind == "k3":
        log_ratio = log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        return torch.exp(log_ratio) - 1 - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_KINDS}")


def kl_loss(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, kind: str = "k3",
            agg: str = "token-mean", normalizer: float | None = None) -> tuple[Tensor, dict]:
    """KL to the reference policy as a loss term (GRPO style); multiply by the KL coefficient.

    Shapes (B, T). Returns (loss, {"kl/mean": mean per-token estimate over valid tokens}).
    """
    kl = kl_penalty(logprobs, ref_logprobs, kind, mask)
    loss = aggregate(kl, mask, agg, normalizer)
    return loss, {"kl/mean": _float(masked_mean(kl.detach(), mask))}


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


def entropy_loss(entropy: Tensor, mask: Tensor, agg: str = "token-mean",
                 normalizer: float | None = None) -> tuple[Tensor, dict]:
    """Negative aggregated entropy (B, T) -> scalar: adding ``coef * loss`` rewards exploration.

    Returns (loss, {"entropy/mean": mean entropy over valid tokens}).
    """
    loss = -aggregate(entropy, mask, agg, normalizer)
    return loss, {"entropy/mean": _float(masked_mean(entropy.detach(), mask))}


__all__ = [
    "AGG_MODES", "KL_KINDS", "masked_sum", "masked_mean", "masked_var", "whiten",
    "grpo_advantages", "rloo_advantages", "expand_to_tokens", "outcome_token_rewards",
    "gae_advantages", "aggregate", "global_normalizer", "policy_loss", "truncated_is_weights", "adaptive_kl_coef", "value_loss",
    "kl_penalty", "kl_loss", "kl_reward_penalty", "entropy_from_logits", "entropy_loss",
    "token_logprobs",
]
