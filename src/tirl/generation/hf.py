"""Transformers backend: batched sampling with any `AutoModelForCausalLM`, CPU or GPU, with KV cache reuse.

Notation: B = requests in a batch, c_i = cached prefix length of request i, s_i = its uncached suffix
length, C = max c_i, S = max s_i, H = KV heads, D = head dim, V = vocabulary.

KV cache reuse across tool calls (the choice and why)
  Each trajectory (request `key`) keeps its own cache: per layer a `(1, H, c_i, D)` key and value
  tensor holding exactly the tokens it has seen, no padding. A `generate` call re-stacks the caches of
  its requests into one batched `DynamicCache` of shape `(B, H, C, D)`, left-padded, and prefills the
  suffixes (the last sampled token of the previous turn + the interpreter tokens, or a whole new prompt)
  as a `(B, S)` block, left-padded too. The attention mask `(B, C + S)` is 0 on both paddings (so a row
  may have a hole between its cache and its suffix) and the position ids are each row's own running
  count, so every token sees exactly the keys, and the rotary positions, it would see alone. When a
  row finishes (stop string, EOS, budget), its later slots get mask 0, and its cache is cut back out
  (the mask's 1-positions, one `index_select`) as soon as it finishes (`drop_finished_at`), so the
  remaining decode steps no longer compute it.
  Why not one persistent batched cache with holes: rows finish at different times, and holes would
  accumulate for the whole rollout (memory and attention cost grow with the longest history of the
  batch); re-stacking costs one copy of the caches per turn, which is small next to the decode steps of
  a turn. Measured (benchmarks/rollout.py set-up, 4M-parameter model, batch 8, 8 calls, ~950-token
  sequences, CPU): re-stacking plus cutting out took 0.18 s of a 7.2 s rollout (2.5 %).
  Padding hazard: a left-pad query of a fresh prompt sees no unmasked key; masked positions get a
  large negative bias (not NaN) in transformers' eager/SDPA masks here, and the pad rows' outputs are
  never attended to because their keys are masked for every real query; the test
  `test_padded_batch_equals_alone` guards this (a NaN would poison the real rows' outputs).

The reference path (`reuse_cache=False`) re-runs each request's whole sequence every call; tests check
that both give the same logits (within a stated tolerance) and, greedily, the same tokens.

Prefix sharing: rows of one call with nothing cached and identical tokens (the n samples of a GRPO
group) get the keys/values of all but their last token from one prefill per distinct prompt, copied
into each row's slot of the batched cache; the batch prefill then feeds them one token each.

Stops: a stop string the tokenizer writes as one token (the tiny model's tag tokens) is matched on its
id; otherwise the decoded text of a window of the last sampled tokens is searched, but only after a
token whose text holds some stop string's last character (a cached per-token test), so most steps
decode nothing. Both find every occurrence the plain window search finds (tested with a tag spelled
out in single characters).

Cache growth: each batch's cache is a buffer with room to spare, up to its longest possible sequence
(cached + suffix + budget), grown a quarter at a time; decode steps write their position in place
(`tirl.generation.kv_cache`).

The decode loop lives in `tirl.generation.decode_batch.DecodeBatch`: `generate` adds its requests and
steps until every row has finished; `decode_batch()` hands out a running batch that rows can join at
any step (continuous batching: the rollout adds a row back as soon as its code has run, while the
others keep decoding; `RolloutConfig.continuous`).

Decode steps of Llama- and Qwen2-family models from the bf16/fp16 sampling copy run
`tirl.generation.lean_decode` (the same weights and cache, transformers' eager attention bit for bit
without its per-module overhead; on a CPU with the weights reordered once for oneDNN); float32, other
models, and `lean_decode=False` run transformers' forward.

Not covered: sliding-window or hybrid caches (these get transformers' own layers, no preallocation), tensor
parallelism, CUDA graphs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Sequence

import torch

from tirl.generation.base import (
    FINISH_LENGTH,
    GenerationOutput,
    GenerationRequest,
    SamplingParams,
)
from tirl.generation.decode_batch import DecodeBatch
from tirl.generation.lean_decode import Linears, lean_decoder, lean_step
from tirl.generation.kv_cache import new_cache


@dataclass
class _CacheEntry:
    ids: list[int]
    """Tokens whose keys/values are in `kv` (all of the sequence but the last sampled token)."""
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    """Per layer: keys and values, each `(1, H, len(ids), D)`."""


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def sample_next(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row. logits `(B, V)` float -> (tokens `(B,)`, log-probs `(B,)`).

    Log-probs are `log_softmax(logits / T)` of the chosen token, before top-p/top-k truncation.
    """
    if params.temperature <= 0:
        logp = torch.log_softmax(logits, dim=-1)
        tok = logits.argmax(dim=-1)
        return tok, logp.gather(-1, tok[:, None])[:, 0]
    scaled = logits / params.temperature
    logp = torch.log_softmax(scaled, dim=-1)
    filtered = scaled
    if params.top_k and params.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, params.top_k, dim=-1).values[:, -1:]
        filtered = filtered.masked_fill(filtered < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(filtered, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass before it already reaches top_p; the first token always stays.
        drop = (probs.cumsum(dim=-1) - probs) >= params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        filtered = torch.full_like(filtered, float("-inf")).scatter(-1, order, sorted_logits)
    tok = _draw(torch.softmax(filtered, dim=-1), generator)
    return tok, logp.gather(-1, tok[:, None])[:, 0]


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of `probs` (B, V) by inverse CDF: the first token whose cumulative probability
    exceeds a uniform draw. The same distribution as `torch.multinomial` at a fifteenth of its time on
    CPU (24 vs 370 us for 64 x 351), which was a fifth of a small model's decode step. A token of
    probability 0 is never drawn: its cumulative sum equals its predecessor's, and the rare draw that
    rounds past the total goes to the last token that has mass."""
    cdf = probs.cumsum(dim=-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device) * cdf[:, -1:]
    tok = torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=probs.shape[-1] - 1)
    past = probs.gather(-1, tok[:, None])[:, 0] == 0  # only a draw that rounded past the total lands on 0
    if bool(past.any()):
        tok[past] = probs.shape[-1] - 1 - (probs[past].flip(-1) > 0).int().argmax(dim=-1)
    return tok


def contiguous_head_input(model: Any) -> None:
    """Feed the output layer a contiguous input. A prefill keeps one position's hidden state
    (`logits_to_keep=1`), a strided `(B, 1, H)` slice, and a linear layer given a strided 3-D input
    expands its weight over the batch and copies it: on SmolLM2 at batch 32, a 1.7 GB bf16 copy and
    3 s per prefill, against 20 ms. For the half-precision copy only, where both kernels give the same
    logits bit for bit (tested); in float32 they round differently (~3e-6)."""
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]))


class HFGenerator:
    """`Generator` over a transformers causal LM. Not thread-safe (one rollout at a time)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        reuse_cache: bool = True,
        max_batch_size: int = 64,
        eos_token_ids: Sequence[int] | None = None,
        stop_window_tokens: int = 8,
        precision: str = "fp32",
        share_prefix: bool = True,
        drop_finished_at: float = 0.0,
        preallocate: bool = True,
        half_copy: bool = True,
        lean_decode: bool = True,
    ):
        from tirl.models import check_precision, eos_token_ids as _eos

        self.model = model
        self.precision = check_precision(precision)
        """fp32, or bf16 / fp16 autocast of every forward (sampling itself is float32)."""
        # transformers 5.x renamed forward's `past_key_values` to `cache` (the old name warns on every call);
        # 4.x knows only the old name.
        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.tokenizer = tokenizer
        self.reuse_cache = reuse_cache
        self.max_batch_size = max_batch_size
        self.eos_ids = set(eos_token_ids if eos_token_ids is not None else _eos(model, tokenizer))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        # Extra tokens decoded beyond the longest stop string, for tokens that decode to <1 character
        # (a UTF-8 character split over byte-level tokens).
        self.stop_window_tokens = stop_window_tokens
        self.share_prefix = share_prefix
        """Requests of one batch with the same uncached tokens (the n samples of a GRPO group) prefill
        them once and copy the keys/values."""
        self.drop_finished_at = drop_finished_at
        """Finished rows leave the batch once this share of it has finished (0 = at once). Each exit copies
        the live caches once (an index_select), cheap next to decoding rows nobody needs."""
        self.preallocate = preallocate
        """Decode steps write into a cache buffer with room to spare (grown a quarter at a time, up to the
        batch's longest possible sequence) instead of concatenating a new cache each step."""
        self.half_copy = half_copy
        """With bf16/fp16: sample from a half-precision copy of the weights (refreshed when they change)
        instead of autocasting: autocast re-casts every weight at every decode step, which on a CPU
        costs more than the half-precision matmuls save. Buffers (rotary frequencies) stay float32."""
        self.lean_decode = lean_decode
        """Decode steps of Llama- and Qwen2-family models from the bf16/fp16 sampling copy run
        `tirl.generation.lean_decode` (transformers' eager attention, bit for bit, without its per-module
        overhead); False, float32, or another model runs transformers' forward."""
        self._lean: dict[int, bool] = {}
        self._linears: Linears | None = None
        self._run: Any = model
        self._copy: Any = None
        self._stamp: tuple[int, ...] = ()
        self._cache: dict[Hashable, _CacheEntry] = {}
        self._may_end: dict[tuple[int, str], bool] = {}  # (token, stops' last chars) -> may complete one
        self._stop_ids: dict[tuple[str, ...], dict[int, str]] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def release(self, keys: Iterable[Hashable]) -> None:
        for k in keys:
            self._cache.pop(k, None)

    def release_stale(self) -> None:
        """Drop what only decoding uses and a weight update makes stale: the lean step's reordered weights
        and the half-precision copy's weights (0.27 GB each on SmolLM2), made again from the updated
        weights at the next generation. The trainer calls it before an update, whose memory peak they
        would otherwise sit under."""
        self._linears = None
        if self._copy is not None:
            for p in self._copy.parameters():
                p.data = p.data.new_empty(0)  # the module stays; `_half_model` refills it
            self._stamp = ()

    def cached_keys(self) -> list[Hashable]:
        return list(self._cache)

    @torch.inference_mode()
    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[GenerationOutput]:
        outputs: list[GenerationOutput | None] = [None] * len(requests)
        todo = []
        for i, r in enumerate(requests):
            if not r.token_ids:
                raise ValueError("a generation request needs at least one token")
            budget = params.max_new_tokens if r.max_new_tokens is None else r.max_new_tokens
            if budget <= 0:
                outputs[i] = GenerationOutput([], [], FINISH_LENGTH)
            else:
                todo.append(i)
        gen = self._sampler(params)
        self._run = self._sampling_model()
        for start in range(0, len(todo), self.max_batch_size):
            idx = todo[start : start + self.max_batch_size]
            batch = DecodeBatch(self, params, gen)
            where = dict(zip(batch.add([requests[i] for i in idx]), idx))
            while batch:
                for rid, out in batch.step():
                    outputs[where[rid]] = out
        return outputs  # type: ignore[return-value]

    def decode_batch(self, params: SamplingParams) -> DecodeBatch:
        """An empty running batch (`tirl.generation.decode_batch`): `add` requests at any time, `step` to
        decode one token for every row and get the rows that finished. Continuous batching uses it."""
        self._run = self._sampling_model()
        return DecodeBatch(self, params, self._sampler(params))

    def _sampler(self, params: SamplingParams) -> torch.Generator | None:
        if params.seed is None or params.temperature <= 0:
            return None
        return torch.Generator(device=self.device).manual_seed(int(params.seed))

    def _sampling_model(self) -> Any:
        return self._half_model() if self.half_copy and self.precision != "fp32" else self.model

    def _half_model(self) -> Any:
        """The half-precision copy, its weights re-copied when the source's changed (an optimizer step
        bumps every updated tensor's version counter)."""
        params = list(self.model.parameters())
        stamp = tuple(p._version for p in params)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        with torch.inference_mode(False), torch.no_grad():
            if self._copy is None:
                import copy

                # The memo hands deepcopy each parameter already in half precision (tied ones stay tied):
                # copying float32 weights first and casting after held a float32 copy at its peak
                # and left its freed pages resident.
                memo = {id(p): torch.nn.Parameter(p.detach().to(dtype), requires_grad=False) for p in params}
                self._copy = copy.deepcopy(self.model, memo).eval()
                contiguous_head_input(self._copy)
            elif stamp != self._stamp:
                for dst, src in zip(self._copy.parameters(), params):
                    if dst.numel() != src.numel():  # emptied by release_stale
                        dst.data = src.detach().to(dtype)
                    else:
                        dst.copy_(src)
        self._stamp = stamp
        return self._copy

    def decode_logits(self, tokens: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
                      cache: Any) -> tuple[torch.Tensor, Any]:
        """(float32 logits `(B, V)`, the cache) of one decode step of the sampling model: `tokens` `(B,)`
        fed at positions `pos` `(B,)`, `mask` `(B, L)` including them; the cache gains their keys/values."""
        run = self._run
        # Only the half-precision copy: there the lean step is transformers' eager attention bit for bit;
        # in float32 its packed-heads matmuls round differently (~3e-6 on logits).
        if self.lean_decode and run is self._copy:
            if id(run) not in self._lean:
                self._lean[id(run)] = lean_decoder(run)
            if self._lean[id(run)]:
                return lean_step(run, tokens, mask, pos, cache, self._linears_of(run)).float(), cache
        out = run(input_ids=tokens[:, None], attention_mask=mask, position_ids=pos[:, None],
                  use_cache=True, **{self._cache_kw: cache})
        return out.logits[:, -1, :].float(), out.past_key_values

    def _linears_of(self, run: Any) -> Linears:
        """The lean step's matmuls for the half-precision copy `run`, whose refresh (`_half_model`) is the
        one place its weights change: made again after each refresh."""
        if self._linears is None or self._linears.stamp != self._stamp:
            self._linears = None  # the old reordered weights go before the new ones are made
            self._linears = Linears(run, self._stamp)
        return self._linears

    # --- one batch ---------------------------------------------------------------------------------
    def _lookup(self, r: GenerationRequest) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """(cached prefix length c, per-layer kv cropped to c) for request `r`; always leaves >= 1 token."""
        if not self.reuse_cache or r.key is None:
            return 0, None
        entry = self._cache.pop(r.key, None)
        if entry is None:
            return 0, None
        c = min(_common_prefix(entry.ids, r.token_ids), len(r.token_ids) - 1)
        if c <= 0:
            return 0, None
        return c, [(k[:, :, :c], v[:, :, :c]) for k, v in entry.kv]

    def _pick(self, logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None,
              active: list[GenerationRequest | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Next token and its log-prob per batch row, `(B,)` each; `active[b]` is None for finished rows."""
        return sample_next(logits, params, gen)

    def _single_token_stops(self, stops: tuple[str, ...]) -> dict[int, str]:
        """Token id -> stop string, for stop strings the tokenizer writes as one token (tag tokens)."""
        if stops not in self._stop_ids:
            found = {}
            for s in stops:
                ids = self.tokenizer.encode(s, add_special_tokens=False)
                if len(ids) == 1 and self.tokenizer.decode(ids) == s:
                    found[ids[0]] = s
            self._stop_ids[stops] = found
        return self._stop_ids[stops]

    def _may_end_stop(self, token: int, ends: str) -> bool:
        """Could `token` be the last piece of a stop string? Only if its text holds a stop's last
        character (or is an incomplete UTF-8 piece): other tokens skip the window decode. `ends` empty
        means every token could."""
        if not ends:
            return True
        key = (token, ends)
        hit = self._may_end.get(key)
        if hit is None:
            text = self.tokenizer.decode([token])
            hit = "\ufffd" in text or any(c in text for c in ends)
            self._may_end[key] = hit
        return hit

    def _share_prompts(self, reqs: Sequence[GenerationRequest], looked: list) -> list:
        """Rows with nothing cached and identical tokens (the samples of one prompt) get the keys/values
        of all but their last token from one prefill per distinct prompt; the batch prefill then feeds
        each of them one token. Same numbers as prefilling each row (tested)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (r, (c, _)) in enumerate(zip(reqs, looked)):
            if c == 0 and len(r.token_ids) >= 2:
                groups.setdefault(tuple(r.token_ids), []).append(i)
        shared = [(ids, rows) for ids, rows in groups.items() if len(rows) > 1]
        if not shared:
            return looked
        dev = self.device
        P = max(len(ids) - 1 for ids, _ in shared)
        mask = torch.zeros(len(shared), P, dtype=torch.long)
        inp = torch.full((len(shared), P), self.pad_id, dtype=torch.long)
        for u, (ids, _) in enumerate(shared):
            mask[u, P - len(ids) + 1 :] = 1
            inp[u, P - len(ids) + 1 :] = torch.tensor(ids[:-1], dtype=torch.long)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        self._run(input_ids=inp.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                  use_cache=True, logits_to_keep=1, **{self._cache_kw: cache})
        out = list(looked)
        for u, (ids, rows) in enumerate(shared):
            valid = mask[u].nonzero()[:, 0].to(dev)
            kv = [(layer.keys[u : u + 1].index_select(2, valid), layer.values[u : u + 1].index_select(2, valid))
                  for layer in cache.layers]
            for i in rows:
                out[i] = (len(ids) - 1, kv)
        return out

    def _stop_in(self, window_ids: list[int], stops: tuple[str, ...]) -> str | None:
        text = self.tokenizer.decode(window_ids)
        for s in stops:
            if s in text:
                return s
        return None

    def _stack_cache(self, looked: list, C: int, capacity: int | None = None) -> Any:
        """Batched left-padded `DynamicCache` `(B, H, C, D)` from per-request kv (or an empty cache), with
        room for `capacity` positions when given."""
        cache = new_cache(self.model.config, capacity)
        if C == 0:
            return cache
        ref = next(kv for _, kv in looked if kv is not None)
        B = len(looked)
        for layer, (k0, v0) in enumerate(ref):
            K = k0.new_zeros((B, k0.shape[1], C, k0.shape[3]))
            Vt = v0.new_zeros((B, v0.shape[1], C, v0.shape[3]))
            for b, (c, kv) in enumerate(looked):
                if kv is not None:
                    K[b, :, C - c :] = kv[layer][0][0]
                    Vt[b, :, C - c :] = kv[layer][1][0]
            cache.update(K, Vt, layer)
        return cache

    def _finish_row(self, req, new, lps, kept_logits, finish, stop_hit, cache, mask, b, n_suffix,
                    keep: bool = True) -> GenerationOutput:
        if self.reuse_cache and req.key is not None and keep:
            valid = mask[b].nonzero()[:, 0]  # cache positions this row really holds
            kv = [(layer.keys[b : b + 1].index_select(2, valid), layer.values[b : b + 1].index_select(2, valid))
                  for layer in cache.layers]
            ids = list(req.token_ids) + new[:-1]  # the last sampled token was never fed
            if kv and kv[0][0].shape[2] != len(ids):
                raise RuntimeError(f"cache bookkeeping error: {kv[0][0].shape[2]} positions for {len(ids)} ids")
            self._cache[req.key] = _CacheEntry(ids, kv)
        return GenerationOutput(
            token_ids=list(new),
            logprobs=list(lps),
            finish_reason=finish,
            stop_string=stop_hit,
            prefill_tokens=n_suffix,
            decode_tokens=len(new) - 1,
            logits=torch.stack(kept_logits) if kept_logits else None,
        )
