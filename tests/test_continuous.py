"""Continuous batching: `DecodeBatch` rows joining a running batch, and `rollout(..., continuous=True)`.

The model is the tiny random Qwen2; `ForcedHFGenerator` runs its real forwards (same cache path) but
takes each token from a fixed stream, so trajectories are exact and the log-probs (the model's, of the
forced tokens) check that rows joining and leaving the batch compute what they would alone.
Tolerance as in test_generation.py (float32, reduction order only).
"""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch
from fixtures_models import tiny_model, tiny_model_dir, tiny_tokenizer  # noqa: F401 (fixtures)
from forced_generator import ForcedHFGenerator
from helpers_rollout import INJECTED, BrokenSandbox, FlakySandbox, Result
from scripted_generator import ScriptedGenerator

from tirl.formats import RETOOL
from tirl.generation import GenerationRequest, SamplingParams
from tirl.generation.hf import HFGenerator
from tirl.rollout import CAP_MESSAGE, EMPTY_CODE_MESSAGE, rollout
from tirl.rollout.faults import InfraDown

torch.set_num_threads(1)
TOL = 1e-4
LONG = "".join(str(i) for i in range(1500))  # an output far longer than the budget


def enc(tok, s):
    return tok.encode(s, add_special_tokens=False)


def block(code):
    return f"<code>\n```python\n{code}\n```\n</code>"


ANSWER = "Done.\n<answer>\n\\boxed{1}\n</answer>"
STREAMS = {  # (group, sample) -> what the "model" writes
    (0, 0): "No code needed here.\n" + ANSWER,
    (0, 1): "Step.\n" + block("print(1)") + ANSWER,
    (0, 2): block("print(2)") + "A" + block("print(3)") + "B" + block("print(4)") + "C" + ANSWER,  # third is capped
    (1, 0): block("") + "Then a longer thought before the slow call.\n" + block("slow()") + ANSWER,  # empty block
    (1, 1): "A plain </code> closes nothing.\n" + block("print(5)") + ANSWER,
    (1, 2): block("print('long')") + "never written" + ANSWER,  # the output overflows the budget
}


class ScriptedSandbox:
    """A fixed output per program, returned after a per-program delay or once a gate opens; records
    when each call returned. Safe to call from several threads."""

    def __init__(self, outputs=None, delays=None, gates=None):
        self.outputs, self.delays, self.gates = outputs or {}, delays or {}, gates or {}
        self.returned: list[tuple[str, ...]] = []
        self._lock = threading.Lock()

    def run_batch(self, codes, timeout=None):
        for c in codes:
            if c in self.gates:
                assert self.gates[c].wait(60), "gate never opened"
            time.sleep(self.delays.get(c, 0.0))
        with self._lock:
            self.returned.append(tuple(codes))
        return [Result("ok", self.outputs.get(c, f"out of {c}\n")) for c in codes]


def forced(model, tok, streams, **kw):
    ids = {k: enc(tok, v) for k, v in streams.items()}
    return ForcedHFGenerator(model, tok, lambda key: ids[key[2:]], **kw)


def play(model, tok, continuous, sandbox, **overrides):
    gen = forced(model, tok, STREAMS)
    cfg = dict(n=3, max_new_tokens=400, max_tool_calls=2, max_output_chars=0, temperature=0.0)
    cfg.update(overrides)
    trajs, m = rollout(gen, ["What is 12 times 34?", "Hi"], tok, sandbox, RETOOL, continuous=continuous, **cfg)
    assert gen.cached_keys() == []  # every trajectory's cache entry was released
    return trajs, m


def summary(t):
    return (t.response_ids, t.loss_mask, t.finish_reason, t.tool_cap_hit, t.unclosed_code,
            [(c.code, c.status, c.output, c.span) for c in t.tool_calls])


