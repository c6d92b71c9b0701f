"""The OpenAI-compatible client against small aiohttp apps that misbehave on purpose: retries on 5xx and
refused connections, a clear error on 4xx, token-id vs text modes, trimmed stop strings, the
concurrency bound, and the request body it sends."""

from __future__ import annotations

import asyncio
import math
import socket

import pytest
from aiohttp import web
from fixtures_models import tiny_model_dir, tiny_tokenizer  # noqa: F401 - pytest fixtures

from tirl.generation import FINISH_EOS, FINISH_ERROR, FINISH_LENGTH, FINISH_STOP, GenerationRequest, SamplingParams
from tirl.generation.openai import OpenAIGenerator, ServerError
from tirl.generation.server import ServerThread

PARAMS = SamplingParams(max_new_tokens=8, temperature=0, stop=("</code>",))


def _choice(ids=(5, 6, 7), finish="length", stop_reason=None, text="abc", with_ids=True):
    logprobs = {"tokens": [f"token_id:{i}" for i in ids], "token_logprobs": [-0.5] * len(ids)} if with_ids else None
    return {"choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish,
                         "stop_reason": stop_reason}]}


class Fake:
    """An app whose /v1/completions answers with `handler(body, call_number)` -> (status, json)."""

    def __init__(self, handler, delay_s: float = 0.0):
        self.handler, self.delay_s = handler, delay_s
        self.bodies: list[dict] = []
        self.inflight = self.max_inflight = 0

    def app(self) -> web.Application:
        async def completions(request):
            body = await request.json()
            self.bodies.append(body)
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            try:
                await asyncio.sleep(self.delay_s)
                status, data = self.handler(body, len(self.bodies))
            finally:
                self.inflight -= 1
            return web.json_response(data, status=status)

        async def models(request):
            return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

        app = web.Application()
        app.router.add_post("/v1/completions", completions)
        app.router.add_get("/v1/models", models)
        return app


@pytest.fixture
def serve_fake():
    threads = []

    def start(handler, delay_s=0.0):
        fake = Fake(handler, delay_s)
        threads.append(ServerThread(fake.app()))
        return fake, threads[-1].url

    yield start
    for t in threads:
        t.close()


def test_retries_through_503s_then_succeeds(serve_fake, tiny_tokenizer):
    fake, url = serve_fake(lambda body, n: (503, {"error": "warming up"}) if n <= 3 else (200, _choice()))
    with OpenAIGenerator(url, tiny_tokenizer, retries=4, backoff_s=0.01) as gen:
        out = gen.generate([GenerationRequest([1, 2, 3])], PARAMS)[0]
    assert len(fake.bodies) == 4
    assert out.token_ids == [5, 6, 7] and out.logprobs == [-0.5] * 3 and out.finish_reason == FINISH_LENGTH


def test_gives_up_after_the_retries_with_the_url_and_last_error(serve_fake, tiny_tokenizer):
    fake, url = serve_fake(lambda body, n: (502, {"error": "bad gateway"}))
    with OpenAIGenerator(url, tiny_tokenizer, model="m", retries=2, backoff_s=0.01) as gen:
        with pytest.raises(ServerError, match=r"/v1/completions failed after 3 attempts; last error: HTTP 502"):
            gen.generate([GenerationRequest([1, 2, 3])], PARAMS)
    assert len(fake.bodies) == 3


def test_a_request_that_keeps_failing_is_an_error_output_not_the_batchs_end(serve_fake, tiny_tokenizer):
    # The server fails every try of the request whose prompt is [9]: that sample is the server's failure
    # (FINISH_ERROR, no tokens; the rollout marks it infra_failed), the other one is served.
    fake, url = serve_fake(lambda body, n: (503, {"error": "overloaded"}) if body["prompt"] == [9] else (200, _choice()))
    with OpenAIGenerator(url, tiny_tokenizer, model="m", prompt_mode="tokens", retries=1, backoff_s=0.01) as gen:
        bad, ok = gen.generate([GenerationRequest([9]), GenerationRequest([1, 2])], PARAMS)
    assert bad.finish_reason == FINISH_ERROR and bad.token_ids == [] and "HTTP 503" in bad.extras["error"]
    assert url in bad.extras["error"] and ok.token_ids == [5, 6, 7] and ok.finish_reason == FINISH_LENGTH


def test_refused_connections_are_retried_then_reported(tiny_tokenizer):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with OpenAIGenerator(f"http://127.0.0.1:{port}", tiny_tokenizer, model="m", retries=2, backoff_s=0.01) as gen:
        with pytest.raises(ServerError, match=f"127.0.0.1:{port}/v1/completions failed after 3 attempts"):
            gen.generate([GenerationRequest([1, 2, 3])], PARAMS)


