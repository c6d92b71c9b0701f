"""`tirl convert`: canned rewrites (one per verification outcome) through the real sandbox and grader.

The scripted rewriter returns a fixed text per problem id, so every rejection reason is produced on
purpose and checked by file and reason; the fake OpenAI chat server on loopback does the same over HTTP
for the `ChatRewriter` and the CLI. Accepted rows are re-read with `load_traces` and tokenised.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from tirl.data import load_traces, tokenize_trace
from tirl.convert.config import ConvertConfig
from tirl.convert.items import Item, load_items
from tirl.convert.llm import ChatRewriter, GeneratorRewriter
from tirl.convert.pipeline import convert_async
from tirl.convert.prompt import build_rewrite_messages
from tirl.convert.verify import output_disagreement
from tirl.formats import RETOOL, TORL
from tirl.sandbox import Sandbox, SandboxConfig
from fixtures_models import tiny_model_dir  # noqa: F401 - pytest fixture

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]


def block(code: str, output: str | None, style=RETOOL) -> str:
    """A code block as an LLM writes it, with its written (expected) output unless None."""
    return style.wrap_code(code) + ("" if output is None else style.wrap_output(output))


def answer(a: str, style=RETOOL) -> str:
    return style.wrap_answer(a)


# id -> (reference answer, rewrite, expected outcome). Outcome "accepted" or a rejection reason.
CASES: dict[str, tuple[str, str, str]] = {
    "good": ("56088", "Multiply.\n" + block("print(123*456)", "56088") + "So it is 56088.\n" + answer("56088"),
             "accepted"),
    "reworded": ("3.14", "Pi to two places.\n" + block("import math\nprint('pi is', math.pi)", "3.14")
                 + "Rounded: 3.14.\n" + answer("3.14"), "accepted"),
    "no_written_output": ("10", "Sum.\n" + block("print(sum(range(5)))", None) + "It is 10.\n" + answer("10"),
                          "accepted"),
    "error_then_fix": ("5", "Try.\n" + block("print(1/0)", "ZeroDivisionError: division by zero")
                       + "Oops, fix the divisor.\n" + block("print(10//2)", "5") + "Got 5.\n" + answer("5"),
                       "accepted"),
    "trailing_text": ("4", "Two plus two.\n" + block("print(2+2)", "4") + answer("4") + "\nThanks!", "accepted"),
    "wrong_output": ("56088", "Multiply.\n" + block("print(123*456)", "56000") + "So 56088.\n" + answer("56088"),
                     "output_mismatch"),
    "fake_error": ("4", "Add.\n" + block("print(2+2)", "NameError: x") + "Then 4.\n" + answer("4"),
                   "output_mismatch"),
    "wrong_answer": ("56088", "Multiply.\n" + block("print(123*456)", "56088") + "So 56089.\n" + answer("56089"),
                     "wrong_answer"),
    "hidden_error": ("2", "Divide.\n" + block("print(1/0)", "inf") + "So 2.\n" + answer("2"), "code_error"),
    "unfixed_error": ("2", "Divide.\n" + block("print(1/0)", "ZeroDivisionError") + "Anyway 2.\n" + answer("2"),
                      "code_error"),
    "earlier_variable": ("12", "Set.\n" + block("x = 3\nprint(x)", "3") + "Use it.\n"
                         + block("print(x * 4)", "12") + "So 12.\n" + answer("12"), "code_error"),
    "timeout": ("1", "Loop.\n" + block("while True:\n    pass", "1") + "So 1.\n" + answer("1"), "code_error"),
    "unclosed_output": ("4", "Add.\n<code>\n```python\nprint(2+2)\n```\n</code>\n<interpreter>\n4\n\nSo 4.\n"
                        + answer("4"), "format"),
    "stray_tag": ("4", "Add.\n" + block("print(2+2)", "4") + "</interpreter> So 4.\n" + answer("4"), "format"),
    "two_answers": ("4", "Add.\n" + block("print(2+2)", "4") + "<answer>\n" + answer("4"), "format"),
    "empty_code": ("4", "Add.\n" + block("", "4") + answer("4"), "format"),
    "no_code": ("4", "2 + 2 = 4 by hand.\n" + answer("4"), "no_code"),
    "no_answer": ("4", "Add.\n" + block("print(2+2)", "4") + "The answer is 4.", "no_answer"),
    "long": ("4", "Add.\n" + block("print(2+2)", "4"), "truncated"),
}


class CannedRewriter:
    """A rewriter that answers each id with its canned text; records what it was asked."""

    def __init__(self, cases=CASES, fail: set[str] = frozenset()):
        self.cases, self.fail, self.asked = cases, set(fail), []

    async def rewrite(self, messages, key=""):
        self.asked.append(key)
        if key in self.fail:
            raise ConnectionError("LLM unreachable")
        return self.cases[key][1], "length" if key == "long" else "stop"

    async def aclose(self):
        pass


def items(cases=CASES) -> list[Item]:
    return [Item(k, f"Problem {k}?", f"Text solution of {k}.", ref) for k, (ref, _, _) in cases.items()]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox(SandboxConfig(timeout_s=5, memory_mb=256, max_concurrency=2, max_sessions=2))
    yield box
    box.close()


def run(cfg, rewriter, sandbox, run_dir, its=None):
    return asyncio.run(convert_async(cfg, rewriter, sandbox, run_dir, items=items() if its is None else its))


@pytest.fixture(scope="module")
def converted(sandbox, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("convert")
    summary = run(ConvertConfig(exec_timeout_s=1.0, concurrency=4), CannedRewriter(), sandbox, run_dir)
    return run_dir, summary


def test_every_case_lands_in_the_right_file_with_the_right_reason(converted):
    run_dir, summary = converted
    accepted = {r["id"] for r in read(run_dir / "accepted.jsonl")}
    rejected = {r["id"]: r for r in read(run_dir / "rejected.jsonl")}
    assert accepted == {k for k, c in CASES.items() if c[2] == "accepted"}
    assert {k: r["reason"] for k, r in rejected.items()} == {k: c[2] for k, c in CASES.items() if c[2] != "accepted"}
    assert "NameError" in rejected["earlier_variable"]["detail"]  # fresh mode: blocks do not share globals
    assert "timeout" in rejected["timeout"]["detail"]
    assert "56000" in rejected["wrong_output"]["detail"]
    assert rejected["wrong_answer"]["response"] == CASES["wrong_answer"][1]  # raw rewrite kept for inspection
    expected = {}
    for _, _, outcome in CASES.values():
        if outcome != "accepted":
            expected[outcome] = expected.get(outcome, 0) + 1
    assert {k: v for k, v in summary["rejected_by_reason"].items() if v} == expected
    assert summary["accepted"] == len(accepted) and summary["done"] == len(CASES)
    assert json.loads((run_dir / "summary.json").read_text())["rejected_by_reason"] == summary["rejected_by_reason"]


def test_accepted_traces_carry_real_outputs_and_load_for_sft(converted):
    run_dir, _ = converted
    traces = {t.id: t for t in load_traces(run_dir / "accepted.jsonl")}
    outputs = {k: [s.text for s in t.segments if not s.trainable] for k, t in traces.items()}
    assert outputs["good"] == [RETOOL.wrap_output("56088")]
    assert outputs["reworded"] == [RETOOL.wrap_output("pi is 3.141592653589793")]  # written "3.14" replaced
    assert outputs["no_written_output"] == [RETOOL.wrap_output("10")]  # inserted
    err, fixed = outputs["error_then_fix"]
    assert "Traceback" in err and "ZeroDivisionError: division by zero" in err and fixed == RETOOL.wrap_output("5")
    assert "Thanks" not in traces["trailing_text"].response  # nothing after </answer>, as in a rollout
    assert traces["good"].problem == "Problem good?" and traces["good"].answer == "56088"
    rows = {r["id"]: r for r in read(run_dir / "accepted.jsonl")}
    assert rows["error_then_fix"]["convert"]["errors_fixed"] == 1
    assert rows["reworded"]["convert"]["outputs_replaced"] == 1

    from tirl.models import train_tokenizer

    tok = train_tokenizer([t.response for t in traces.values()] * 3)
    ex = tokenize_trace(traces["good"], tok, RETOOL)
    masked = tok.decode([i for i, m in zip(ex["input_ids"][ex["num_prompt_tokens"]:],
                                           ex["loss_mask"][ex["num_prompt_tokens"]:]) if not m])
    assert masked == RETOOL.wrap_output("56088")  # exactly the interpreter span is out of the loss


def test_session_mode_lets_blocks_share_variables(sandbox, tmp_path):
    cases = {k: CASES[k] for k in ("earlier_variable", "good")}
    summary = run(ConvertConfig(exec_mode="session"), CannedRewriter(cases), sandbox, tmp_path, items(cases))
    assert summary["accepted"] == 2
    trace = {t.id: t for t in load_traces(tmp_path / "accepted.jsonl")}["earlier_variable"]
    assert [s.text for s in trace.segments if not s.trainable][1] == RETOOL.wrap_output("12")


def test_torl_style(sandbox, tmp_path):
    text = "Multiply.\n" + block("print(12*34)", "408", TORL) + "So 408.\n" + answer("408", TORL)
    wrong = "Multiply.\n" + block("print(12*34)", "400", TORL) + "So 408.\n" + answer("408", TORL)
    cases = {"t": ("408", text, "accepted"), "w": ("408", wrong, "output_mismatch")}
    summary = run(ConvertConfig(style="torl"), CannedRewriter(cases), sandbox, tmp_path, items(cases))
    assert summary["accepted"] == 1 and summary["rejected_by_reason"]["output_mismatch"] == 1
    (trace,) = load_traces(tmp_path / "accepted.jsonl", "torl")
    assert [s.text for s in trace.segments if not s.trainable] == [TORL.wrap_output("408")]


@pytest.mark.parametrize("written,real,bad", [
    ("56088", "56088\n", False),
    ("The result is 56,088", "56088", False),   # thousands separator and words
    ("3.14", "3.141592653589793", False),       # written value rounded
    ("3.15", "3.141592653589793", True),
    ("x = 5, y = 7", "y = 7\nx = 5", False),    # order does not matter
    ("-5", "5", True),                          # sign matters
    ("12", "1 2", True),
    ("[1, 2, 3]", "[1, 2, 3, 4]", False),       # the written output may show less
    ("ValueError: bad", "42", True),            # an invented error
    ("(no numbers here)", "42", False),         # nothing the reasoning could take from it
])
def test_numbers_rule(written, real, bad):
    assert (output_disagreement(written, real, "numbers") is not None) == bad


def test_other_rules():
    assert output_disagreement("a  b\n", "a b", "exact") is None
    assert output_disagreement("a b c", "a b", "exact") is not None
    assert output_disagreement("1", "2", "none") is None


def test_resume_after_a_torn_write_redoes_only_what_is_missing(sandbox, tmp_path):
    run(ConvertConfig(exec_timeout_s=1.0), CannedRewriter(), sandbox, tmp_path)
    acc, rej = tmp_path / "accepted.jsonl", tmp_path / "rejected.jsonl"
    lines = acc.read_text().splitlines(keepends=True)
    torn_id = json.loads(lines[-1])["id"]
    acc.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # died mid-write
    rej_lines = rej.read_text().splitlines(keepends=True)
    lost_id = json.loads(rej_lines[0])["id"]
    rej.write_text("".join(rej_lines[1:]))  # died before this item was written at all
    again = CannedRewriter()
    summary = run(ConvertConfig(exec_timeout_s=1.0), again, sandbox, tmp_path)
    assert sorted(again.asked) == sorted([torn_id, lost_id])
    ids = [r["id"] for r in read(acc) + read(rej)]
    assert len(ids) == len(set(ids)) == len(CASES)
    assert summary["this_run"]["skipped_already_done"] == len(CASES) - 2
    assert summary["done"] == len(CASES)


def test_llm_failures_are_not_recorded_and_are_retried(sandbox, tmp_path):
    cases = {k: CASES[k] for k in ("good", "wrong_answer")}
    summary = run(ConvertConfig(), CannedRewriter(cases, fail={"good"}), sandbox, tmp_path, items(cases))
    assert summary["this_run"]["infra_errors"]["llm"] == 1 and summary["done"] == 1
    assert "LLM unreachable" in summary["this_run"]["infra_error_examples"][0]
    again = CannedRewriter(cases)
    summary = run(ConvertConfig(), again, sandbox, tmp_path, items(cases))
    assert again.asked == ["good"] and summary["accepted"] == 1


def test_resume_refuses_other_settings(sandbox, tmp_path):
    cases = {"good": CASES["good"]}
    run(ConvertConfig(), CannedRewriter(cases), sandbox, tmp_path, items(cases))
    with pytest.raises(ValueError, match="other settings"):
        run(ConvertConfig(style="torl"), CannedRewriter(cases), sandbox, tmp_path, items(cases))


def test_a_corrupt_middle_line_is_an_error_not_a_silent_loss(sandbox, tmp_path):
    (tmp_path / "accepted.jsonl").write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=r"accepted.jsonl:2"):
        run(ConvertConfig(), CannedRewriter(), sandbox, tmp_path, [])


def test_load_items_fields_and_errors(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text(json.dumps({"question": "Q1", "sol": "so \\boxed{7}"}) + "\n"
                    + json.dumps({"question": "Q2", "sol": "s", "ans": 3, "uid": "x"}) + "\n")
    got = load_items(ConvertConfig(input=str(good), problem_field="question", solution_field="sol",
                                   answer_field="ans", id_field="uid"))
    assert [(i.id, i.answer) for i in got] == [("p-0", "7"), ("x", "3")]  # answer from the solution's box
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "Q", "answer": "1"}) + "\n{oops\n")
    with pytest.raises(ValueError) as e:
        load_items(ConvertConfig(input=str(bad)))
    assert f"{bad}:1: missing field 'solution'" in str(e.value) and "(and 1 more invalid row(s))" in str(e.value)


def test_prompt_shows_the_style_and_the_execution_model():
    msgs = build_rewrite_messages("What is {x}?", "Sol {y}", RETOOL, "fresh")
    user = msgs[-1]["content"]
    assert RETOOL.wrap_code("# Python code\nprint(result)") in user and "<interpreter>" in user
    assert "What is {x}?" in user and "Sol {y}" in user and "fresh" in user
    assert "same Python session" in build_rewrite_messages("p", "s", TORL, "session")[-1]["content"]


def test_generator_rewriter_over_a_scripted_generator():
    from scripted_generator import ScriptedGenerator
    from tirl.models import train_tokenizer

    text = CASES["good"][1]
    tok = train_tokenizer([text] * 4)
    ids = tok.encode(text, add_special_tokens=False)
    gen = ScriptedGenerator({"a": ids, "b": ids}, tok)
    short = GeneratorRewriter(gen, tok, max_tokens=5)
    full = GeneratorRewriter(gen, tok, max_tokens=len(ids) + 5)
    msgs = build_rewrite_messages("p", "s", RETOOL)
    assert asyncio.run(full.rewrite(msgs, key="a")) == (text, "stop")
    assert asyncio.run(short.rewrite(msgs, key="b"))[1] == "length"
    assert gen.released == ["a", "b"]


# --- over HTTP: a fake OpenAI chat server on loopback ----------------------------------------------
def _fake_chat_server(cases, flaky: set[str]):
    """Start a chat-completions server answering with the canned rewrite of the problem in the prompt."""
    from aiohttp import web

    seen: dict[str, int] = {}

    async def chat(request):
        body = await request.json()
        user = body["messages"][-1]["content"]
        key = next(k for k in cases if f"Problem {k}?" in user)
        seen[key] = seen.get(key, 0) + 1
        if key in flaky and seen[key] == 1:
            return web.Response(status=503, text="busy")
        finish = "length" if key == "long" else "stop"
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": cases[key][1]},
                                               "finish_reason": finish}]})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)

    def serve():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.SockSite(runner, sock).start())
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{port}", seen


@pytest.fixture(scope="module")
def chat_server():
    return _fake_chat_server(CASES, flaky={"good"})


def test_chat_rewriter_end_to_end(sandbox, tmp_path, chat_server):
    url, seen = chat_server
    cases = {k: CASES[k] for k in ("good", "wrong_output", "long")}
    rw = ChatRewriter(url, "fake", backoff_s=0.01)

    async def go():
        try:
            return await convert_async(ConvertConfig(), rw, sandbox, tmp_path, items=items(cases))
        finally:
            await rw.aclose()

    summary = asyncio.run(go())
    assert seen["good"] >= 2  # the 503 was retried
    assert summary["accepted"] == 1
    assert {k: v for k, v in summary["rejected_by_reason"].items() if v} == {"output_mismatch": 1, "truncated": 1}


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tirl.cli", "convert", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_cli_smoke(tmp_path, chat_server):
    url, _ = chat_server
    data = tmp_path / "in.jsonl"
    keys = ["good", "wrong_answer", "no_code", "error_then_fix"]
    data.write_text("".join(json.dumps({"id": k, "problem": f"Problem {k}?", "solution": "s",
                                        "answer": CASES[k][0]}) + "\n" for k in keys))
    out = tmp_path / "run"
    first = _cli("--input", str(data), "--server", url, "--model-name", "fake", "--run-dir", str(out),
                 "--limit", "2", "concurrency=2", cwd=tmp_path)  # an override without a config file
    assert first.returncode == 0, first.stdout + first.stderr
    second = _cli(str(ROOT / "configs" / "convert_example.yaml"), "--input", str(data), "--server", url,
                  "--model-name", "fake", "--run-dir", str(out), cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["this_run"]["skipped_already_done"] == 2
    assert (summary["accepted"], summary["rejected"]) == (2, 2)
    assert len(load_traces(out / "accepted.jsonl")) == 2

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "p", "answer": "1"}\n')
    res = _cli("--input", str(bad), "--server", url, "--model-name", "fake", "--run-dir", str(out), cwd=tmp_path)
    assert res.returncode == 2 and f"{bad}:1: missing field 'solution'" in res.stderr
    both = _cli("--input", str(data), "--server", url, "--model", "x", cwd=tmp_path)
    assert both.returncode == 2 and "exactly one of" in both.stderr


def test_cli_fails_when_every_request_failed(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"id": "a", "problem": "1+1?", "solution": "2", "answer": "2"}) + "\n")
    res = _cli("--input", str(data), "--server", f"http://127.0.0.1:{port}", "--model-name", "fake",
               "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    # before: exit 0 with 0 accepted, as if the data were the problem
    assert res.returncode == 2 and "all 1 request(s) failed" in res.stderr, res.stdout + res.stderr


def test_cli_with_a_local_model(tmp_path, tiny_model_dir):
    """The --model path (HFGenerator behind GeneratorRewriter): a random tiny model writes no valid trace,
    so every item is rejected, each with a reason, and the run still completes."""
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"problem": f"What is {a} times 7?", "solution": f"{a * 7}",
                                        "answer": a * 7}) + "\n" for a in (3, 4)))
    res = _cli("--input", str(data), "--model", str(tiny_model_dir), "--max-tokens", "12", "--run-dir",
               str(tmp_path / "run"), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    rejected = read(tmp_path / "run" / "rejected.jsonl")
    assert len(rejected) == 2 and all(r["reason"] in ("truncated", "no_code", "format") for r in rejected)