@pytest.mark.parametrize("on_tool_cap", ["message", "stop"])
def test_continuous_gives_the_turn_loops_trajectories(tiny_model, tiny_tokenizer, on_tool_cap):
    tok = tiny_tokenizer
    outputs = {"print('long')": LONG}
    delays = {"print(1)": 0.05, "slow()": 0.1, "print(3)": 0.02}  # calls return out of turn order
    turns, mt = play(tiny_model, tok, False, ScriptedSandbox(outputs, delays), on_tool_cap=on_tool_cap)
    cont, mc = play(tiny_model, tok, True, ScriptedSandbox(outputs, delays), on_tool_cap=on_tool_cap)
    for a, b in zip(turns, cont):
        assert summary(a) == summary(b)
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < TOL
    by = {(t.group_index, t.sample_index): t for t in cont}
    assert by[0, 0].finish_reason == "answer" and by[0, 0].tool_calls == []
    assert [c.output for c in by[0, 1].tool_calls] == ["out of print(1)"]
    capped = by[0, 2]
    assert capped.tool_cap_hit and capped.num_calls == 2
    if on_tool_cap == "message":
        assert capped.tool_calls[-1].output == CAP_MESSAGE.format(n=2) and capped.finish_reason == "answer"
    else:
        assert capped.finish_reason == "tool_cap"
    assert [(c.code, c.output) for c in by[1, 0].tool_calls] == [("", EMPTY_CODE_MESSAGE), ("slow()", "out of slow()")]
    assert [c.code for c in by[1, 1].tool_calls] == ["print(5)"]
    long = by[1, 2]  # the budget ran out inside the injected output
    assert long.finish_reason == "length" and long.tool_calls[-1].span[1] == len(long.response_ids) == 400
    for k in ("rollout/prefill_tokens", "rollout/decode_tokens", "rollout/turns", "tool/calls_mean", "tool/cap_hit_ratio"):
        assert mt[k] == mc[k], k
    assert mc["rollout/recompute_ratio"] == mt["rollout/recompute_ratio"]


@pytest.mark.parametrize("continuous", [False, True])
def test_an_empty_block_spends_no_tool_call_in_either_loop(tiny_model, tiny_tokenizer, continuous):
    trajs, _ = play(tiny_model, tiny_tokenizer, continuous, ScriptedSandbox(), max_tool_calls=1)
    empty_first = next(t for t in trajs if (t.group_index, t.sample_index) == (1, 0))
    assert [(c.code, c.status) for c in empty_first.tool_calls] == [("", "empty"), ("slow()", "ok")]
    assert not empty_first.tool_cap_hit


class OpensGateWhenDone(ForcedHFGenerator):
    """Opens `gate` once the trajectory `(group, sample) == who` has finished (its cache is released)."""

    def __init__(self, *args, who, gate, **kw):
        super().__init__(*args, **kw)
        self.who, self.gate = who, gate

    def release(self, keys):
        keys = list(keys)
        super().release(keys)
        if any(k[2:] == self.who for k in keys):
            self.gate.set()


def test_a_row_whose_code_returns_resumes_while_slow_code_runs(tiny_model, tiny_tokenizer):
    """Row 0's call returns at once; row 1's call returns only once row 0 has finished (resumed after
    its call and written its answer): only a loop that decodes while code runs gets there (the turn
    loop would wait for row 1's call until the gate times out)."""
    tok = tiny_tokenizer
    streams = {(0, 0): "A short preamble.\n" + block("fast()") + "Now a long answer follows.\n" + ANSWER,
               (1, 0): "A longer preamble, so this call is made later.\n" + block("slow()") + ANSWER}
    ids = {k: enc(tok, v) for k, v in streams.items()}
    gate = threading.Event()
    gen = OpensGateWhenDone(tiny_model, tok, lambda key: ids[key[2:]], who=(0, 0), gate=gate)
    sandbox = ScriptedSandbox(gates={"slow()": gate})
    trajs, m = rollout(gen, ["p", "q"], tok, sandbox, RETOOL, max_new_tokens=300, temperature=0.0, continuous=True)
    assert [t.finish_reason for t in trajs] == ["answer", "answer"]
    assert [t.tool_calls[0].output for t in trajs] == ["out of fast()", "out of slow()"]
    assert sandbox.returned == [("fast()",), ("slow()",)]  # one call each, the fast one first
    assert gen.cached_keys() == []


