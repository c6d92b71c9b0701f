"""From logits to per-token log-probabilities and entropies, memory-aware.

Notation: B sequences, T positions, V vocabulary. The caller aligns positions (logits at t score the
token at t) and divides logits by the sampling temperature first.
"""

from __future__ import annotations

import torch
from torch import Tensor


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the softmax over the last dim: (B, T, V) -> (B, T).

    ``H = logsumexp(z) - sum softmax(z) * z``, stable for large logits (no log of a tiny p).
    Computed in float32 when logits are half precision.
    """
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    p = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1)


class _ChunkedTokenLogprob(torch.autograd.Function):
    """gather(z) - logsumexp(z) in float32 (float64 stays float64) chunks of rows; backward recomputes softmax per chunk.

    Saves only the input logits (held by the caller anyway) and the (B, T) logsumexp, so no
    float32 (B, T, V) copy outlives one chunk, in forward or backward.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, tokens: Tensor, step: int) -> Tensor:
        ctx.dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        out = torch.empty(tokens.shape, dtype=ctx.dtype, device=logits.device)
        lse = torch.empty_like(out)
        for s in range(0, logits.shape[0], step):
            z = logits[s:s + step].to(ctx.dtype)
            lse[s:s + step] = torch.logsumexp(z, dim=-1)
            out[s:s + step] = z.gather(-1, tokens[s:s + step, :, None])[..., 0] - lse[s:s + step]
        ctx.save_for_backward(logits, tokens, lse)
        ctx.step = step
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, tokens, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], ctx.step):
            g = grad_out[s:s + ctx.step, :, None].to(ctx.dtype)
            # d/dz (z_tok - logsumexp z) = onehot(tok) - softmax(z)
            gz = -torch.exp(logits[s:s + ctx.step].to(ctx.dtype) - lse[s:s + ctx.step, :, None]) * g
            gz.scatter_add_(-1, tokens[s:s + ctx.step, :, None], g)
            grad[s:s + ctx.step] = gz.to(logits.dtype)
        return grad, None, None


def token_logprobs(logits: Tensor, tokens: Tensor, chunk_rows: int = 0) -> Tensor:
    """Log-probability of each token under the logits: (B, T, V), (B, T) -> (B, T).

    The caller aligns positions (logits at t scored token t, i.e. the model output shifted by
    one) and divides the logits by the sampling temperature first, otherwise the importance
    ratio compares different distributions.

    Memory: float32 logits go through ``gather(z) - logsumexp(z)``: autograd keeps only the
    logits themselves (already alive in the caller) and a (B, T) result, whereas
    ``log_softmax(z).gather(...)`` keeps a second (B, T, V) tensor. Half-precision logits (or any
    dtype with ``chunk_rows > 0``) are upcast to float32 ``chunk_rows`` rows at a time (default 1)
    by a custom autograd function that recomputes the softmax per chunk in backward, so a float32
    copy of the whole (B, T, V) never exists. Returns float32 for half-precision input, because
    importance ratios of bf16 log-probs are too coarse.
    """
    if logits.dim() != 3 or tokens.shape != logits.shape[:2]:
        raise ValueError(f"need logits (B, T, V) and tokens (B, T); got {tuple(logits.shape)} and "
                         f"{tuple(tokens.shape)}")
    tokens = tokens.long()
    if logits.dtype not in (torch.float16, torch.bfloat16) and chunk_rows <= 0:
        picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)
    out = _ChunkedTokenLogprob.apply(logits, tokens, chunk_rows if chunk_rows > 0 else 1)
    return out if logits.dtype in (torch.float16, torch.bfloat16) else out.to(logits.dtype)
