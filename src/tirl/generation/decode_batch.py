"""A running decode batch of `HFGenerator`: rows join (`add`) and leave (`step`) at any decode step.

`HFGenerator.generate` is `add(all requests)` then `step()` until the batch is empty; the rollout's
continuous mode (`RolloutConfig.continuous`) instead adds a row back as soon as its code has run, while
the other rows keep decoding. There is one decode loop (`step`), used by both.

State between steps, for the R rows in the batch: the batched cache `(R, H, L, D)`, its attention mask
`(R, L)` (0 on left pads, holes and finished rows' slots), each row's next position id, and the logits
of each row's next token (the output of the last forward). `step` samples one token per row from those
logits, finds the rows that finished (EOS, a stop, the budget), cuts them out (saving their caches as
the generator's per-trajectory entries) and feeds the sampled tokens of the others.

`add` prefills the new rows in their own forward (cached prefixes looked up, shared and re-stacked as
`HFGenerator`'s docstring explains), then merges: whichever of the running cache and the new one is
shorter is left-padded with masked positions and the two are concatenated on the batch axis into a
fresh cache with room for every row's remaining budget. Position ids and masks are per row, so a row
computes the same numbers as alone; the merge copies the running caches once per `add`.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from tirl.generation.base import FINISH_EOS, FINISH_LENGTH, FINISH_STOP, GenerationOutput, GenerationRequest, SamplingParams
from tirl.generation.kv_cache import new_cache
from tirl.resources import release_if_grown


@dataclass
class _Row:
    rid: int
    req: GenerationRequest
    budget: int
    n_suffix: int = 0
    new: list[int] = field(default_factory=list)
    lps: list[float] = field(default_factory=list)
    kept_logits: list[torch.Tensor] = field(default_factory=list)
    finish: str | None = None
    stop_hit: str | None = None


def _left_pad(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    extra = length - t.shape[dim]
    if extra == 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class DecodeBatch:
    """Rows being decoded together with one sampling setting. Get one from `HFGenerator.decode_batch`
    (`g` is that generator: its cache store, stop tests and sampler are used here)."""

    def __init__(self, g: Any, params: SamplingParams, gen: torch.Generator | None):
        self.g, self.params, self.gen = g, params, gen
        self.stops = tuple(s for s in params.stop if s)
        self.window = max((len(s) for s in self.stops), default=0) + g.stop_window_tokens
        self.stop_ids = g._single_token_stops(self.stops)
        # A token can complete a stop only if its text holds the stop's last character; single-token
        # decoding may drop whitespace (sentencepiece), so a stop ending in whitespace checks every token.
        self.ends = "" if any(s[-1].isspace() for s in self.stops) else "".join(sorted({s[-1] for s in self.stops}))
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.mask = self.next_pos = self.logits = torch.empty(0)
        self._ready: list[tuple[int, GenerationOutput]] = []  # zero-budget requests, returned by the next step
        self._ids = itertools.count()

    def __len__(self) -> int:
        """Rows still to be returned by `step`."""
        return len(self.rows) + len(self._ready)

    def _context(self) -> Any:
        from tirl.models import autocast

        g = self.g
        return autocast(g.device, g.precision) if g._run is g.model else contextlib.nullcontext()

    @torch.inference_mode()
    def add(self, reqs: Sequence[GenerationRequest]) -> list[int]:
        """Prefill `reqs` and join them to the batch; returns their row ids (as `step` reports them)."""
        ids, rows = [], []
        for r in reqs:
            if not r.token_ids:
                raise ValueError("a generation request needs at least one token")
            rid = next(self._ids)
            ids.append(rid)
            budget = self.params.max_new_tokens if r.max_new_tokens is None else r.max_new_tokens
            if budget <= 0:
                self._ready.append((rid, GenerationOutput([], [], FINISH_LENGTH)))
            else:
                rows.append(_Row(rid, r, budget))
        if rows:
            with self._context():
                self._prefill(rows)
        return ids

    def _prefill(self, rows: list[_Row]) -> None:
        g, dev, B = self.g, self.g.device, len(rows)
        reqs = [row.req for row in rows]
        looked = [g._lookup(r) for r in reqs]
        if g.share_prefix and g.reuse_cache:  # the reference path (reuse_cache=False) prefills every row
            looked = g._share_prompts(reqs, looked)
        cs = [c for c, _ in looked]
        sufs = [r.token_ids[c:] for r, c in zip(reqs, cs)]
        C, S = max(cs), max(len(s) for s in sufs)

        # Mask (B, C+S): 1 on each row's cached tokens and suffix; 0 on left pads and the hole between.
        mask = torch.zeros(B, C + S, dtype=torch.long)
        inp = torch.full((B, S), g.pad_id, dtype=torch.long)
        for i, (c, s) in enumerate(zip(cs, sufs)):
            mask[i, C - c : C] = 1
            mask[i, C + S - len(s) :] = 1
            inp[i, S - len(s) :] = torch.tensor(s, dtype=torch.long)
            rows[i].n_suffix = len(s)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, C:]
        mask, inp, pos = mask.to(dev), inp.to(dev), pos.to(dev)
        # Alone, the batch gets room for its longest sequence now; joining a running batch, the merge
        # below allocates the room.
        room = C + S + max(row.budget for row in rows) if g.preallocate and not self.rows else None
        cache = g._stack_cache(looked, C, room)
        del looked  # the popped entries are copied into `cache`: free them before the forward, not after
        out = g._run(input_ids=inp, attention_mask=mask, position_ids=pos,
                     use_cache=True, logits_to_keep=1, **{g._cache_kw: cache})
        logits = out.logits[:, -1, :].float()
        next_pos = torch.tensor([len(r.token_ids) for r in reqs], device=dev)
        if self.rows:
            self._merge(rows, out.past_key_values, mask, next_pos, logits)
        else:
            self.cache, self.mask, self.next_pos, self.logits = out.past_key_values, mask, next_pos, logits
        self.rows += rows

    def _merge(self, rows: list[_Row], cache: Any, mask: torch.Tensor, next_pos: torch.Tensor,
               logits: torch.Tensor) -> None:
        """Concatenate the newly prefilled `rows` after the running ones, left-padding the shorter block."""
        L = max(self.mask.shape[1], mask.shape[1])
        room = L + max(row.budget - len(row.new) for row in self.rows + rows) if self.g.preallocate else None
        merged = new_cache(self.g.model.config, room)
        for layer, (a, b) in enumerate(zip(self.cache.layers, cache.layers)):
            k = torch.cat([_left_pad(a.keys, L, 2), _left_pad(b.keys, L, 2)])
            v = torch.cat([_left_pad(a.values, L, 2), _left_pad(b.values, L, 2)])
            merged.update(k, v, layer)
        self.cache = merged
        self.mask = torch.cat([_left_pad(self.mask, L, 1), _left_pad(mask, L, 1)])
        self.next_pos = torch.cat([self.next_pos, next_pos])
        self.logits = torch.cat([self.logits, logits])

    def _resumes(self, row: _Row) -> bool:
        """Will the caller go on with this finished row (`SamplingParams.resume_after`)?"""
        after = self.params.resume_after
        return after is None or (row.finish == FINISH_STOP and row.stop_hit in after)

    @torch.inference_mode()
    def step(self) -> list[tuple[int, GenerationOutput]]:
        """Sample one token for every row; returns (row id, output) of the rows that left the batch."""
        done, self._ready = self._ready, []
        if self.rows:
            with self._context():
                done += self._step()
        # Caches of every length come and go each turn; glibc keeps what they free resident beside the
        # new ones unless handed back (SmolLM2, 2 GRPO steps and the held-out evaluation: peak 4.58 -> 4.10 GB).
        release_if_grown()
        return done

    def _step(self) -> list[tuple[int, GenerationOutput]]:
        g, params, dev = self.g, self.params, self.g.device
        rows, logits = self.rows, self.logits
        live = [b for b, r in enumerate(rows) if r.finish is None]
        if len(live) == len(rows):
            tok, lp = g._pick(logits, params, self.gen, [r.req for r in rows])
        else:
            # Finished rows still in the batch (`drop_finished_at`) draw nothing: the sampler's random
            # stream then advances exactly as when they had left, so the tokens do not depend on it.
            idx = torch.tensor(live, device=dev)
            t_live, lp_live = g._pick(logits[idx], params, self.gen, [rows[b].req for b in live])
            tok = torch.full((len(rows),), g.pad_id, dtype=t_live.dtype, device=dev).index_copy(0, idx, t_live)
            lp = torch.zeros(len(rows), dtype=lp_live.dtype, device=dev).index_copy(0, idx, lp_live)
        tok_l, lp_l = tok.tolist(), lp.tolist()
        for b, r in enumerate(rows):
            if r.finish is not None:
                continue
            t = tok_l[b]
            r.new.append(t)
            r.lps.append(lp_l[b])
            if params.return_logits:
                r.kept_logits.append(logits[b].detach().cpu().clone())
            if t in g.eos_ids:
                r.finish = FINISH_EOS
            elif t in self.stop_ids:
                r.finish, r.stop_hit = FINISH_STOP, self.stop_ids[t]
            elif (self.stops and g._may_end_stop(t, self.ends)
                  and (hit := g._stop_in(r.new[-self.window:], self.stops))):
                r.finish, r.stop_hit = FINISH_STOP, hit
            elif len(r.new) >= r.budget:
                r.finish = FINISH_LENGTH
        done = []
        alive = [r.finish is None for r in rows]
        n_dead = alive.count(False)
        if n_dead and (n_dead == len(rows) or n_dead >= g.drop_finished_at * len(rows)):
            # Cut finished rows' caches out now, so the batch shrinks (or ends).
            keep = []
            for b, r in enumerate(rows):
                if alive[b]:
                    keep.append(b)
                else:
                    done.append((r.rid, g._finish_row(r.req, r.new, r.lps, r.kept_logits, r.finish, r.stop_hit,
                                                      self.cache, self.mask, b, r.n_suffix, self._resumes(r))))
            self.rows = rows = [rows[b] for b in keep]
            if not keep:
                self.cache = None
                return done
            sel = torch.tensor(keep, device=dev)
            self.cache.batch_select_indices(sel)
            self.mask, self.next_pos, tok = self.mask[sel], self.next_pos[sel], tok[sel]
            alive = [True] * len(rows)
        alive_t = torch.tensor(alive, device=dev)
        feed = torch.where(alive_t, tok, torch.full_like(tok, g.pad_id))
        self.mask = torch.cat([self.mask, alive_t.long()[:, None]], dim=1)
        self.logits, self.cache = g.decode_logits(feed, self.mask, self.next_pos, self.cache)
        self.next_pos = self.next_pos + 1
        return done