def test_a_call_the_sandbox_keeps_failing_ends_its_sample_as_infra_failed(tiny_model, tiny_tokenizer):
    """Continuous loop: print(2)'s call fails as infrastructure on every attempt while print(1)'s (slower)
    runs: its sample ends there, `infra_failed`, and writes nothing more; the others are untouched."""
    tok = tiny_tokenizer
    sandbox = FlakySandbox(ScriptedSandbox(delays={"print(1)": 0.3}), fail_codes={"print(2)": math.inf})
    trajs, m = play(tiny_model, tok, True, sandbox, exec_retries=1, exec_retry_backoff_s=0.2,
                    exec_retry_deadline_s=30)
    by = {(t.group_index, t.sample_index): t for t in trajs}
    failed = by[0, 2]
    assert failed.infra_failed and failed.finish_reason == "infra" and INJECTED in failed.infra_error
    assert failed.tool_calls[-1].status == "sandbox_error" and failed.tool_calls[-1].span[1] == len(failed.response_ids)
    assert [t.infra_failed for t in trajs].count(True) == 1 and by[0, 1].tool_calls[0].output == "out of print(1)"
    assert sandbox.injected.count("print(2)") >= 2 and m["rollout/exec_retries"] >= 1


def test_a_sandbox_that_stays_down_ends_the_rollout_in_bounded_time(tiny_model, tiny_tokenizer):
    tok = tiny_tokenizer
    gen = forced(tiny_model, tok, {(0, 0): STREAMS[0, 1], (0, 1): STREAMS[1, 1]})
    sb = BrokenSandbox()
    t0 = time.monotonic()
    with pytest.raises(InfraDown, match="sandbox is down: .*worker pool is gone"):
        rollout(gen, ["p"], tok, sb, RETOOL, n=2, max_new_tokens=300, temperature=0.0, continuous=True,
                exec_retry_backoff_s=0.05, exec_retry_deadline_s=0.5)
    assert time.monotonic() - t0 < 5 and sb.calls >= 3


def test_generators_without_a_decode_batch_play_turn_by_turn(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = enc(tok, STREAMS[0, 1])
    gen = ScriptedGenerator(lambda key: ids, tok)
    (t,), m = rollout(gen, ["p"], tok, ScriptedSandbox(), RETOOL, max_new_tokens=200, continuous=True)
    assert t.finish_reason == "answer" and t.tool_calls[0].output == "out of print(1)"
    assert len(gen.calls) == 2 and m["rollout/turns"] == 2


def test_rows_joining_a_running_batch_decode_as_alone(tiny_model, tiny_tokenizer):
    """Greedy, real sampling: a row added while others are mid-decode (once longer, once shorter than
    the running cache, once with a cached prefix) gives the tokens and log-probs of decoding it alone."""
    tok = tiny_tokenizer
    g = HFGenerator(tiny_model, tok)
    params = SamplingParams(max_new_tokens=10, temperature=0)
    short, long = enc(tok, "Hi"), enc(tok, "The product is 1024. Let me compute it again, slowly")
    first = g.generate([GenerationRequest(short, key="c")], params)[0]  # leaves a cache entry for "c"
    resumed = short + first.token_ids + enc(tok, " and then")
    alone = [g.generate([GenerationRequest(p)], params)[0] for p in (short, long)]
    g.generate([GenerationRequest(short, key="ref")], params)
    alone.append(g.generate([GenerationRequest(resumed, key="ref")], params)[0])

    batch = g.decode_batch(params)
    got = {}
    order = [batch.add([GenerationRequest(short)])[0]]
    for rid, out in batch.step() + batch.step():
        got[rid] = out
    order += batch.add([GenerationRequest(long)])  # longer than the running cache
    for _ in range(3):
        got.update(batch.step())
    order += batch.add([GenerationRequest(resumed, key="c")])  # cached prefix, shorter suffix
    while batch:
        got.update(batch.step())
    for rid, ref in zip(order, alone):
        assert got[rid].token_ids == ref.token_ids and len(set(ref.token_ids)) > 3
        assert max(abs(x - y) for x, y in zip(got[rid].logprobs, ref.logprobs)) < TOL
    assert got[order[2]].prefill_tokens == alone[2].prefill_tokens  # the cached prefix was reused
