"""Who rewrites: the LLM backends of `tirl convert`, behind one small async protocol.

    rewriter = ChatRewriter("http://127.0.0.1:8000", "Qwen2.5-72B-Instruct", max_tokens=4096)
    text, finish = await rewriter.rewrite(messages, key="p-17")

* `ChatRewriter` — any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, SGLang, hosted APIs):
  text in, text out, so no local tokenizer is needed. Rewriting is text work (the verified trace is
  re-tokenised by the SFT loader anyway), which is why this path does not need the token-in/token-out
  completions client of `tirl.generation.openai`. Connection errors, timeouts and 5xx/429 are retried
  with exponential back-off; other 4xx raise at once with the server's message.
* `GeneratorRewriter` — any `tirl.generation.Generator` plus its tokenizer: `HFGenerator` for a local
  transformers model (`--model PATH`), or `OpenAIGenerator` for a completions-only server. The chat
  messages go through the tokenizer's chat template (plain text without one). Calls are serialised by
  a lock (an in-process model is one batch at a time; requests of concurrent items queue).

`finish` is `"stop"` or `"length"` (the rewrite hit the token budget; the pipeline rejects it as
`truncated`). A rewriter that can never rewrite an item (the rule-based one of `tirl.convert.rules`, on
a solution without steps) raises `NotRewritable`: the item is rejected as `no_steps`, not retried.

Not covered: streaming, function calling, batching several items into one `HFGenerator` call.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from tirl.formats import render_messages
from tirl.http_client import HTTPRejected, HTTPUnavailable, request_json


class RewriteError(RuntimeError):
    """The LLM could not be asked (unreachable, kept failing, refused the request)."""


class NotRewritable(ValueError):
    """This item cannot be rewritten, whatever the retries (rejected as `no_steps`)."""


class Rewriter(Protocol):
    async def rewrite(self, messages: list[dict[str, str]], key: str = "") -> tuple[str, str]:
        """(assistant text, finish reason "stop" | "length")."""
        ...

    async def aclose(self) -> None:
        ...


class ChatRewriter:
    """OpenAI-compatible chat completions client (aiohttp); at most `max_concurrency` requests in flight."""

    def __init__(self, base_url: str, model: str, *, temperature: float = 0.7, top_p: float = 1.0,
                 max_tokens: int = 4096, max_concurrency: int = 16, retries: int = 4, backoff_s: float = 1.0,
                 request_timeout_s: float = 900.0, api_key: str | None = None, seed: int | None = None):
        url = base_url.rstrip("/")
        self.url = (url if url.endswith("/v1") else url + "/v1") + "/chat/completions"
        self.model = model
        self.body = {"model": model, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
        if seed is not None:
            self.body["seed"] = seed
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, request_timeout_s
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._max_concurrency = max_concurrency
        self._sem: asyncio.Semaphore | None = None
        self._session: Any = None

    async def rewrite(self, messages: list[dict[str, str]], key: str = "") -> tuple[str, str]:
        import aiohttp

        if self._session is None:  # created inside the running loop, which aiohttp requires
            self._session = aiohttp.ClientSession(headers=self.headers)
            self._sem = asyncio.Semaphore(self._max_concurrency)
        body = {**self.body, "messages": messages}
        async with self._sem:
            try:
                data = await request_json(self._session, "POST", self.url, body, timeout_s=self.timeout_s,
                                          retries=self.retries, backoff_s=self.backoff_s)
            except (HTTPRejected, HTTPUnavailable) as e:
                raise RewriteError(str(e)) from None
        return _parse_chat(data, self.url)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _parse_chat(data: Any, url: str) -> tuple[str, str]:
    try:
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise RewriteError(f"{url} answered without choices[0].message: {str(data)[:300]}") from None
    return text, "length" if choice.get("finish_reason") == "length" else "stop"


class GeneratorRewriter:
    """A `Generator` (token ids in/out) used as a rewriter through its tokenizer's chat template."""

    def __init__(self, generator: Any, tokenizer: Any, *, temperature: float = 0.7, top_p: float = 1.0,
                 max_tokens: int = 4096, seed: int | None = None, use_chat_template: bool | None = None):
        from tirl.generation.base import SamplingParams

        self.generator, self.tokenizer = generator, tokenizer
        self.params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.use_chat_template = has_template if use_chat_template is None else use_chat_template
        self._lock = asyncio.Lock()

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = render_messages(self.tokenizer, messages, self.use_chat_template)
        if not self.use_chat_template:
            text += "\n\n"  # a base model starts its answer after a blank line, not mid-paragraph
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    async def rewrite(self, messages: list[dict[str, str]], key: str = "") -> tuple[str, str]:
        from tirl.generation.base import FINISH_LENGTH, GenerationRequest

        request = GenerationRequest(self.prompt_ids(messages), key=key or None)
        async with self._lock:
            out = (await asyncio.to_thread(self.generator.generate, [request], self.params))[0]
            await asyncio.to_thread(self.generator.release, [request.key])
        text = self.tokenizer.decode(out.token_ids, skip_special_tokens=True)
        return text, "length" if out.finish_reason == FINISH_LENGTH else "stop"

    async def aclose(self) -> None:
        close = getattr(self.generator, "close", None)
        if close is not None:
            await asyncio.to_thread(close)
