"""`RecordedGenerator`: a `Generator` that plays back responses a run recorded, for `tirl replay`.

Each trajectory key is given the next recorded response the first time it asks (the rollout asks in
trajectory order, shard after shard), and each call returns the recorded sampled tokens from where the
request stands up to the next interpreter span (mask 0), the end of the record, or the request's
budget. The request is checked first: its prompt must hash to the recorded one and everything after
it must be the recorded response so far, so an interpreter answer rendered into other tokens, or a
code block found where the run found none, stops the replay at that trajectory (`ReplayDiverged`).

How a call ends follows the record: before an interpreter span (an empty one too, cut by the budget),
or at a recorded `answer` / `tool_cap` end, at the stop string that ends last in the call's text (what
a real backend matched); at a recorded `eos` end with EOS; otherwise at the budget. Log-probs are 0: a replay re-checks what was decided from
the tokens (tool calls, grades, advantages), never the sampler.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Sequence

from tirl.generation.base import (FINISH_EOS, FINISH_LENGTH, FINISH_STOP, GenerationOutput, GenerationRequest,
                                  SamplingParams)


def ids_digest(ids: Sequence[int]) -> str:
    """12 hex digits over a list of token ids (a recorded prompt, without storing it)."""
    return hashlib.sha256(json.dumps(list(ids), separators=(",", ":")).encode()).hexdigest()[:12]


class ReplayDiverged(Exception):
    """The replayed rollout asked for something the record does not hold."""

    def __init__(self, index: int, field: str, detail: str):
        super().__init__(f"trajectory {index}: {field} ({detail})")
        self.index, self.field, self.detail = index, field, detail


@dataclass
class RecordedResponse:
    prompt_digest: str
    response_ids: list[int]
    loss_mask: list[int]
    finish_reason: str
    call_at_end: bool = False
    """A tool call's (empty) span starts at the very end: the budget ran out as its output came."""


class RecordedGenerator:
    def __init__(self, responses: Sequence[RecordedResponse], tokenizer: Any):
        self.responses, self.tokenizer = list(responses), tokenizer
        self._index: dict[Hashable, int] = {}
        self._prompt_len: dict[int, int] = {}

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[GenerationOutput]:
        return [self._one(r, params) for r in requests]

    def _one(self, r: GenerationRequest, params: SamplingParams) -> GenerationOutput:
        i = self._index.setdefault(r.key, len(self._index))
        if i >= len(self.responses):
            raise ReplayDiverged(i, "trajectories", f"the replay plays more than the {len(self.responses)} recorded")
        rec, ids = self.responses[i], list(r.token_ids)
        if i not in self._prompt_len:
            if ids_digest(ids) != rec.prompt_digest:
                raise ReplayDiverged(i, "prompt", "its token ids hash to another digest than the recorded one")
            self._prompt_len[i] = len(ids)
        so_far = ids[self._prompt_len[i]:]
        if so_far != rec.response_ids[: len(so_far)]:
            at = next((j for j, (a, b) in enumerate(zip(so_far, rec.response_ids)) if a != b),
                      min(len(so_far), len(rec.response_ids)))
            raise ReplayDiverged(i, "response_ids", f"token {at}, after the interpreter's answer")
        start = end = len(so_far)
        budget = params.max_new_tokens if r.max_new_tokens is None else r.max_new_tokens
        while end < len(rec.response_ids) and rec.loss_mask[end] == 1 and end - start < budget:
            end += 1
        new = rec.response_ids[start:end]
        finish, stop = self._finish(rec, new, end, params.stop)
        return GenerationOutput(new, [0.0] * len(new), finish, stop)

    def _finish(self, rec: RecordedResponse, new: list[int], end: int, stops: Sequence[str]) -> tuple:
        at_end = end == len(rec.response_ids)
        if at_end and rec.finish_reason == "eos":
            return FINISH_EOS, None
        ends_at_stop = rec.finish_reason in ("answer", "tool_cap") or rec.call_at_end
        if (at_end and ends_at_stop) or (not at_end and rec.loss_mask[end] == 0):
            text = self.tokenizer.decode(new)
            ends = {s: text.rfind(s) + len(s) for s in stops if s and s in text}
            if ends:
                return FINISH_STOP, max(ends, key=ends.__getitem__)
        return FINISH_LENGTH, None

    def release(self, keys: Iterable[Hashable]) -> None:
        """Nothing is cached per key."""
