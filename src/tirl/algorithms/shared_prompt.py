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


def _run_prompts(body: Any, input_ids: Tensor, plen: Tensor, heads: list[int]) -> tuple[Any, Tensor, Tensor]:
    """The U prompts `input_ids[heads, :plen[heads]]` in one forward, left-padded to Pm so every prompt's
    last token sits at column Pm - 1: (the cache (U, ...), the last hidden states (U, Pm, H), the
    prompt attention mask (U, Pm))."""
    dev = input_ids.device
    hp = plen[heads]  # (U,)
    Pm = int(hp.max())
    cols = torch.arange(Pm, device=dev)
    shift = (Pm - hp)[:, None]  # left padding of each prompt
    p_attn = (cols[None, :] >= shift).long()  # (U, Pm)
    src = (cols[None, :] - shift).clamp(min=0)
    p_ids = input_ids[heads].gather(1, src) * p_attn
    out = body(input_ids=p_ids, attention_mask=p_attn, position_ids=src, use_cache=True)
    cache = out["cache"] if "cache" in out.keys() else out.past_key_values  # 5.x's name; the old one warns
    return cache, out.last_hidden_state, p_attn


def _rows_hidden(body: Any, input_ids: Tensor, attention_mask: Tensor, plen: Tensor, group: Tensor,
                 cache: Any, h_last: Tensor, p_attn: Tensor) -> Tensor:
    """(B, T, H) hidden states of the rows, each row's own tokens run on top of its group's keys/values:
    `cache` already holds one entry per row (its group's prompt), `h_last` (B, H) is each row's
    prompt's last hidden state and `p_attn` (U, Pm) the prompts' attention mask."""
    B, L = input_ids.shape
    T, dev = L - 1, input_ids.device
    clen = attention_mask.sum(dim=1) - plen  # (B,) tokens after the prompt, padding excluded
    C = max(int(clen.max()), 1)
    j = torch.arange(C, device=dev)
    c_attn = (j[None, :] < clen[:, None]).long()  # (B, C)
    c_ids = input_ids.gather(1, (plen[:, None] + j[None, :]).clamp(max=L - 1)) * c_attn
    c_pos = plen[:, None] + j[None, :]
    attn = torch.cat([p_attn[group], c_attn], dim=1)
    h_rows = body(input_ids=c_ids, attention_mask=attn, position_ids=c_pos, use_cache=True,
                  **{_cache_keyword(body): cache}).last_hidden_state  # (B, C, H)

    # Back to the row layout: target t = P_b - 1 is scored by the prompt's last hidden state,
    # t = P_b + j by the row's j-th; the last real token scores nothing.
    H = h_rows.shape[-1]
    first_idx = torch.arange(B, device=dev) * T + plen - 1
    keep = (j[None, :] < (clen - 1)[:, None])  # (B, C)
    rows_idx = (torch.arange(B, device=dev)[:, None] * T + plen[:, None] + j[None, :])[keep]
    idx = torch.cat([first_idx, rows_idx])
    values = torch.cat([h_last.to(h_rows.dtype), h_rows[keep]])
    return h_rows.new_zeros((B * T, H)).index_copy(0, idx, values).view(B, T, H)


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
    cache, h_prompt, p_attn = _run_prompts(body, input_ids, plen, heads)
    cache.reorder_cache(group)  # (U, ...) -> (B, ...): an index_select, gradients flow back to the prompt pass
    return _rows_hidden(body, input_ids, attention_mask, plen, group, cache, h_prompt[group, -1], p_attn)


