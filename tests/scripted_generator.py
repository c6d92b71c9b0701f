"""A test double: a `Generator` that plays fixed token streams, to test the rollout loop without a model.

Each trajectory key owns one stream (what the "model" will write, in order). A call emits the stream
from the key's cursor token by token, with the same stop rules as a real backend: it stops after the
token that completes a stop string (matched on the decoded newly emitted tokens), after an EOS id, or
at the budget; the cursor moves on, so the next call (after the rollout injected interpreter tokens)
resumes the stream. An exhausted stream emits EOS. Every request is recorded in `calls` so tests can
check exactly which ids the rollout sent back (token-in/token-out).

Simplification: the stream does not depend on the injected tokens (a scripted model ignores what the
interpreter said).
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

from tirl.generation.base import (
    FINISH_EOS,
    FINISH_LENGTH,
    FINISH_STOP,
    GenerationOutput,
    GenerationRequest,
    SamplingParams,
)


class ScriptedGenerator:
    def __init__(
        self,
        streams: Mapping[Hashable, Sequence[int]] | Callable[[Hashable], Sequence[int]],
        tokenizer: Any,
        eos_token_id: int | None = None,
        logprob: float = -0.5,
    ):
        self._streams = streams
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        self.logprob = logprob
        self._cursor: dict[Hashable, int] = {}
        self.calls: list[tuple[Hashable, list[int]]] = []
        self.released: list[Hashable] = []

    def _stream(self, key: Hashable) -> Sequence[int]:
        return self._streams(key) if callable(self._streams) else self._streams[key]

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[GenerationOutput]:
        outs = []
        for r in requests:
            self.calls.append((r.key, list(r.token_ids)))
            stream = self._stream(r.key)
            pos = self._cursor.get(r.key, 0)
            budget = params.max_new_tokens if r.max_new_tokens is None else r.max_new_tokens
            new: list[int] = []
            finish, hit = FINISH_LENGTH, None
            while len(new) < budget:
                t = stream[pos] if pos < len(stream) else self.eos_id
                pos += 1
                new.append(t)
                if t == self.eos_id:
                    finish = FINISH_EOS
                    break
                text = self.tokenizer.decode(new)
                hit = next((s for s in params.stop if s and s in text), None)
                if hit:
                    finish = FINISH_STOP
                    break
            self._cursor[r.key] = pos
            outs.append(GenerationOutput(new, [self.logprob] * len(new), finish, hit,
                                         prefill_tokens=0, decode_tokens=len(new)))
        return outs

    def release(self, keys: Iterable[Hashable]) -> None:
        self.released.extend(keys)
