"""Masked statistics and the checks every function of `tirl.algorithms` runs on its inputs.

Masked positions never enter a statistic: values are picked with `torch.where`, not multiplied by the
mask, so a NaN/inf at a masked position cannot leak.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

# exp() of a log-ratio beyond this overflows float32 long before it means anything; verl and
# TRL clamp similarly. Ratios this far from 1 are clipped by the surrogate anyway.
MAX_LOG_RATIO = 20.0


def check_mask(mask: Tensor, like: Tensor, name: str = "mask") -> Tensor:
    """Validate ``mask`` against ``like`` (same shape, only 0/1) and return it as bool."""
    if mask.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)} but the values have shape "
                         f"{tuple(like.shape)}; they must match (B, T)")
    if mask.dtype == torch.bool:
        return mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must hold only 0 and 1 (1 = token sampled by the policy)")
    return mask.bool()


def check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"shapes must match: {shapes}")
    if len(next(iter(shapes.values()))) != 2:
        raise ValueError(f"expected 2-d (B, T) tensors, got {shapes}")


def check_group(n: int, group_size: int) -> None:
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for a group baseline, got {group_size}")
    if n % group_size != 0:
        raise ValueError(f"{n} rewards cannot be split into groups of {group_size}: samples of one "
                         f"prompt must be contiguous rows [i*G, (i+1)*G)")


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over positions where ``mask`` is 1 (masked NaN/inf are ignored)."""
    m = check_mask(mask, x)
    picked = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return picked.sum() if dim is None else picked.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over valid positions; 0 where there are none (instead of NaN)."""
    m = check_mask(mask, x)
    count = m.sum() if dim is None else m.sum(dim)
    return masked_sum(x, m, dim) / count.clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all valid positions (a scalar).

    Unbiased (Bessel) by default, like verl's ``masked_var``; needs at least 2 valid positions.
    """
    m = check_mask(mask, x)
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
    m = check_mask(mask, x)
    mean = masked_mean(x, m)
    out = (x - mean) * torch.rsqrt(masked_var(x, m) + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, torch.zeros((), dtype=out.dtype, device=out.device))


def as_float(x: Tensor) -> float:
    return float(x.detach())
