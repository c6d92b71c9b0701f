"""`tirl serve MODEL`: a small OpenAI-compatible completions server around the transformers backend.

It lets a user without vLLM serve a checkpoint to a colleague (or to `tirl eval --server`), and it is
what the HTTP client (`tirl.generation.openai.OpenAIGenerator`) is tested against here.

Endpoints
* `POST /v1/completions` — OpenAI's completions request: `prompt` (a string, a list of token ids, or a
  list of either), `max_tokens` (default 16, as OpenAI), `temperature` (0 = greedy), `top_p`, `top_k`,
  `stop`, `seed`, `n`, `logprobs`, plus vLLM's `return_tokens_as_token_ids`,
  `include_stop_str_in_output`, `skip_special_tokens` and `add_special_tokens` (for string prompts;
  default true, as vLLM). Each choice carries `finish_reason` (`stop` | `length`) and vLLM's
  `stop_reason` (the matched stop string, or null for EOS). `stream: true` answers with server-sent
  events as OpenAI's API does (`tirl.generation.sse`; sent once generation ends). Unsupported options
  (`echo`, `best_of`, `suffix`, penalties other than their neutral value) are refused with 400, never
  ignored.
* `POST /v1/chat/completions` — the same options with `messages` instead of `prompt`; the messages
  become the prompt through the one prompt rule (`tirl.formats.render_messages`) under the model's
  saved prompt settings (`tirl.json`: chat template or plain text; the style's system prompt is added
  when the request has none), so `tirl convert --server` and chat clients work against it.
* `GET /v1/models`, `GET /health` (with `weight_version`).
* `POST /update_weights_from_disk` — `{"model_path": DIR, "weight_version": V}` (SGLang's name and
  body): loads the weights saved in DIR (`save_pretrained`) into the served model between batches,
  drops every cached prefix (their keys and values came from the old weights), and answers
  `{"success": true, "weight_version": V}`. A trainer syncing through disk checks that version.

Batching: requests that arrive within `batch_wait_s` of each other with the same sampling settings
run as one batch through `HFGenerator.generate` (one worker thread; the model is not thread-safe).
A request with a `seed` runs alone, so that its seed alone decides its sample.

Prefix cache across tool turns: the rollout's next turn of a trajectory sends the previous request's
ids + the sampled ids + the interpreter output. The server keeps the KV cache of the last
`cache_slots` sequences (an `HFGenerator` key each) and gives a request the key of a cached sequence
that is a prefix of it, so only the new tokens are prefilled, as in-process. Least recently used
sequences are released beyond `cache_slots`.

Log-probs: of the sampled token only (`top_logprobs` lists just that token), under the protocol's
`log_softmax(logits / T)` (see `tirl.generation.base`).
Not covered: tool-call messages in chat completions, tokens streamed as they are sampled, authentication (bind to loopback or put it behind a proxy),
several models per server.

A little over the usual size: most of it is one class, `CompletionServer`, whose endpoints share the
batching worker, the prefix cache and the weight version; `ServerThread` and `serve` are its runners.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tirl.commands import check_port_free
from tirl.generation.base import FINISH_LENGTH, FINISH_STOP, GenerationRequest, SamplingParams

_NEUTRAL = {"echo": False, "best_of": 1, "suffix": None, "presence_penalty": 0,
            "frequency_penalty": 0, "repetition_penalty": 1, "logit_bias": None}


class BadRequest(ValueError):
    """A request the server refuses (HTTP 400) with a message saying why."""


@dataclass
class _Item:
    ids: list[int]
    max_tokens: int
    params: SamplingParams
    future: asyncio.Future


class CompletionServer:
    """Holds the generator, the request batcher and the prefix-cache bookkeeping; `app()` serves it."""

    def __init__(self, generator: Any, tokenizer: Any, model_name: str, *, max_batch_size: int = 32,
                 batch_wait_s: float = 0.005, cache_slots: int = 16, max_model_len: int | None = None,
                 prompt: Any = None):
        from tirl.formats import PromptConfig

        self.generator, self.tokenizer, self.model_name = generator, tokenizer, model_name
        self.prompt = prompt or PromptConfig()
        """How chat messages become a prompt (`/v1/chat/completions`)."""
        self.max_batch_size, self.batch_wait_s, self.cache_slots = max_batch_size, batch_wait_s, cache_slots
        self.max_model_len = max_model_len or _max_len(generator)
        self._seqs: OrderedDict[int, list[int]] = OrderedDict()  # cache key -> ids whose KV it holds
        self._keys = itertools.count()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tirl-serve-model")
        self._queue: asyncio.Queue | None = None
        self.stats = {"requests": 0, "batches": 0, "cache_hits": 0}
        self.weight_version: Any = None
        """Set by `/update_weights_from_disk`; None while the weights are the ones loaded at start."""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_post("/update_weights_from_disk", self._update_weights)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        self._queue = asyncio.Queue()
        self._batcher_task = asyncio.get_running_loop().create_task(self._batcher())

    async def _stop(self, app: web.Application) -> None:
        self._batcher_task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- handlers ----------------------------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": self.model_name, "weight_version": self.weight_version,
                                  **self.stats})

    async def _update_weights(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except Exception:  # noqa: BLE001 - any parse failure is the client's
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("model_path"), str):
            return web.json_response({"success": False, "message": "'model_path' (string) is required"}, status=400)
        loop = asyncio.get_running_loop()
        try:  # in the model thread, so no batch runs with half-loaded weights
            await loop.run_in_executor(self._executor, self._load_weights, body["model_path"])
        except Exception as e:  # noqa: BLE001 - the old weights stay; the caller must not believe otherwise
            return web.json_response({"success": False, "message": f"{type(e).__name__}: {e}"}, status=400)
        self.weight_version = body.get("weight_version")
        return web.json_response({"success": True, "message": "weights loaded, prefix cache flushed",
                                  "weight_version": self.weight_version})

    def _load_weights(self, path: str) -> None:
        """Copy the safetensors weights in `path` into the served model's tensors (same shapes)."""
        from pathlib import Path

        import torch
        from safetensors.torch import load_file

        files = sorted(Path(path).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors file in {path}")
        new: dict[str, Any] = {}
        for f in files:
            new.update(load_file(f))
        state = self.generator.model.state_dict()
        loaded = {state[k].data_ptr() for k in new if k in state}
        # save_pretrained writes a tied tensor (lm_head = embeddings) once: it is filled through its twin.
        missing = [k for k in state if k not in new and state[k].data_ptr() not in loaded]
        unexpected = [k for k in new if k not in state]
        bad = [k for k in new if k in state and new[k].shape != state[k].shape]
        if missing or unexpected or bad:
            raise ValueError(f"weights in {path} do not fit the served model: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}, shape mismatch {bad[:3]}")
        with torch.no_grad():
            for k, v in new.items():
                state[k].copy_(v)
        self.generator.release(list(self._seqs))
        self.generator.release(self.generator.cached_keys())
        self._seqs.clear()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model_name, "object": "model", "owned_by": "tirl", "max_model_len": self.max_model_len}]})

    async def _chat_completions(self, request: web.Request) -> web.Response:
        return await self._completions(request, chat=True)

    def _chat_prompt(self, body: dict[str, Any]) -> str:
        """The request's messages as prompt text, by the model's saved prompt rule."""
        from tirl.formats import make_style, render_messages

        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise BadRequest("messages must be a non-empty list of {role, content} objects with string content")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        system = make_style(self.prompt).system_prompt
        if system and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system})
        try:
            return render_messages(self.tokenizer, messages, self.prompt.chat)
        except ValueError as e:
            raise BadRequest(str(e)) from None

    async def _completions(self, request: web.Request, chat: bool = False) -> web.Response:
        try:
            body = await request.json()
        except Exception:  # noqa: BLE001 - any parse failure is the client's
            return _error(400, "body must be a JSON object")
        try:
            if not isinstance(body, dict):
                raise BadRequest("body must be a JSON object")
            if chat:
                if "prompt" in body:
                    raise BadRequest("chat completions take messages, not prompt (use /v1/completions)")
                body = {**body, "prompt": self._chat_prompt(body), "add_special_tokens": False}
            if body.get("model") not in (None, self.model_name):
                return _error(404, f"model {body.get('model')!r} does not exist; this server has {self.model_name!r}")
            prompts, params, opts = self._parse(body)
        except BadRequest as e:
            return _error(400, str(e))
        loop = asyncio.get_running_loop()
        items = [_Item(ids, params.max_new_tokens, params, loop.create_future())
                 for ids in prompts for _ in range(opts["n"])]
        for it in items:
            self._queue.put_nowait(it)
        self.stats["requests"] += 1
        try:
            outs = await asyncio.gather(*(it.future for it in items))
        except Exception as e:  # noqa: BLE001 - the model failed: the client may retry (5xx)
            return _error(500, f"generation failed: {type(e).__name__}: {e}")
        choices = [self._choice(i, out, opts, params.stop) for i, out in enumerate(outs)]
        n_prompt = sum(len(it.ids) for it in items)
        n_out = sum(len(o.token_ids) for o in outs)
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
        if opts["stream"]:
            from tirl.generation.sse import send_events, stream_chunks

            return await send_events(request, stream_chunks(choices, chat=chat, model=self.model_name,
                                                            usage=usage if opts["stream_usage"] else None))
        if chat:
            return web.json_response({
                "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model_name, "usage": usage,
                "choices": [{"index": c["index"], "message": {"role": "assistant", "content": c["text"]},
                             "finish_reason": c["finish_reason"], "logprobs": c["logprobs"]} for c in choices]})
        return web.json_response({
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": self.model_name, "choices": choices,
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out},
        })

    def _parse(self, body: dict[str, Any]) -> tuple[list[list[int]], SamplingParams, dict[str, Any]]:
        for name, neutral in _NEUTRAL.items():
            if name in body and body[name] != neutral and body[name] is not None:
                raise BadRequest(f"{name}={body[name]!r} is not supported by tirl serve")
        add_special = bool(body.get("add_special_tokens", True))
        prompts = [self._prompt_ids(p, add_special) for p in _prompt_list(body.get("prompt"))]
        max_tokens = _number(body, "max_tokens", 16, int, lo=1)
        too_long = max(len(p) for p in prompts) + max_tokens
        if too_long > self.max_model_len:
            raise BadRequest(f"prompt ({max(len(p) for p in prompts)} tokens) + max_tokens ({max_tokens}) "
                             f"exceeds the model's maximum context length ({self.max_model_len})")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequest("stop must be a string or a list of strings")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise BadRequest("seed must be an integer")
        params = SamplingParams(
            max_new_tokens=max_tokens, temperature=_number(body, "temperature", 1.0, float, lo=0.0),
            top_p=_number(body, "top_p", 1.0, float, lo=1e-9, hi=1.0), top_k=max(0, _number(body, "top_k", 0, int)),
            stop=tuple(s for s in stop if s), seed=seed)
        logprobs = body.get("logprobs")
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0):
            raise BadRequest("logprobs must be a non-negative integer or null")
        stream, stream_options = body.get("stream") or False, body.get("stream_options") or {}
        if not isinstance(stream, bool) or not isinstance(stream_options, dict):
            raise BadRequest("stream must be true or false, stream_options an object")
        opts = {"n": _number(body, "n", 1, int, lo=1, hi=64), "logprobs": logprobs, "stream": stream,
                "stream_usage": bool(stream_options.get("include_usage", False)),
                "as_ids": bool(body.get("return_tokens_as_token_ids", False)),
                "include_stop": bool(body.get("include_stop_str_in_output", False)),
                "skip_special": bool(body.get("skip_special_tokens", True))}
        return prompts, params, opts

    def _prompt_ids(self, prompt: Any, add_special: bool) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special_tokens=add_special)
        else:
            ids = list(prompt)
            vocab = len(self.tokenizer)
            if any(not 0 <= t < vocab for t in ids):
                raise BadRequest(f"token ids must be in [0, {vocab})")
        if not ids:
            raise BadRequest("prompt is empty")
        return ids

    def _choice(self, index: int, out: Any, opts: dict[str, Any], stops: tuple[str, ...]) -> dict[str, Any]:
        text = self.tokenizer.decode(out.token_ids, skip_special_tokens=opts["skip_special"])
        if out.finish_reason == FINISH_STOP and out.stop_string and not opts["include_stop"]:
            cut = text.find(out.stop_string)
            text = text[:cut] if cut >= 0 else text
        logprobs = None
        if opts["logprobs"] is not None:
            toks = ([f"token_id:{t}" for t in out.token_ids] if opts["as_ids"]
                    else [self.tokenizer.decode([t]) for t in out.token_ids])
            logprobs = {"tokens": toks, "token_logprobs": [float(x) for x in out.logprobs],
                        "top_logprobs": [{t: float(x)} for t, x in zip(toks, out.logprobs)] if opts["logprobs"] else None,
                        "text_offset": None}
        return {"index": index, "text": text, "logprobs": logprobs,
                "finish_reason": "length" if out.finish_reason == FINISH_LENGTH else "stop",
                "stop_reason": out.stop_string if out.finish_reason == FINISH_STOP else None}

    # --- batching and the prefix cache -------------------------------------------------------------
    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(self.batch_wait_s)  # let the other requests of a rollout turn arrive
            while not self._queue.empty() and len(batch) < self.max_batch_size:
                batch.append(self._queue.get_nowait())
            groups: dict[Any, list[_Item]] = {}
            for it in batch:
                p = it.params
                key = (object() if p.seed is not None else None, p.temperature, p.top_p, p.top_k, p.stop)
                groups.setdefault(key, []).append(it)
            for items in groups.values():
                live = [it for it in items if not it.future.cancelled()]
                if not live:
                    continue
                try:
                    outs = await loop.run_in_executor(self._executor, self._run, live)
                except Exception as e:  # noqa: BLE001 - reported to each waiting request as a 500
                    for it in live:
                        if not it.future.done():
                            it.future.set_exception(e)
                    continue
                for it, out in zip(live, outs):
                    if not it.future.done():
                        it.future.set_result(out)

    def _run(self, items: list[_Item]) -> list[Any]:
        """One `generate` call in the model thread; claims and updates prefix-cache keys."""
        self.stats["batches"] += 1
        taken: set[int] = set()
        keys = [self._claim(it.ids, taken) for it in items]
        reqs = [GenerationRequest(it.ids, key, it.max_tokens) for it, key in zip(items, keys)]
        outs = self.generator.generate(reqs, items[0].params)
        if self.cache_slots > 0:
            held = set(self.generator.cached_keys())
            for it, key, out in zip(items, keys, outs):
                if key in held and out.token_ids:
                    self._seqs[key] = it.ids + out.token_ids[:-1]  # what HFGenerator cached
            while len(self._seqs) > self.cache_slots:
                old, _ = self._seqs.popitem(last=False)
                self.generator.release([old])
        return outs

    def _claim(self, ids: list[int], taken: set[int]) -> int | None:
        """Key of a cached sequence that is a prefix of `ids` (the longest), else a fresh key."""
        if self.cache_slots <= 0:
            return None
        best, best_len = None, 0
        for key, seq in self._seqs.items():
            if key not in taken and best_len < len(seq) <= len(ids) and ids[: len(seq)] == seq:
                best, best_len = key, len(seq)
        if best is None:
            best = next(self._keys)
        else:
            self._seqs.pop(best)
            self.stats["cache_hits"] += 1
        taken.add(best)
        return best


