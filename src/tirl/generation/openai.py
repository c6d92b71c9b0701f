"""OpenAI-compatible completions backend: drive a vLLM, SGLang or `tirl serve` server through the
same `rollout` loop as the in-process backend (the `Generator` protocol).

    gen = OpenAIGenerator("http://127.0.0.1:8000", tokenizer, model="Qwen/Qwen2.5-Math-1.5B")
    trajectories, metrics = rollout(gen, prompts, tokenizer, sandbox, "retool")

Token-in/token-out where the server allows it:
* prompt: the request's ids are sent as a list of ints (`prompt_mode="tokens"`; vLLM, SGLang and
  OpenAI's own completions endpoint accept it). `prompt_mode="text"` sends `tokenizer.decode(ids)`
  (special tokens kept) and the server tokenises it again, which may differ from the ids the rollout
  holds. `auto` tries ids and, if the server's first answer to them is a 4xx, falls back to text.
* output: with `logprobs=1` and `return_tokens_as_token_ids=true` (vLLM's extension; `tirl serve`
  honours it too) each sampled token comes back as `token_id:<id>` with its log-prob, so the rollout
  gets the server's exact ids. A server that answers with plain tokens or text only is handled by
  re-tokenising the returned text with the local tokenizer: the ids may then differ from what was
  sampled and the log-probs are unknown (NaN). Every output says which path it took in
  `GenerationOutput.extras["openai"] = {"prompt": "tokens"|"text", "output": "token_ids"|"retokenized"}`
  and `OpenAIGenerator.modes` counts them over the generator's life, so an eval can report it.

Stop strings: sent as `stop`, with `include_stop_str_in_output=true` (vLLM) and `no_stop_trim=true`
(SGLang) so the text that closed a code block stays in the response, as the rollout expects. A server
that trims it anyway gets it appended back (re-tokenised, log-prob NaN; `extras["openai"]["stop_appended"]`).
Which stop matched comes from vLLM's `stop_reason` or SGLang's `matched_stop`; without either, a
response ending with a stop string counts as stopped by it, any other `stop` finish as EOS.

Transport: one asyncio loop in a background thread; at most `max_concurrency` requests in flight;
connection errors, timeouts and 5xx are retried with exponential back-off (`backoff_s * 2**attempt`);
a 4xx raises `ValueError` with the server's message at once (a bad request does not get better by
retrying). A request whose retries run out is the server's failure, not the model's: its output has
finish reason `error` (`FINISH_ERROR`, the message in `extras["error"]`, no tokens), and the rollout
marks that sample `infra_failed`; when every request of a `generate` call fails, the server is down
and a `ServerError` names the URL and the last failure.

Sampling: `temperature`, `top_p`, `top_k` (vLLM/SGLang extension; sent only when set), `max_tokens`
(the request's remaining budget) and `seed`: request i of a call gets `seed + i`, so n samples of one
prompt differ and a call is reproducible on a server with per-request seeds. Log-probs are whatever
the server reports (vLLM by default: of the raw distribution, before temperature), not necessarily
the `log_softmax(logits / T)` of the protocol: a trainer should recompute them.

Simplifications: `release` is a no-op (a server's prefix cache manages itself); no streaming; no
chat-completions endpoint (the rollout needs raw continuation of token ids).
Not covered: authentication beyond a bearer `api_key`, `n > 1` per request (one request per sample).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from typing import Any, Hashable, Iterable, Sequence

from tirl.generation.base import (FINISH_EOS, FINISH_ERROR, FINISH_LENGTH, FINISH_STOP, GenerationOutput,
                                  GenerationRequest, SamplingParams)
from tirl.http_client import BackgroundLoop, HTTPUnavailable, request_json

PROMPT_MODES = ("auto", "tokens", "text")


class ServerError(RuntimeError):
    """The server stayed unreachable or kept failing (5xx) after every retry."""


class OpenAIGenerator:
    """`Generator` over an OpenAI-compatible `/v1/completions` endpoint. Thread-safe for one caller."""

    def __init__(
        self,
        base_url: str,
        tokenizer: Any,
        model: str | None = None,
        prompt_mode: str = "auto",
        max_concurrency: int = 16,
        retries: int = 5,
        backoff_s: float = 0.5,
        request_timeout_s: float = 1800.0,
        api_key: str | None = None,
    ):
        if prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt_mode must be one of {PROMPT_MODES}, not {prompt_mode!r}")
        url = base_url.rstrip("/")
        self.base_url = url[: -len("/v1")] if url.endswith("/v1") else url
        self.tokenizer = tokenizer
        self.prompt_mode = prompt_mode
        self.retries, self.backoff_s = retries, backoff_s
        self.request_timeout_s = request_timeout_s
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.modes: Counter[str] = Counter()
        """How many outputs took each path: `prompt:tokens`, `prompt:text`, `output:token_ids`, ..."""
        self._bg = BackgroundLoop("tirl-openai", headers=self.headers)
        self._sem = asyncio.Semaphore(max_concurrency)
        self.model = model or self.served_models()[0]

    # --- protocol ----------------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[GenerationOutput]:
        async def go() -> list[GenerationOutput]:
            return list(await asyncio.gather(*(self._one_or_error(r, params, i) for i, r in enumerate(requests))))

        outs = self._call(go())
        if outs and all(o.finish_reason == FINISH_ERROR for o in outs):
            raise ServerError(outs[-1].extras["error"])
        return outs

    def release(self, keys: Iterable[Hashable]) -> None:
        """Nothing to free: the server's prefix cache is its own business."""

    def served_models(self) -> list[str]:
        """Model ids listed by `GET /v1/models`."""
        data = self._call(self._request("GET", "/v1/models", None))
        ids = [m.get("id") for m in data.get("data", []) if isinstance(m, dict) and m.get("id")]
        if not ids:
            raise ValueError(f"{self.base_url}/v1/models lists no model; pass model=... explicitly")
        return ids

    def close(self) -> None:
        self._bg.close()

    def __enter__(self) -> "OpenAIGenerator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- one request -------------------------------------------------------------------------------
    async def _one_or_error(self, r: GenerationRequest, params: SamplingParams, index: int) -> GenerationOutput:
        try:
            return await self._one(r, params, index)
        except ServerError as e:  # this request's retries ran out: the server's failure, not the model's
            return GenerationOutput([], [], FINISH_ERROR, extras={"error": str(e)})

    async def _one(self, r: GenerationRequest, params: SamplingParams, index: int) -> GenerationOutput:
        if not r.token_ids:
            raise ValueError("a generation request needs at least one token")
        budget = params.max_new_tokens if r.max_new_tokens is None else r.max_new_tokens
        if budget <= 0:
            return GenerationOutput([], [], FINISH_LENGTH)
        body: dict[str, Any] = {
            "model": self.model, "max_tokens": int(budget), "temperature": float(params.temperature),
            "top_p": float(params.top_p), "logprobs": 1, "return_tokens_as_token_ids": True,
            "include_stop_str_in_output": True, "no_stop_trim": True, "skip_special_tokens": False,
        }
        if params.top_k:
            body["top_k"] = int(params.top_k)
        stops = [s for s in params.stop if s]
        if stops:
            body["stop"] = stops
        if params.seed is not None:
            body["seed"] = int(params.seed) + index
        data, prompt_mode = await self._complete(body, list(r.token_ids))
        choice = (data.get("choices") or [None])[0]
        if not isinstance(choice, dict):
            raise ServerError(f"{self.base_url}/v1/completions answered without choices: {str(data)[:300]}")
        return self._parse(choice, stops, prompt_mode)

    async def _complete(self, body: dict[str, Any], ids: list[int]) -> tuple[dict[str, Any], str]:
        mode = self.prompt_mode
        text_body = {**body, "prompt": self._decode(ids), "add_special_tokens": False}  # no second BOS
        if mode == "text":
            return await self._post(text_body), "text"
        try:
            return await self._post({**body, "prompt": ids}), "tokens"
        except ValueError as e:
            if mode == "tokens":
                raise
            # auto: maybe this server refuses token-id prompts. If text works, use text from now on
            # (every output says so); if it fails too, the request itself was bad: report both.
            try:
                data = await self._post(text_body)
            except ValueError as e2:
                raise ValueError(f"{e2} (with token ids as prompt: {e})") from e2
            self.prompt_mode = "text"
            return data, "text"

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _parse(self, choice: dict[str, Any], stops: list[str], prompt_mode: str) -> GenerationOutput:
        text = choice.get("text") or ""
        ids, lps = _token_ids(choice.get("logprobs"))
        output_mode = "token_ids"
        if ids is None:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            lps = [math.nan] * len(ids)
            output_mode = "retokenized"
        finish = choice.get("finish_reason")
        stop_hit = _matched_stop(choice, text, stops)
        info: dict[str, Any] = {"prompt": prompt_mode, "output": output_mode}
        if finish == "length":
            reason = FINISH_LENGTH
        elif stop_hit is not None:
            reason = FINISH_STOP
            decoded = text if output_mode == "retokenized" else self._decode(ids)
            if stop_hit not in decoded[-(len(stop_hit) + 64):]:
                extra = self.tokenizer.encode(stop_hit, add_special_tokens=False)  # the server trimmed it
                ids, lps = ids + extra, lps + [math.nan] * len(extra)
                info["stop_appended"] = True
        else:
            reason = FINISH_EOS
        self.modes.update([f"prompt:{prompt_mode}", f"output:{output_mode}"])
        return GenerationOutput(ids, lps, reason, stop_hit if reason == FINISH_STOP else None,
                                decode_tokens=len(ids), extras={"openai": info})

    # --- transport ---------------------------------------------------------------------------------
    def _call(self, coro: Any) -> Any:
        return self._bg.call(coro)

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", "/v1/completions", body)

    async def _request(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        async with self._sem:
            try:
                return await request_json(await self._bg.session(), method, url, body, timeout_s=self.request_timeout_s,
                                          retries=self.retries, backoff_s=self.backoff_s)
            except HTTPUnavailable as e:
                raise ServerError(str(e)) from None


def _token_ids(logprobs: Any) -> tuple[list[int] | None, list[float]]:
    """(ids, log-probs) from vLLM-style `logprobs` with `token_id:<id>` tokens; (None, []) otherwise."""
    if not isinstance(logprobs, dict):
        return None, []
    tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
        return None, []
    ids = []
    for t in tokens:
        if not (isinstance(t, str) and t.startswith("token_id:")):
            return None, []
        try:
            ids.append(int(t[len("token_id:"):]))
        except ValueError:
            return None, []
    return ids, [math.nan if v is None else float(v) for v in values]


def _matched_stop(choice: dict[str, Any], text: str, stops: list[str]) -> str | None:
    """The stop string that ended this choice, or None (EOS, length, or a stop token id)."""
    if choice.get("finish_reason") != "stop":
        return None
    for field in ("stop_reason", "matched_stop"):  # vLLM (None = EOS), SGLang (an EOS id = EOS)
        if field in choice:
            value = choice[field]
            return value if isinstance(value, str) and value in stops else None
    tail = text.rstrip()
    return next((s for s in stops if tail.endswith(s.rstrip()) and s.strip()), None)
