"""Loss aggregation, the one place that decides how a per-token loss (B, T) becomes a scalar.

Each mode is "a sum divided by a normaliser"; by default the normaliser comes from the local batch, and
a trainer with gradient accumulation passes the normaliser of the whole mini-batch
(`global_normalizer`), so that the sum of micro-batch losses equals the full-batch loss.
"""

from __future__ import annotations

import torch

from tirl.algorithms.masked import Tensor, check_mask

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-sum", "seq-mean-token-sum-norm")
# Both sum every valid token; seq-sum divides by B * T, verl's seq-mean-token-sum-norm by T alone.
_SEQ_SUM = ("seq-sum", "seq-mean-token-sum-norm")


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
        ``"seq-mean-token-sum-norm"``: verl's Dr. GRPO mode, as its ``agg_loss`` defines it: sum over
            all valid tokens / T (the max response length, ``loss_scale_factor``'s default), not
            divided by the number of sequences, so B times ``"seq-sum"`` (a learning rate tuned on
            verl transfers). verl's dp_actor further divides each micro-batch's loss by its
            gradient-accumulation steps, which makes its step depend on the micro-batch size; here
            the whole mini-batch is one call of ``agg_loss`` whatever the micro-batches.

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
    m = check_mask(mask, loss_mat)
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
    ``seq_len`` (seq-sum and seq-mean-token-sum-norm) is the constant length; default ``mask.shape[1]``. With
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
        n = float(m.shape[1] if seq_len is None else seq_len)
        if mode == "seq-sum":
            n *= m.shape[0]
    else:
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {AGG_MODES}")
    return max(n, 1.0)
