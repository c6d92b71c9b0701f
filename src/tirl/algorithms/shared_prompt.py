"""Hidden states of a batch whose rows share prompts, with each distinct prompt run once.

The n samples of a GRPO group repeat one prompt. Scoring them row by row runs that prompt n times,
forward and backward. Here each distinct prefix runs once (left-padded, with grad); its keys and
values are expanded to the rows that share it (an `index_select`, so their gradients flow back and
add up in the one prompt pass), and only the rows' own tokens run on top, at their true positions.
The result equals the row-by-row forward up to float rounding (tested against it, values and
gradients, with prompts of different lengths and padding).

Notation: B rows, L = longest row (right-padded), T = L - 1 target positions, U distinct prompts,
P_b the prompt length of row b (the tokens before its first scored target), H the hidden size.

Works with any decoder whose body takes `position_ids`, `attention_mask` over past + new tokens and
a cache (`cache`, or `past_key_values` before transformers 5), and returns a cache with `reorder_cache` (transformers' `DynamicCache`): no
transformers import here. Not covered: sliding-window or recurrent layers (they would need the
cache cropped per row), prefixes shared beyond the prompt, the critic (a token-classification model).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _cache_keyword(body: Any) -> str:
    """transformers 5.x renamed forward's `past_key_values` to `cache` (the old name warns on every call).
    Read from the undecorated forward's own argument names, as `inspect` would."""
    f = type(body).forward
    while hasattr(f, "__wrapped__"):
        f = f.__wrapped__
    code = f.__code__
    return "cache" if "cache" in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount] else "past_key_values"


def prompt_groups(input_ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, list[int]] | None:
    """(prompt length P (B,), group of each row (B,), first row of each group (U,)), or None when no
    two rows share a prompt or some row has nothing to score.

    A row's prompt is everything before its first scored target; rows are grouped only when those
    token ids are identical, so a wrong guess about the layout costs speed, never correctness.
    """
    scored = mask != 0
    if not bool(scored.any(dim=1).all()):
        return None
    first = scored.int().argmax(dim=1)  # first scored target t scores token t + 1: the prompt is [0, t]
    lengths = (first + 1).tolist()
    keys: dict[tuple[int, ...], int] = {}
    group, heads = [], []
    for b, p in enumerate(lengths):
        key = tuple(input_ids[b, :p].tolist())
        if key not in keys:
            keys[key] = len(heads)
            heads.append(b)
        group.append(keys[key])
    if len(heads) == len(lengths):
        return None
    dev = input_ids.device
    return torch.tensor(lengths, device=dev), torch.tensor(group, device=dev), heads


def shared_prompt_hidden(body: Any, input_ids: Tensor, attention_mask: Tensor, mask: Tensor) -> Tensor | None:
    """(B, T, H) last hidden states at every position that scores a target (`mask` (B, T) != 0; other
    positions before them hold zeros), each distinct prompt run once; None when no prompt is shared
    (the caller then runs the plain forward).

    Rows are right-padded (`attention_mask` (B, L) is 1 on a prefix of each row).
    """
    found = prompt_groups(input_ids, mask)
    if found is None:
        return None
    plen, group, heads = found
    B, L = input_ids.shape
    T, dev = L - 1, input_ids.device
    lengths = attention_mask.sum(dim=1)
    U, Pm = len(heads), int(plen.max())

    # 1. The U prompts, left-padded to Pm so every prompt's last token sits at column Pm - 1.
    cols = torch.arange(Pm, device=dev)
    hp = plen[heads]  # (U,)
    shift = (Pm - hp)[:, None]  # left padding of each prompt
    p_attn = (cols[None, :] >= shift).long()  # (U, Pm)
    src = (cols[None, :] - shift).clamp(min=0)
    p_ids = input_ids[heads].gather(1, src) * p_attn
    p_pos = (cols[None, :] - shift).clamp(min=0)
    out = body(input_ids=p_ids, attention_mask=p_attn, position_ids=p_pos, use_cache=True)
    cache = out["cache"] if "cache" in out.keys() else out.past_key_values  # 5.x's name; the old one warns
    h_prompt = out.last_hidden_state  # (U, Pm, H)

    # 2. Each row's own tokens on top of its group's keys/values, at positions P_b, P_b + 1, ...
    clen = lengths - plen  # (B,) tokens after the prompt, padding excluded
    C = max(int(clen.max()), 1)
    j = torch.arange(C, device=dev)
    c_attn = (j[None, :] < clen[:, None]).long()  # (B, C)
    c_ids = input_ids.gather(1, (plen[:, None] + j[None, :]).clamp(max=L - 1)) * c_attn
    c_pos = plen[:, None] + j[None, :]
    cache.reorder_cache(group)  # (U, ...) -> (B, ...): an index_select, gradients flow back to the prompt pass
    attn = torch.cat([p_attn[group], c_attn], dim=1)
    h_rows = body(input_ids=c_ids, attention_mask=attn, position_ids=c_pos, use_cache=True,
                  **{_cache_keyword(body): cache}).last_hidden_state  # (B, C, H)

    # 3. Back to the row layout: target t = P_b - 1 is scored by the prompt's last hidden state,
    # t = P_b + j by the row's j-th; the last real token scores nothing.
    H = h_rows.shape[-1]
    first_idx = torch.arange(B, device=dev) * T + plen - 1
    keep = (j[None, :] < (clen - 1)[:, None])  # (B, C)
    rows_idx = (torch.arange(B, device=dev)[:, None] * T + plen[:, None] + j[None, :])[keep]
    idx = torch.cat([first_idx, rows_idx])
    values = torch.cat([h_prompt[group, Pm - 1].to(h_rows.dtype), h_rows[keep]])
    return h_rows.new_zeros((B * T, H)).index_copy(0, idx, values).view(B, T, H)
