"""A test double of the transformers backend: the real model runs (same forwards, same KV-cache path),
but each token comes from a fixed stream per request key instead of being sampled. Tests and
`benchmarks/rollout.py` use it to get an exact number of tool calls out of a random model.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Sequence

import torch

from tirl.generation.hf import HFGenerator


class ForcedHFGenerator(HFGenerator):
    """Runs the real model (same forwards, same cache path) but takes each token from a fixed stream per
    request key instead of sampling it: benchmarks and tests use it to get an exact number of tool calls
    out of a random model. Log-probs are the model's log-probs of the forced tokens. A stream that runs
    out yields EOS."""

    def __init__(self, model: Any, tokenizer: Any,
                 streams: dict[Hashable, Sequence[int]] | Callable[[Hashable], Sequence[int]], **kwargs: Any):
        super().__init__(model, tokenizer, **kwargs)
        self.streams = streams
        self._cursor: dict[Hashable, int] = {}
        self._eos = min(self.eos_ids) if self.eos_ids else self.pad_id

    def _pick(self, logits, params, gen, active):
        toks = []
        for r in active:
            if r is None:
                toks.append(self.pad_id)
                continue
            stream = self.streams(r.key) if callable(self.streams) else self.streams[r.key]
            c = self._cursor.get(r.key, 0)
            toks.append(int(stream[c]) if c < len(stream) else self._eos)
            self._cursor[r.key] = c + 1
        tok = torch.tensor(toks, device=logits.device)
        scaled = logits / params.temperature if params.temperature > 0 else logits
        lp = torch.log_softmax(scaled, dim=-1).gather(-1, tok[:, None])[:, 0]
        return tok, lp
