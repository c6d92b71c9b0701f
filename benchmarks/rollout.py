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
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=200)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="best of N wall times")
    args = ap.parse_args()
    torch.set_num_threads(1)
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
