"""Advantages: GRPO and RLOO per group of samples, GAE with a critic (jumping over tool tokens), and the
helpers that put a sequence's reward or advantage on its tokens."""

from __future__ import annotations

import torch

from tirl.algorithms.masked import Tensor, check_group, check_mask, check_same_shape


def grpo_advantages(rewards: Tensor, group_size: int, scale_by_std: bool = True,
                    eps: float = 1e-6, valid: Tensor | None = None) -> Tensor:
    """Group-normalised advantages of GRPO (Shao et al. 2024): ``(r - mean_g) / (std_g + eps)``.

    Args:
        rewards: (N,) one scalar per response; the G samples of prompt i are rows [i*G, (i+1)*G).
        group_size: G >= 2.
        scale_by_std: False gives Dr. GRPO (Liu et al. 2025), ``r - mean_g``: dividing by the
            group std up-weights prompts that are nearly always solved or failed.
        eps: keeps groups with identical rewards at advantage 0 rather than 0/0.
        valid: optional (N,) bool, False for a sample that is no sample (the infrastructure failed
            it): each group's mean and std are over its valid samples only, as if the group had only
            those; invalid samples, and groups with fewer than 2 valid ones, get advantage 0.

    Returns:
        (N,) advantages; broadcast over tokens with :func:`expand_to_tokens`.

    The std is the unbiased (Bessel-corrected) sample std, as ``torch.std`` gives by default and
    as verl and TRL use, so a learning rate tuned there transfers. With G=2 and rewards [1, -1]
    this gives +-0.707 (population std would give +-1).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-d (N,), got shape {tuple(rewards.shape)}")
    check_group(rewards.numel(), group_size)
    groups = (rewards if rewards.is_floating_point() else rewards.float()).view(-1, group_size)
    if valid is not None:
        return _masked_grpo(groups, _valid_groups(valid, rewards, group_size), scale_by_std, eps)
    adv = groups - groups.mean(dim=1, keepdim=True)
    if scale_by_std:
        adv = adv / (groups.std(dim=1, unbiased=True, keepdim=True) + eps)
    return adv.reshape(-1)


def _valid_groups(valid: Tensor, rewards: Tensor, group_size: int) -> Tensor:
    if valid.shape != rewards.shape or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor shaped like rewards {tuple(rewards.shape)}, got "
                         f"{valid.dtype} {tuple(valid.shape)}")
    return valid.to(rewards.device).view(-1, group_size)


def _masked_grpo(groups: Tensor, v: Tensor, scale_by_std: bool, eps: float) -> Tensor:
    """GRPO over the valid entries `v` of each group (see `grpo_advantages`)."""
    count = v.sum(dim=1, keepdim=True)
    mean = torch.where(v, groups, 0.0).sum(dim=1, keepdim=True) / count.clamp(min=1)
    adv = torch.where(v, groups - mean, 0.0)
    if scale_by_std:
        std = ((adv ** 2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
        adv = adv / (std + eps)
    return torch.where(v & (count >= 2), adv, 0.0).reshape(-1)


def rloo_advantages(rewards: Tensor, group_size: int, valid: Tensor | None = None) -> Tensor:
    """REINFORCE leave-one-out advantages (Ahmadian et al. 2024): ``r_i - mean_{j != i} r_j``.

    Args:
        rewards: (N,) with contiguous groups of G as in :func:`grpo_advantages`.
        group_size: G >= 2.
        valid: optional (N,) bool as in :func:`grpo_advantages`: the baseline is the mean of the other
            valid samples; invalid samples, and groups with fewer than 2 valid ones, get 0.

    Returns:
        (N,) advantages. Equal to ``G / (G - 1) * (r_i - mean_g)``; the baseline excludes the
        sample itself, so the policy-gradient estimate stays unbiased.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-d (N,), got shape {tuple(rewards.shape)}")
    check_group(rewards.numel(), group_size)
    groups = (rewards if rewards.is_floating_point() else rewards.float()).view(-1, group_size)
    if valid is not None:
        v = _valid_groups(valid, rewards, group_size)
        count = v.sum(dim=1, keepdim=True)
        kept = torch.where(v, groups, 0.0)
        baseline = (kept.sum(dim=1, keepdim=True) - kept) / (count - 1).clamp(min=1)
        return torch.where(v & (count >= 2), groups - baseline, 0.0).reshape(-1)
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - baseline).reshape(-1)


def expand_to_tokens(advantages: Tensor, mask: Tensor) -> Tensor:
    """Broadcast per-sequence advantages (B,) to (B, T), zero on masked positions."""
    if advantages.dim() != 1 or advantages.shape[0] != mask.shape[0]:
        raise ValueError(f"advantages must be (B,) = ({mask.shape[0]},), got {tuple(advantages.shape)}")
    adv = advantages[:, None].expand(mask.shape)
    return torch.where(check_mask(mask, adv), adv, 0.0)


def outcome_token_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """Place each sequence's scalar reward (B,) on its last sampled token; returns (B, T).

    A sequence with no sampled token cannot carry a reward: that raises ValueError.
    """
    if mask.dim() != 2:
        raise ValueError(f"mask must be (B, T), got shape {tuple(mask.shape)}")
    m = check_mask(mask, mask)
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
    check_same_shape(token_rewards=token_rewards, values=values)
    m = check_mask(mask, values)
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
