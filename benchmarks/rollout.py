"""Rollout speed: KV cache reuse across tool calls vs re-prefilling every sequence each turn.

The same rollouts (B prompts, one sample each) run twice through `tirl.rollout.rollout` with the
transformers backend: `reuse_cache=True` (only the interpreter tokens and the last sampled token are
prefilled after a call) and `reuse_cache=False` (the reference: the whole sequence is prefilled at every
turn). Reported per tool-call count (1, 4, 8 by default): wall time, positions the model computed
(prefill + decode), and `rollout/recompute_ratio` (computed / needed; 1.0 = every position once).

How the call count is made exact: the model is a random local Qwen2 (built here with
`build_tiny_model`, bigger than the test model so that compute, not Python overhead, dominates), and
`ForcedHFGenerator` (the test double in `tests/forced_generator.py`) takes each token from a fixed stream (k code blocks, then an answer) while running
exactly the forwards a sampling run would run. The sandbox is an in-process stand-in returning a fixed
60-character output at once, so the timing is generation only (execution speed is the sandbox's own
benchmark).

Run: `python benchmarks/rollout.py [--calls 1 4 8] [--batch 8] [--prompt-tokens 200] [--hidden 256]`
(single-threaded torch; check the machine's load first, other jobs distort the times).

`--continuous MODEL_DIR` instead compares the turn-synchronous rollout with continuous batching
(`RolloutConfig.continuous`), one after the other in one process, same model, prompts and seed: a model
that writes code (e.g. the demo's SFT model, `tirl demo --run-dir R` leaves it in `R/sft/model`: ReTool
tags, "What is a * b?" with 3-digit numbers, bare-problem prompt), the real local `Sandbox`, and each
program made to sleep 20-100 ms first (fixed per program text, the same in both modes) so that
execution takes a realistic time. Reported: rollout wall time both ways, generation / execution time
(they overlap in continuous mode), and whether the trajectories were identical. `--continuous forced`
uses the random model above, forced to write 5-60 words before each of `--calls` code blocks.

Measured here (2 cores, 1 torch thread, load 1.1-2.1, best of 2-3 runs per mode within one run):
| workload | turns s | continuous s | speed-up |
| --- | --- | --- | --- |
| forced 4.3M model, 16 rows, 2 calls, `--max-new-tokens 1024` | 4.32 | 3.70 | 1.17× |
| forced 4.3M model, 16 rows, 4 calls | 8.74 | 6.55 | 1.33× |
| demo GRPO model (0.5M), 8 prompts × 8, temperature 1 | 2.65 | 2.47 | 1.07× |
| demo GRPO model, 64 prompts, greedy | 2.68 | 2.74 | 0.98× |
The demo model generates in 0.2-0.3 s what the sandbox's two slots take 2.4 s to run: nothing to overlap.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the forced generator lives with the tests

import torch  # noqa: E402

from forced_generator import ForcedHFGenerator  # noqa: E402
from tirl.formats import RETOOL  # noqa: E402
from tirl.models import build_tiny_model, load_model, load_tokenizer  # noqa: E402
from tirl.generation.hf import HFGenerator  # noqa: E402
from tirl.rollout import rollout  # noqa: E402


@dataclass
class Out:
    status: str = "ok"
    stdout: str = "The value is 123456789 and the list is [1, 2, 3, 4, 5, 6, 7, 8, 9, 10].\n"
    stderr: str = ""
    duration_s: float = 0.0


class InstantSandbox:
    def run_batch(self, codes):
        return [Out() for _ in codes]


def corpus() -> list[str]:
    texts = []
    for i in range(40):
        texts.append(f"Step {i}: we compute the value.\n{RETOOL.wrap_code(f'print({i} * 12345)')}"
                     f"{RETOOL.wrap_output(str(i * 12345))}The value is {i * 12345}.\n{RETOOL.wrap_answer(str(i))}")
    return texts


def stream(tok, calls: int) -> list[int]:
    text = "".join(f"Step {i}: we compute the value.\n<code>\n```python\nprint({i} * 12345)\n```\n</code>"
                   for i in range(calls))
    return tok.encode(text + "The value is 12345.\n<answer>\n\\boxed{12345}\n</answer>", add_special_tokens=False)


def run(model, tok, prompts, calls: int, reuse: bool) -> dict:
    ids = stream(tok, calls)
    gen = ForcedHFGenerator(model, tok, lambda key: ids, reuse_cache=reuse, max_batch_size=len(prompts))
    t0 = time.perf_counter()
    trajs, m = rollout(gen, prompts, tok, InstantSandbox(), RETOOL, max_new_tokens=4096, max_tool_calls=calls,
                       temperature=1.0)
    wall = time.perf_counter() - t0
    assert all(t.num_calls == calls and t.finish_reason == "answer" for t in trajs), "forced stream broke"
    return {"wall_s": wall, "computed": m["rollout/prefill_tokens"] + m["rollout/decode_tokens"],
            "prefill": m["rollout/prefill_tokens"], "ratio": m["rollout/recompute_ratio"],
            "resp_len": m["response/length_mean"]}


class SlowPrograms:
    """The real sandbox, each program first sleeping 20-100 ms (a function of its text)."""

    def __init__(self, sandbox):
        self.sandbox = sandbox

    def run_batch(self, codes, timeout=None):
        import zlib

        slow = [f"import time; time.sleep({0.02 + 0.08 * zlib.crc32(c.encode()) / 2**32:.3f})\n{c}" for c in codes]
        return self.sandbox.run_batch(slow, timeout=timeout)


def forced_writer(args):
    """The random model of the cache benchmark, forced to write (per trajectory, a random amount of)
    text, then `--calls` code blocks with text between them, then an answer: rows close their code at
    different steps, as sampled rows do."""
    import random

    with tempfile.TemporaryDirectory() as d:
        build_tiny_model(d, corpus(), hidden_size=args.hidden, layers=args.layers, heads=8, kv_heads=4,
                         intermediate_size=4 * args.hidden)
        model, tok = load_model(d, device="cpu"), load_tokenizer(d)
    words = " ".join(f"fact {i} is {i * 7}." for i in range(60)).split()

    @functools.lru_cache(maxsize=None)
    def text_of(row):
        rng = random.Random(str(row))
        text = "".join(" ".join(words[: rng.randint(5, 60)]) + f"\n<code>\n```python\nprint({i} * 12345)\n```\n</code>"
                       for i in range(args.calls[0]))
        return tok.encode(text + " ".join(words[: rng.randint(5, 60)]) + "\n<answer>\n\\boxed{1}\n</answer>",
                          add_special_tokens=False)

    def stream(key):  # called for every token: encode each row's text once
        return text_of(key[2:])  # (group, sample): the same text in every run

    prompts = [tok.encode(f"Question {b}: what is {b} * 12345?", add_special_tokens=False) for b in range(args.batch)]
    return model, tok, RETOOL, prompts, lambda: ForcedHFGenerator(model, tok, stream, max_batch_size=4096)


def demo_writer(args):
    """A trained model that writes `print(a * b)` code for "What is a * b?" (3-digit numbers)."""
    import random

    from tirl.formats import PromptConfig, make_style
    from tirl.rollout import encode_prompt

    model, tok = load_model(args.continuous, device="cpu"), load_tokenizer(args.continuous)
    style = make_style(PromptConfig(style="retool", system_prompt="", prompt_template="{problem}"))
    rng = random.Random(0)
    problems = [f"What is {rng.randint(100, 999)} * {rng.randint(100, 999)}?" for _ in range(args.batch)]
    return (model, tok, style, [encode_prompt(tok, p, style) for p in problems],
            lambda: HFGenerator(model, tok, max_batch_size=4096))


def compare_continuous(args) -> None:
    from tirl.sandbox import Sandbox

    model, tok, style, prompts, make_gen = forced_writer(args) if args.continuous == "forced" else demo_writer(args)
    print(f"model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {args.batch} prompts x "
          f"{args.n} samples, temperature {args.temperature}, threads {torch.get_num_threads()}, "
          f"load {open('/proc/loadavg').read().split()[:3]}")
    with Sandbox() as sb:
        sandbox = SlowPrograms(sb)
        sandbox.run_batch(["print(1)"])  # warm-up: the sandbox's first call starts its workers
        runs = {}
        for rep in range(args.repeats):
            for continuous in (False, True):
                t0 = time.perf_counter()
                trajs, m = rollout(make_gen(), prompts, tok, sandbox, style, n=args.n, max_new_tokens=args.max_new_tokens,
                                   max_tool_calls=max(args.calls), temperature=args.temperature, seed=1,
                                   continuous=continuous)
                wall = time.perf_counter() - t0
                best = runs.get(continuous)
                if best is None or wall < best[0]:
                    runs[continuous] = (wall, m, [(t.response_ids, t.finish_reason) for t in trajs])
    print(f"{'mode':>10} {'wall s':>7} {'gen s':>6} {'exec s':>6} {'calls':>5} {'tokens':>6}")
    for continuous, (wall, m, _) in sorted(runs.items()):
        print(f"{'continuous' if continuous else 'turns':>10} {wall:>7.2f} {m['rollout/gen_time_s']:>6.2f} "
              f"{m['rollout/exec_time_s']:>6.2f} {m['tool/calls_mean'] * args.batch * args.n:>5.0f} "
              f"{m['rollout/generated_tokens']:>6.0f}")
    print(f"speed-up {runs[False][0] / runs[True][0]:.2f}x; same trajectories: {runs[False][2] == runs[True][2]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--continuous", metavar="MODEL_DIR|forced",
                    help="compare turn-by-turn with continuous batching, with this model or the forced random one")
    ap.add_argument("--max-new-tokens", type=int, default=96, help="(--continuous)")
    ap.add_argument("--n", type=int, default=1, help="samples per prompt (--continuous)")
    ap.add_argument("--temperature", type=float, default=0.0, help="(--continuous)")
    ap.add_argument("--calls", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=200)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="best of N wall times")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.continuous:
        compare_continuous(args)
        return
    with tempfile.TemporaryDirectory() as d:
        build_tiny_model(d, corpus(), hidden_size=args.hidden, layers=args.layers, heads=8, kv_heads=4,
                         intermediate_size=4 * args.hidden)
        model, tok = load_model(d, device="cpu"), load_tokenizer(d)
    n_params = sum(p.numel() for p in model.parameters())
    base = tok.encode(" ".join(f"fact {i} is {i * 7}." for i in range(200)), add_special_tokens=False)
    # Prompts of slightly different lengths, so that left padding is exercised as in real batches.
    prompts = [base[: args.prompt_tokens - 3 * b] + tok.encode(f" Q{b}?", add_special_tokens=False)
               for b in range(args.batch)]
    print(f"model {n_params / 1e6:.2f}M params, batch {args.batch}, prompt ~{args.prompt_tokens} tokens, "
          f"threads {torch.get_num_threads()}, load {open('/proc/loadavg').read().split()[:3]}")
    print(f"{'calls':>5} {'resp':>5} | {'cached s':>8} {'computed':>8} {'ratio':>5} | "
          f"{'reprefill s':>11} {'computed':>8} {'ratio':>5} | {'speed-up':>8}")
    run(model, tok, prompts[:2], 1, True)  # warm-up
    for calls in args.calls:
        c = min((run(model, tok, prompts, calls, True) for _ in range(args.repeats)), key=lambda r: r["wall_s"])
        r = min((run(model, tok, prompts, calls, False) for _ in range(args.repeats)), key=lambda r: r["wall_s"])
        print(f"{calls:>5} {c['resp_len']:>5.0f} | {c['wall_s']:>8.2f} {c['computed']:>8.0f} {c['ratio']:>5.2f} | "
              f"{r['wall_s']:>11.2f} {r['computed']:>8.0f} {r['ratio']:>5.2f} | {r['wall_s'] / c['wall_s']:>7.2f}x")


if __name__ == "__main__":
    main()
