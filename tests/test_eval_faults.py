"""Evaluation never counts an infrastructure failure as a wrong answer (issue 29): such samples are
reported apart and re-run on resume, an evaluation where every sample failed so fails loudly, and
`tirl eval --sandbox-url` against a dead or always-503 sandbox ends in bounded time with exit 2 and one line."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web
from eval_scripts import ByProblemGenerator, FakeSandbox
from fixtures_models import tiny_model_dir, tiny_tokenizer  # noqa: F401 - pytest fixtures
from helpers_rollout import FlakySandbox
from test_eval import ANSWERS, SCRIPTS, _scripted_run, eval_cfg
from test_faults import FailingGenerator

from tirl.data import Problem
from tirl.eval import evaluate
from tirl.generation.server import ServerThread
from tirl.rollout.faults import InfraDown

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = [Problem(f"p{i}", q, a) for i, (q, a) in enumerate(ANSWERS.items())]


def _run(tok, run_dir, sandbox, **rollout):
    return evaluate(ByProblemGenerator(tok, SCRIPTS), tok, sandbox, {"toy": PROBLEMS},
                    eval_cfg(n=4, max_tokens=128, **rollout), run_dir, model_id="scripted", show=False)


def test_an_infra_failed_sample_is_reported_apart_and_rerun_on_resume(tiny_tokenizer, tmp_path):
    """p0's first sample (the only one of p0 with code) loses its call to the sandbox: it is not wrong, it
    is no sample. Before: it was graded wrong (avg@4 6/16 instead of 6/15)."""
    tok = tiny_tokenizer
    flaky = FlakySandbox(FakeSandbox(), fail_codes={"print(12*34)": math.inf})
    s = _run(tok, tmp_path / "run", flaky, exec_retries=0)["benchmarks"]["toy"]
    assert (s["problems"], s["samples"], s["infra_failed"]) == (4, 15, 1)
    assert s["avg@4"] == pytest.approx(6 / 15)  # p0 keeps 1 right of 3; the others 2, 2, 1 of 4
    assert s["pass@4"] == pytest.approx(1.0) and s["maj@4"] == pytest.approx(2 / 3)  # over p1..p3 (4 samples each)
    records = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    failed = [r for r in records if r["infra_failed"]]
    assert [(r["problem_id"], r["sample_index"], r["grade"]) for r in failed] == [("p0", 0, "infra_failed")]
    assert "injected fault" in failed[0]["infra_error"] and failed[0]["finish_reason"] == "infra"

    resumed = _run(tok, tmp_path / "run", FakeSandbox())  # the sandbox is back (and retries differ: allowed)
    clean, _ = _scripted_run(tok, tmp_path / "clean")
    assert resumed["resumed_samples"] == 15 and resumed["benchmarks"] == clean["benchmarks"]
    assert len((tmp_path / "run" / "samples.jsonl").read_text().splitlines()) == 17  # the failed record stays


def test_an_evaluation_where_every_sample_failed_fails_loudly(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    gen = FailingGenerator(ByProblemGenerator(tok, SCRIPTS), fail=range(4))
    with pytest.raises(InfraDown, match=r"every sample \(16\) failed .*gen/v1/completions"):
        evaluate(gen, tok, FakeSandbox(), {"toy": PROBLEMS}, eval_cfg(n=4, max_tokens=128), tmp_path / "run",
                 model_id="scripted", show=False)


def _completions_app(tok) -> web.Application:
    """An OpenAI-compatible server whose model always writes one code block (and stops there)."""
    text = "<code>\n```python\nprint(6 * 7)\n```\n</code>"
    ids = tok.encode(text, add_special_tokens=False)

    async def completions(request):
        return web.json_response({"choices": [{"index": 0, "text": text, "finish_reason": "stop", "stop_reason": "</code>",
                                               "logprobs": {"tokens": [f"token_id:{i}" for i in ids],
                                                            "token_logprobs": [-0.1] * len(ids)}}]})

    async def models(request):
        return web.json_response({"data": [{"id": "fake-model"}]})

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    return app


def _always_503() -> web.Application:
    async def run_code(request):
        return web.Response(status=503, text="service unavailable")

    app = web.Application()
    app.router.add_post("/run_code", run_code)
    return app


def _dead_url() -> str:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("sandbox", ["dead", "503"])
def test_cli_eval_with_a_sandbox_that_stays_down_exits_2_in_bounded_time(tiny_model_dir, tiny_tokenizer, tmp_path,
                                                                         sandbox):  # noqa: F811
    """Before: every call's `sandbox_error` was shown to the model and graded as its wrong answer; the run
    went on for minutes and reported 0% with exit 0."""
    gen = ServerThread(_completions_app(tiny_tokenizer))
    box = ServerThread(_always_503()) if sandbox == "503" else None
    url = box.url if box else _dead_url()
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "problem": f"What is {i} times 7?", "answer": str(7 * i)}) + "\n"
                            for i in range(6)))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "-m", "tirl.cli", "eval", "--server", gen.url, "--tokenizer",
                            str(tiny_model_dir), "--data", str(data), "--sandbox-url", url, "--max-tokens", "200",
                            "rollout.exec_retry_deadline_s=2", "rollout.exec_retry_backoff_s=0.2",
                            "--run-dir", str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=240)
    finally:
        gen.close()
        if box:
            box.close()
    errors = [line for line in r.stderr.splitlines() if line.startswith("tirl eval:")]
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert len(errors) == 1 and f"sandbox at {url} is down" in errors[0], r.stderr[-2000:]
    assert ("HTTP 503" if sandbox == "503" else "ClientConnectorError") in errors[0]
    assert time.monotonic() - t0 < 120  # interpreter and model start-up, one call's HTTP retries, the deadline