def test_4xx_is_a_clear_error_without_retries(serve_fake, tiny_tokenizer):
    fake, url = serve_fake(lambda body, n: (400, {"error": {"message": "max_tokens is too large for this model"}}))
    with OpenAIGenerator(url, tiny_tokenizer, prompt_mode="tokens", retries=5, backoff_s=0.01) as gen:
        with pytest.raises(ValueError, match=r"rejected the request \(HTTP 400\).*max_tokens is too large"):
            gen.generate([GenerationRequest([1, 2, 3])], PARAMS)
    assert len(fake.bodies) == 1


def test_request_body_carries_ids_budget_stops_and_per_request_seeds(serve_fake, tiny_tokenizer):
    fake, url = serve_fake(lambda body, n: (200, _choice()))
    params = SamplingParams(max_new_tokens=8, temperature=0.7, top_p=0.9, top_k=5, stop=("</code>", "</answer>"),
                            seed=100)
    with OpenAIGenerator(url, tiny_tokenizer) as gen:
        assert gen.model == "fake-model"  # from /v1/models
        gen.generate([GenerationRequest([1, 2, 3], max_new_tokens=3), GenerationRequest([4, 5])], params)
    bodies = sorted(fake.bodies, key=lambda b: b["seed"])
    assert [b["prompt"] for b in bodies] == [[1, 2, 3], [4, 5]]
    assert [b["max_tokens"] for b in bodies] == [3, 8] and [b["seed"] for b in bodies] == [100, 101]
    b = bodies[0]
    assert b["stop"] == ["</code>", "</answer>"] and b["include_stop_str_in_output"] is True
    assert b["return_tokens_as_token_ids"] is True and b["logprobs"] == 1
    assert (b["model"], b["temperature"], b["top_p"], b["top_k"]) == ("fake-model", 0.7, 0.9, 5)


def test_auto_mode_falls_back_to_text_prompts_and_says_so(serve_fake, tiny_tokenizer):
    def handler(body, n):
        if isinstance(body["prompt"], list):
            return 400, {"error": "prompt must be a string"}
        return 200, _choice()

    fake, url = serve_fake(handler)
    ids = tiny_tokenizer.encode("What is 12 times 34?", add_special_tokens=False)
    with OpenAIGenerator(url, tiny_tokenizer) as gen:
        out = gen.generate([GenerationRequest(ids)], PARAMS)[0]
        gen.generate([GenerationRequest(ids)], PARAMS)
        assert gen.prompt_mode == "text" and gen.modes["prompt:text"] == 2
    assert out.extras["openai"]["prompt"] == "text"
    assert fake.bodies[1]["prompt"] == "What is 12 times 34?" and fake.bodies[1]["add_special_tokens"] is False
    assert isinstance(fake.bodies[2]["prompt"], str)  # no second try with ids once text is chosen


def test_text_only_server_output_is_retokenised_and_flagged(serve_fake, tiny_tokenizer):
    fake, url = serve_fake(lambda body, n: (200, _choice(text="x = 12 * 34\n</code>", finish="stop",
                                                         stop_reason="</code>", with_ids=False)))
    with OpenAIGenerator(url, tiny_tokenizer) as gen:
        out = gen.generate([GenerationRequest([1, 2])], PARAMS)[0]
    assert out.token_ids == tiny_tokenizer.encode("x = 12 * 34\n</code>", add_special_tokens=False)
    assert all(math.isnan(x) for x in out.logprobs) and out.extras["openai"]["output"] == "retokenized"
    assert out.finish_reason == FINISH_STOP and out.stop_string == "</code>"


def test_a_trimmed_stop_string_is_appended_back(serve_fake, tiny_tokenizer):
    body_ids = tiny_tokenizer.encode("print(1)", add_special_tokens=False)
    fake, url = serve_fake(lambda body, n: (200, _choice(ids=body_ids, text="print(1)", finish="stop",
                                                         stop_reason="</code>")))
    with OpenAIGenerator(url, tiny_tokenizer) as gen:
        out = gen.generate([GenerationRequest([1, 2])], PARAMS)[0]
    stop_ids = tiny_tokenizer.encode("</code>", add_special_tokens=False)
    assert out.token_ids == body_ids + stop_ids and out.extras["openai"]["stop_appended"]
    assert out.finish_reason == FINISH_STOP


def test_eos_when_the_server_stopped_without_a_stop_string(serve_fake, tiny_tokenizer):
    fake, url = serve_fake(lambda body, n: (200, _choice(finish="stop", stop_reason=None)))
    with OpenAIGenerator(url, tiny_tokenizer) as gen:
        out = gen.generate([GenerationRequest([1, 2])], PARAMS)[0]
    assert out.finish_reason == FINISH_EOS and out.stop_string is None


def test_concurrency_is_bounded(serve_fake, tiny_tokenizer):
    fake, url = serve_fake(lambda body, n: (200, _choice()), delay_s=0.05)
    with OpenAIGenerator(url, tiny_tokenizer, max_concurrency=3) as gen:
        outs = gen.generate([GenerationRequest([1, i + 2]) for i in range(10)], PARAMS)
    assert len(outs) == 10 and len(fake.bodies) == 10
    assert 1 <= fake.max_inflight <= 3