class PromptPass:
    """The distinct prompts of a whole mini-batch run once, for all of its micro-batches.

    `shared_prompt_hidden` runs the prompts of one micro-batch; a mini-batch cut into several (by
    length, `tirl.train.batch.micro_batches`) would run a group's prompt once in each micro-batch its
    rows fall in, forward and backward. Here the prompt pass runs once with grad; each micro-batch's
    `hidden` reads its keys/values and last hidden states through detached leaves, so the micro-batch's
    backward stops at them and adds up their gradients; `backward()` (after the last micro-batch)
    sends those sums through the one prompt pass. The parameters get exactly the gradient of the
    plain forward (chain rule; tested). Under no_grad it only saves the repeated prompt forwards.
    `recompute`: the first pass runs without grad and `backward()` runs it again with grad, so the
    prompts' activations are not held while the micro-batches run (on SmolLM2, 8 prompts of ~150
    tokens: ~1.3 GB) for one more prompt forward; the same gradients bit for bit (tested).
    """

    def __init__(self, body: Any, input_ids: Tensor, attention_mask: Tensor, mask: Tensor,
                 recompute: bool = False):
        found = prompt_groups(input_ids, mask)
        self.body, self.ok = body, found is not None
        if found is None:
            return
        plen, _, heads = found
        grad = torch.is_grad_enabled()
        self.recompute = recompute and grad
        self._prompts = (input_ids, plen, heads)
        self._replay = _Replay(input_ids.device) if self.recompute else None
        with torch.set_grad_enabled(grad and not self.recompute):
            cache, h_prompt, self.p_attn = _run_prompts(body, input_ids, plen, heads)
        self.cache_type = type(cache)
        self.index = {tuple(input_ids[b, : int(plen[b])].tolist()): u for u, b in enumerate(heads)}
        outputs = _flat(cache, h_prompt)
        self.outputs = None if self.recompute else outputs
        self.leaves = [t.detach().requires_grad_(grad) for t in outputs]

    def hidden(self, input_ids: Tensor, attention_mask: Tensor, mask: Tensor) -> Tensor | None:
        """`shared_prompt_hidden` of rows of the mini-batch, from the prompt pass; None when a row's
        prompt is not one of the pass's (then the caller runs its own forward)."""
        scored = mask != 0
        if not self.ok or not bool(scored.any(dim=1).all()):
            return None
        plen = scored.int().argmax(dim=1) + 1
        us = [self.index.get(tuple(input_ids[b, :p].tolist())) for b, p in enumerate(plen.tolist())]
        if any(u is None for u in us):
            return None
        group = torch.tensor(us, device=input_ids.device)
        cache = self.cache_type(config=self.body.config)  # a fresh one of the body's kind
        for layer in range(len(self.leaves) // 2):
            k, v = self.leaves[2 * layer], self.leaves[2 * layer + 1]
            cache.update(k.index_select(0, group), v.index_select(0, group), layer)
        h_last = self.leaves[-1].index_select(0, group)
        return _rows_hidden(self.body, input_ids, attention_mask, plen, group, cache, h_last, self.p_attn)

    def backward(self) -> None:
        """The micro-batches' gradients at the leaves, through the prompt pass into the parameters (with
        `recompute`, a pass run again now, with grad, under the first one's autocast and random state)."""
        if all(leaf.grad is None for leaf in self.leaves):
            return
        outputs = self.outputs
        if outputs is None:
            with self._replay:
                cache, h_prompt, _ = _run_prompts(self.body, *self._prompts)
            outputs = _flat(cache, h_prompt)
        pairs = [(t, leaf.grad) for t, leaf in zip(outputs, self.leaves) if leaf.grad is not None]
        torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])


def _flat(cache: Any, h_prompt: Tensor) -> list[Tensor]:
    """The prompt pass's outputs the micro-batches read: every layer's keys and values, then the prompts'
    last hidden states."""
    return [t for layer in cache.layers for t in (layer.keys, layer.values)] + [h_prompt[:, -1]]


class _Replay:
    """Re-enters, for a recomputed forward, the autocast and random state in force when it was made (a
    model with dropout draws the same masks), as `torch.utils.checkpoint` does."""

    def __init__(self, device: torch.device):
        self.device = device
        self.autocast, self.dtype = _autocast_state(device.type)
        self.cpu_rng = torch.get_rng_state()
        self.dev_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def __enter__(self) -> None:
        self._fork = torch.random.fork_rng(devices=[self.device] if self.dev_rng is not None else [])
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_rng)
        if self.dev_rng is not None:
            torch.cuda.set_rng_state(self.dev_rng, self.device)
        self._cast = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.autocast)
        self._cast.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._cast.__exit__(*exc)
        self._fork.__exit__(*exc)


def _autocast_state(kind: str) -> tuple[bool, torch.dtype]:
    """(enabled, dtype) of autocast on a device type; torch < 2.4 had one function per device type."""
    if hasattr(torch, "get_autocast_dtype"):
        return torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)
    if kind == "cpu":
        return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
