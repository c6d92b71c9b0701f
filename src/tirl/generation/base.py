"""The `Generator` protocol: token ids in, sampled token ids + log-probs + finish reason out.

Token-in/token-out: a request carries the *full* token sequence so far (prompt, sampled tokens and any
injected interpreter tokens); the output carries only the newly sampled ids. Nobody re-tokenises the
model's text, so the ids the trainer sees are the ids that were sampled (verl#3960, trl#5144).

Cache reuse is the backend's business and invisible in the protocol: a request may carry a `key`
(one per trajectory); a backend that keeps per-key state (the transformers backend keeps each
sequence's KV cache) reuses the longest cached prefix of the request's ids and prefills only the rest;
a server backend sends the ids and lets the server's prefix cache do the same. `release(keys)` frees
that state when a trajectory is finished.

Log-probs: `log_softmax(logits / temperature)` of the sampled token, i.e. the distribution the trainer
recomputes when it scales logits by the rollout temperature; top-p / top-k truncation is not applied
to them (it is applied to sampling only). For greedy decoding (temperature 0) they are the raw
`log_softmax(logits)`.

Not covered: beam search, logit processors beyond temperature / top-p / top-k, speculative decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Iterable, Protocol, Sequence, runtime_checkable

FINISH_STOP = "stop"
"""A stop string appeared in the newly sampled text (the tokens that made it are kept)."""
FINISH_EOS = "eos"
FINISH_LENGTH = "length"
FINISH_ERROR = "error"
"""The backend could not produce this continuation (a server that kept failing after its retries; the
reason is in `extras["error"]`): the infrastructure's failure, not the model's (no tokens are returned)."""


@dataclass
class SamplingParams:
    """How to sample; shared by every request of one `generate` call."""

    max_new_tokens: int = 256
    """Upper bound on sampled tokens per request (a request may lower it, e.g. to its remaining budget)."""
    temperature: float = 1.0
    """1.0 as in both papers' RL; 0 means greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1.0 disables it (ReTool evaluates with 0.7)."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 disables it."""
    stop: tuple[str, ...] = ()
    """Stop strings, matched on the decoded text of the tokens sampled in this call."""
    seed: int | None = None
    """Seed of the sampling generator: the same call with the same seed samples the same tokens."""
    return_logits: bool = False
    """Also return the full (temperature-free) logits of every sampled position; for tests and debugging."""
    resume_after: tuple[str, ...] | None = None
    """The stop strings after which the caller goes on with a request (the rollout: the code block's
    close). A backend that keeps a finished request's keys/values for its next call keeps only those of
    requests that stopped on one of them; None keeps every request's. Why: in a tool rollout most rows end
    on an answer, EOS or the budget, and their caches would sit beside the running batch until released."""


@dataclass
class GenerationRequest:
    """One sequence to continue."""

    token_ids: list[int]
    """Everything so far: prompt + response (sampled and injected tokens). Never empty."""
    key: Hashable | None = None
    """Identifies the trajectory across calls, so a backend may reuse its cached prefix."""
    max_new_tokens: int | None = None
    """Overrides `SamplingParams.max_new_tokens` for this request (the rollout's remaining budget)."""


@dataclass
class GenerationOutput:
    """What one request produced. Lists are aligned: one entry per sampled token."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    """`stop`, `eos`, `length` or `error`."""
    stop_string: str | None = None
    """The stop string that matched (when `finish_reason == "stop"`)."""
    prefill_tokens: int = 0
    """Positions run through the model in this call's first (multi-token) forward for this request."""
    decode_tokens: int = 0
    """Positions run through the model one at a time while sampling."""
    logits: object = None
    """`(n_new, V)` float tensor when `SamplingParams.return_logits`, else None."""
    extras: dict = field(default_factory=dict)


@runtime_checkable
class Generator(Protocol):
    """Anything that continues token sequences. Backends: `HFGenerator` (transformers),
    `tests/scripted_generator.py` (fixed streams); an OpenAI-compatible HTTP backend fits the same shape."""

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[GenerationOutput]:
        ...

    def release(self, keys: Iterable[Hashable]) -> None:
        """Forget any per-key state (cached keys/values) of finished trajectories."""
        ...
