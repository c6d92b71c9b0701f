"""From logits to per-token log-probabilities and entropies, memory-aware.

Notation: B sequences, T positions, V vocabulary. The caller aligns positions (logits at t score the
token at t) and divides logits by the sampling temperature first.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tirl.algorithms.shared_prompt import PromptPass, shared_prompt_hidden


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


# --- straight from a model: the output layer applied in chunks at the scored positions only -----------

# Config attributes of models whose logits are not just `lm_head(hidden)`: those take the full path.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _split_head(model) -> tuple[object, object] | None:
    """(decoder body returning hidden states, output layer) when logits are exactly `head(body(x))`."""
    if hasattr(model, "get_base_model"):  # peft: adapters live inside the wrapped model's own modules
        model = model.get_base_model()
    cfg = getattr(model, "config", None)
    if cfg is None or any(getattr(cfg, a, None) not in (None, 1, 1.0) for a in _LOGIT_TRANSFORMS):
        return None
    body = getattr(model, getattr(model, "base_model_prefix", "") or "", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if body is None or head is None or body is model:
        return None
    return body, head


def _head_chunk(head, hidden: Tensor, tokens: Tensor, temperature: float, want_entropy: bool):
    z = head(hidden).float()
    if temperature > 0:
        z = z / temperature
    lse = torch.logsumexp(z, dim=-1)
    lp = z.gather(-1, tokens[:, None])[:, 0] - lse
    if not want_entropy:
        return lp, None
    return lp, lse - (torch.softmax(z, dim=-1) * z).sum(dim=-1)


def model_token_logprobs(model, input_ids: Tensor, attention_mask: Tensor, mask: Tensor,
                         temperature: float = 1.0, entropy: str = "none", chunk_tokens: int = 256,
                         unchunked_max: int = 1 << 24, share_prompt: bool = False,
                         prompts: PromptPass | None = None) -> tuple[Tensor, Tensor | None]:
    """(B, T) float32 log-probs of `input_ids[:, 1:]` under `model`, and optionally their entropies.

    Only positions where `mask` (B, T) is nonzero are scored (others are 0): the output layer — for a
    real vocabulary the largest matmul of the step, and a (B, T, V) logits tensor — is applied only to
    the hidden states of those positions, `chunk_tokens` at a time, in float32, under activation
    checkpointing, so neither forward nor backward ever holds more than a (chunk, V) slice of logits
    (256 tokens by default: a quarter of the memory 1,024 took, and still enough rows for the output
    layer's matmul to run at full speed).
    When all the scored logits together hold at most `unchunked_max` values (64 MB in float32: small
    vocabularies), they are computed at once and kept for backward instead (no recomputation).
    `entropy`: "none", "detached" (for logging only: no graph is kept) or "grad" (for an entropy term).
    Models whose logits are more than `head(hidden)` (soft-capping, scaling) take the full-logits path.
    `share_prompt`: rows that share their prompt (a GRPO group) run it once
    (`tirl.algorithms.shared_prompt`); the same values, less work. `prompts`: a `prompt_pass` of a
    mini-batch these rows belong to, whose prompt forward they use instead of running their own.
    """
    import torch.utils.checkpoint as ckpt

    if entropy not in ("none", "detached", "grad"):
        raise ValueError(f"entropy must be none, detached or grad, not {entropy!r}")
    targets = input_ids[:, 1:]
    split = _split_head(model)
    if split is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
        if temperature > 0:
            logits = logits / temperature
        lp = token_logprobs(logits, targets).float()
        ent = None
        if entropy != "none":
            ent = entropy_from_logits(logits.detach() if entropy == "detached" else logits)
        return lp * (mask != 0), ent
    body, head = split
    hidden = prompts.hidden(input_ids, attention_mask, mask) if prompts is not None else None
    if hidden is None and share_prompt:
        hidden = shared_prompt_hidden(body, input_ids, attention_mask, mask)
    if hidden is None:
        # use_cache=False: scoring keeps no keys/values (a model's default would build and fill a cache)
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state[:, :-1]
    sel = mask != 0
    h, tok = hidden[sel], targets[sel]
    lps, ents = [], []
    recompute = torch.is_grad_enabled()  # checkpoint each chunk: backward recomputes its logits
    vocab = head.weight.shape[0] if hasattr(head, "weight") else None
    if vocab is not None and h.shape[0] * vocab <= unchunked_max:
        chunk_tokens, recompute = max(h.shape[0], 1), False  # one plain chunk, autograd keeps its logits
    for s in range(0, h.shape[0], chunk_tokens):
        hc, tc = h[s:s + chunk_tokens], tok[s:s + chunk_tokens]
        if recompute:
            lp_c, ent_c = ckpt.checkpoint(_head_chunk, head, hc, tc, temperature, entropy != "none",
                                          use_reentrant=False)
        else:
            lp_c, ent_c = _head_chunk(head, hc, tc, temperature, entropy != "none")
        if entropy == "detached" and ent_c is not None:
            ent_c = ent_c.detach()
        lps.append(lp_c)
        ents.append(ent_c)
    B, T = targets.shape
    lp = hidden.new_zeros((B, T), dtype=torch.float32)
    lp = lp.masked_scatter(sel, torch.cat(lps)) if lps else lp
    ent = None
    if entropy != "none":
        ent = hidden.new_zeros((B, T), dtype=torch.float32)
        ent = ent.masked_scatter(sel, torch.cat(ents)) if ents else ent
    return lp, ent


def prompt_pass(model, input_ids: Tensor, attention_mask: Tensor, mask: Tensor,
                recompute: bool = False) -> PromptPass | None:
    """The prompts of these rows (a mini-batch) run once for all its micro-batches (`PromptPass`, with
    its `recompute`), or None when the model's logits are not `head(body(x))` or no prompt is shared."""
    split = _split_head(model)
    if split is None:
        return None
    pp = PromptPass(split[0], input_ids, attention_mask, mask, recompute=recompute)
    return pp if pp.ok else None
