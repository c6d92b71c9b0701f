"""The rollout loop through scripted token streams (both tag styles) and through the tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures_models import tiny_model, tiny_model_dir, tiny_tokenizer  # noqa: F401 (fixtures)
from helpers_rollout import FixedResults, Result, SubprocessRunner

from tirl.formats import RETOOL, TORL, extract_boxed
from scripted_generator import ScriptedGenerator
from tirl.rollout import CAP_MESSAGE, EMPTY_CODE_MESSAGE, RolloutConfig, Trajectory, encode_prompt, rollout

torch.set_num_threads(1)

RETOOL_TEXT = (
    "Let me compute.\n<code>\n```python\nprint(6*7)\n```\n</code>"
    "The result is 42.\n<answer>\n\\boxed{42}\n</answer>"
)
TORL_TEXT = "Compute:\n```python\nprint(2**10)\n```\n```output" "So the answer is \\boxed{1024}."


def scripted(tok, texts):
    """A generator whose trajectory for prompt g, sample s writes texts[g] (or texts[g][s])."""
    def stream(key):
        _, _, g, s = key
        t = texts[g] if isinstance(texts[g], str) else texts[g][s]
        return tok.encode(t, add_special_tokens=False)
    return ScriptedGenerator(stream, tok)


def sampled_text(tok, traj):
    return tok.decode([t for t, m in zip(traj.response_ids, traj.loss_mask) if m == 1])


@pytest.mark.parametrize("style,text,code,out,reason", [
    (RETOOL, RETOOL_TEXT, "print(6*7)", "42", "answer"),
    (TORL, TORL_TEXT, "print(2**10)", "1024", "eos"),
])
def test_code_is_run_and_output_injected_with_mask_zero(tiny_tokenizer, style, text, code, out, reason):
    tok = tiny_tokenizer
    gen, sb = scripted(tok, [text]), SubprocessRunner()
    (traj,), metrics = rollout(gen, ["Question: "], tok, sb, style, max_new_tokens=200)

    assert sb.batches == [[code]]
    call = traj.tool_calls[0]
    assert (call.code, call.status, call.output) == (code, "ok", out)
    injected = tok.encode(style.wrap_output(out), add_special_tokens=False)
    s, e = call.span
    assert traj.response_ids[s:e] == injected  # tokenised once, appended as is
    assert traj.loss_mask[s:e] == [0] * len(injected) and traj.logprobs[s:e] == [0.0] * len(injected)
    assert set(traj.loss_mask[:s] + traj.loss_mask[e:]) == {1}
    # Token-in/token-out: what was sampled is exactly the scripted stream (plus EOS for ToRL).
    stream = tok.encode(text, add_special_tokens=False)
    assert [t for t, m in zip(traj.response_ids, traj.loss_mask) if m] == stream + ([tok.eos_token_id] if reason == "eos" else [])
    # Generation resumed from prompt + everything so far, injected tokens included.
    assert gen.calls[1][1] == traj.prompt_ids + traj.response_ids[:e]
    assert traj.finish_reason == reason
    assert extract_boxed(traj.text) == out
    assert metrics["tool/code_ratio"] == 1.0 and metrics["tool/pass_rate"] == 1.0
    assert gen.released == [("rollout",) + gen.calls[0][0][1:]]


def test_prompt_ending_inside_a_code_block(tiny_tokenizer):
    tok = tiny_tokenizer
    prompt = "Compute 3+4.\n<code>\n```python\n"
    gen, sb = scripted(tok, ["print(3+4)\n```\n</code>Seven.<answer>\n\\boxed{7}\n</answer>"]), SubprocessRunner()
    (traj,), _ = rollout(gen, [prompt], tok, sb, RETOOL, max_new_tokens=100)
    assert sb.executed == ["print(3+4)"] and traj.tool_calls[0].output == "7"


def test_code_of_one_turn_runs_in_one_batch(tiny_tokenizer):
    tok = tiny_tokenizer
    a = "<code>\n```python\nprint(1)\n```\n</code><answer>1</answer>"
    b = "<code>\n```python\nprint(2)\n```\n</code><answer>2</answer>"
    sb = SubprocessRunner()
    trajs, m = rollout(scripted(tok, [a, b]), ["p", "q"], tok, sb, RETOOL, max_new_tokens=100)
    assert sb.batches == [["print(1)", "print(2)"]]
    assert [t.tool_calls[0].output for t in trajs] == ["1", "2"]


@pytest.mark.parametrize("mode", ["message", "stop"])
def test_tool_call_cap(tiny_tokenizer, mode):
    tok = tiny_tokenizer
    blocks = "".join(f"<code>\n```python\nprint({i})\n```\n</code>" for i in range(3))
    sb = SubprocessRunner()
    (traj,), m = rollout(scripted(tok, [blocks + "<answer>2</answer>"]), ["p"], tok, sb, RETOOL,
                         max_new_tokens=300, max_tool_calls=2, on_tool_cap=mode)
    assert sb.executed == ["print(0)", "print(1)"]  # the third block never runs
    assert traj.tool_cap_hit and traj.num_calls == 2 and m["tool/cap_hit_ratio"] == 1.0
    if mode == "stop":
        assert traj.finish_reason == "tool_cap" and len(traj.tool_calls) == 2
    else:
        capped = traj.tool_calls[2]
        assert capped.status == "capped" and capped.output == CAP_MESSAGE.format(n=2)
        assert traj.finish_reason == "answer" and m["tool/calls_mean"] == 2.0


def test_megabytes_of_output_are_capped_before_tokenisation(tiny_tokenizer):
    tok = tiny_tokenizer
    text = "<code>\n```python\nprint('x' * 3_000_000)\n```\n</code><answer>ok</answer>"
    (traj,), _ = rollout(scripted(tok, [text]), ["p"], tok, SubprocessRunner(), RETOOL,
                         max_new_tokens=400, max_output_chars=100)
    out = traj.tool_calls[0].output
    assert out.startswith("x" * 50) and out.endswith("x" * 50) and "elided" in out and len(out) < 200
    (traj,), _ = rollout(scripted(tok, [text]), ["p"], tok, SubprocessRunner(), RETOOL,
                         max_new_tokens=400, max_output_chars=0, max_output_tokens=20)
    s, e = traj.tool_calls[0].span
    wrap = len(tok.encode(RETOOL.wrap_output(""), add_special_tokens=False))
    elision = len(tok.encode("\n...[2999980 tokens elided]...\n", add_special_tokens=False))
    assert e - s <= 20 + wrap + elision + 4  # 20 output tokens, the tags, the elision mark


def test_errors_reach_the_model(tiny_tokenizer):
    tok = tiny_tokenizer
    text = "<code>\n```python\nx = 1\nprint(1/0)\n```\n</code><answer>?</answer>"
    (traj,), m = rollout(scripted(tok, [text]), ["p"], tok, SubprocessRunner(), RETOOL, max_new_tokens=400)
    assert traj.tool_calls[0].status == "error" and "Traceback" in traj.tool_calls[0].output
    assert "ZeroDivisionError" in traj.text and m["tool/pass_rate"] == 0.0
    (traj,), _ = rollout(scripted(tok, [text]), ["p"], tok, SubprocessRunner(), RETOOL, max_new_tokens=400,
                         error_lines=1)
    assert traj.tool_calls[0].output == "ZeroDivisionError: division by zero"  # ToRL's last line


@pytest.mark.parametrize("sandbox,expect", [  # the program's failures; the sandbox's own: test_faults.py
    (FixedResults(Result("timeout", duration_s=10.0)), "TimeoutError: execution exceeded the time limit"),
    (FixedResults(Result("memory")), "MemoryError: execution exceeded the memory limit"),
    (FixedResults(Result("killed", stderr="")), "Error: execution failed (killed)"),
])
def test_program_failures_become_interpreter_messages(tiny_tokenizer, sandbox, expect):
    tok = tiny_tokenizer
    text = "<code>\n```python\nprint(1)\n```\n</code><answer>1</answer>"
    (traj,), _ = rollout(scripted(tok, [text]), ["p"], tok, sandbox, RETOOL, max_new_tokens=200)
    assert traj.tool_calls[0].output == expect and traj.finish_reason == "answer"
    assert f"<interpreter>\n{expect}\n</interpreter>" in traj.text


def test_empty_block_is_reported_not_run(tiny_tokenizer):
    tok = tiny_tokenizer
    sb = SubprocessRunner()
    (traj,), m = rollout(scripted(tok, ["<code>\n```python\n\n```\n</code><answer>1</answer>"]), ["p"], tok, sb,
                         RETOOL, max_new_tokens=200)
    assert sb.batches == [] and traj.tool_calls[0].status == "empty"
    assert traj.tool_calls[0].output == EMPTY_CODE_MESSAGE
    assert m["tool/code_ratio"] == 1.0 and m["tool/pass_rate"] != m["tool/pass_rate"]  # NaN: nothing ran


def test_an_empty_block_spends_no_tool_call(tiny_tokenizer):
    # Before: the empty block used the only call, and the real one was capped.
    tok = tiny_tokenizer
    sb = SubprocessRunner()
    text = "<code>\n```python\n\n```\n</code><code>\n```python\nprint(7)\n```\n</code><answer>7</answer>"
    (traj,), m = rollout(scripted(tok, [text]), ["p"], tok, sb, RETOOL, max_new_tokens=300, max_tool_calls=1)
    assert sb.executed == ["print(7)"] and [c.status for c in traj.tool_calls] == ["empty", "ok"]
    assert not traj.tool_cap_hit and traj.executed_calls == 1 and m["tool/cap_hit_ratio"] == 0.0


def test_a_stop_that_closes_no_code_block_is_plain_text(tiny_tokenizer):
    tok = tiny_tokenizer
    sb = SubprocessRunner()
    text = "No code here </code> at all.<answer>1</answer>"
    (traj,), _ = rollout(scripted(tok, [text]), ["p"], tok, sb, RETOOL, max_new_tokens=200)
    assert sb.batches == [] and traj.tool_calls == [] and all(traj.loss_mask)
    assert traj.text == text and traj.finish_reason == "answer"


def test_unclosed_block_at_budget_is_not_run(tiny_tokenizer):
    tok = tiny_tokenizer
    sb = SubprocessRunner()
    text = "<code>\n```python\nprint(12345678)\nprint(1)\n```\n</code>"
    budget = len(tok.encode(text, add_special_tokens=False)) - 3
    (traj,), m = rollout(scripted(tok, [text]), ["p"], tok, sb, RETOOL, max_new_tokens=budget)
    assert sb.batches == [] and traj.finish_reason == "length" and traj.unclosed_code
    assert len(traj.response_ids) == budget and m["response/length_cap_ratio"] == 1.0


def test_interpreter_tokens_count_against_the_budget(tiny_tokenizer):
    tok = tiny_tokenizer
    text = "<code>\n```python\nprint(1234567890)\n```\n</code>The end.<answer>1</answer>"
    n_code = len(tok.encode(text.split("The end")[0], add_special_tokens=False))
    budget = n_code + 5  # room for only part of the interpreter output
    (traj,), _ = rollout(scripted(tok, [text]), ["p"], tok, SubprocessRunner(), RETOOL, max_new_tokens=budget)
    assert len(traj.response_ids) == budget and traj.finish_reason == "length"
    assert traj.loss_mask[n_code:] == [0] * 5 and traj.tool_calls[0].span == (n_code, budget)


def test_groups_samples_and_jsonl_round_trip(tiny_tokenizer):
    tok = tiny_tokenizer
    texts = [["<answer>a</answer>", RETOOL_TEXT], ["<answer>b</answer>", "<answer>c</answer>"]]
    trajs, m = rollout(scripted(tok, texts), ["p", "q"], tok, SubprocessRunner(), RETOOL,
                       RolloutConfig(n=2, max_new_tokens=200))
    assert [(t.group_index, t.sample_index) for t in trajs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [extract_boxed(t.text) or t.text for t in trajs] == ["<answer>a</answer>", "42",
                                                              "<answer>b</answer>", "<answer>c</answer>"]
    assert m["tool/code_ratio"] == 0.25
    back = [Trajectory.from_dict(json.loads(json.dumps(t.to_dict()))) for t in trajs]
    assert back == trajs


def test_encode_prompt_uses_chat_template_and_system_prompt(tiny_tokenizer):
    ids = encode_prompt(tiny_tokenizer, "What is 2+2?", RETOOL)
    text = tiny_tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\n" + RETOOL.system_prompt[:20])
    assert text.endswith("What is 2+2?<|im_end|>\n<|im_start|>assistant\n")


def test_rollout_through_real_sandbox(tiny_tokenizer):
    sandbox_mod = pytest.importorskip("tirl.sandbox")
    try:
        sb = sandbox_mod.Sandbox()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"the local sandbox cannot start on this machine: {e}")
    tok = tiny_tokenizer
    texts = [RETOOL_TEXT, "<code>\n```python\nwhile True: pass\n```\n</code><answer>x</answer>"]
    with sb:
        trajs, m = rollout(scripted(tok, texts), ["p", "q"], tok, sb, RETOOL, max_new_tokens=200,
                           exec_timeout=1.0)
    assert trajs[0].tool_calls[0].output == "42" and trajs[0].tool_calls[0].status == "ok"
    assert trajs[1].tool_calls[0].status == "timeout" and "TimeoutError" in trajs[1].tool_calls[0].output
    assert m["tool/pass_rate"] == 0.5