def _error(status: int, message: str) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


def _prompt_list(prompt: Any) -> list[Any]:
    """`prompt` as a list of prompts (each a string or a list of ints)."""
    def is_ids(x: Any) -> bool:
        return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

    if isinstance(prompt, str) or is_ids(prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) or is_ids(p) for p in prompt):
        return list(prompt)
    raise BadRequest("prompt must be a non-empty string, a list of token ids, or a list of either")


def _number(body: dict[str, Any], name: str, default: Any, kind: type, lo: float | None = None,
            hi: float | None = None) -> Any:
    value = body.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise BadRequest(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    value = kind(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise BadRequest(f"{name}={value} is out of range [{lo}, {hi}]")
    return value


def _max_len(generator: Any) -> int:
    config = getattr(getattr(generator, "model", None), "config", None)
    return int(getattr(config, "max_position_embeddings", 0) or 1 << 20)


class ServerThread:
    """Run an aiohttp app on `host:port` (0 = any free port) in a background thread; `url` is its root.
    For tests and notebooks; `serve` below is the blocking command-line form."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0):
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(host, port), daemon=True, name="tirl-serve")
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("server did not start within 60 s")
        if self._error is not None:
            raise self._error

    def _main(self, host: str, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        self._error: BaseException | None = None
        try:
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, host, port)
            self._loop.run_until_complete(site.start())
            bound = site._server.sockets[0].getsockname()  # the real port when 0 was asked
            self.url = f"http://{host}:{bound[1]}"
        except BaseException as e:  # noqa: BLE001 - re-raised in the starting thread
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)

    def __enter__(self) -> "ServerThread":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000, gguf_file: str | None = None,
          dtype: str = "float32", served_model_name: str | None = None, max_batch_size: int = 32,
          cache_slots: int = 16, prompt: Any = None, device: str | None = None,
          precision: str = "fp32") -> None:
    """Load `model` (a directory, a hub name, or a .gguf file) and serve it until interrupted (blocking).
    `prompt` (a `PromptConfig`) decides how chat messages are rendered."""
    from tirl.generation.hf import HFGenerator
    from tirl.models import load_model, load_tokenizer

    check_port_free(host, port)

    tokenizer = load_tokenizer(model, gguf_file=gguf_file)
    lm = load_model(model, gguf_file=gguf_file, dtype=dtype, device=device)
    name = served_model_name or str(model)
    server = CompletionServer(HFGenerator(lm, tokenizer, max_batch_size=max_batch_size, precision=precision),
                              tokenizer, name, max_batch_size=max_batch_size, cache_slots=cache_slots, prompt=prompt)
    print(f"tirl serve: {name} on http://{host}:{port}/v1 (completions, chat/completions, models; health at "
          "/health)", flush=True)
    web.run_app(server.app(), host=host, port=port, print=None)
