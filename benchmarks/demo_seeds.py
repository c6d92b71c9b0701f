"""`tirl demo` on several seeds: does the headline hold on every seed, not just a lucky one?

    python benchmarks/demo_seeds.py                       # GRPO, ReTool tags, seeds 0-9, one per two cores
    python benchmarks/demo_seeds.py --variant ppo         # ReTool's PPO with a critic
    python benchmarks/demo_seeds.py --variant torl        # ToRL's ```python / ```output fences
    python benchmarks/demo_seeds.py --variant all --out runs/demo_seeds
    python benchmarks/demo_seeds.py --variant all --out runs/demo_seeds --table-only   # re-print

Each seed is one ordinary `tirl demo seed=S [variant overrides] --run-dir OUT/VARIANT/seed-S` in a
subprocess (as a user would run it), `--jobs` of them side by side (default: one per two cores, so each
demo's SFT runs on two threads as `make demo` does; when the jobs need more than two cores each, each SFT
keeps to one thread so they do not fight over cores, and under the demo's bf16 SFT the weights then differ
from `make demo`'s: a different draw of the same seeds, still a fair test of "any seed"); a seed whose `summary.json` exists is not run again, so an interrupted
sweep resumes. `seed=S` sets every seed of the run (problems, the tiny model's
initial weights, SFT batch order, RL problem order and sampling). Prints one markdown row per seed
(accuracy greedy / sampled on the held-out problems, the SFT model's copy rate, code use during RL, wall
time, load average before the run) and the median and the minimum, then whether the issue's targets hold on every seed.
By hand, not in CI: each seed is a full demo run. Run it under `flock /work/heavy.lock` on a shared
machine when the wall times matter (accuracies at a fixed seed do not depend on load).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

VARIANTS: dict[str, list[str]] = {
    "grpo": [],
    "ppo": ["algorithm.name=ppo"],
    "torl": ["prompt.style=torl"],
}
TITLES = {"grpo": "GRPO, ReTool tags (the default)", "ppo": "PPO with a critic (ReTool's algorithm)",
          "torl": "GRPO, ToRL fences (prompt.style=torl)"}
TARGET = {"grpo": 0.90, "ppo": 0.85, "torl": 0.85}
"""Tool-RL greedy accuracy each seed must reach (issue 17); GRPO must also beat SFT and text-RL by 30 points."""
MARGIN = 0.30
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_seed(out: Path, variant: str, seed: int, extra: list[str]) -> dict[str, Any]:
    run_dir = out / variant / f"seed-{seed}"
    summary = run_dir / "summary.json"
    if not summary.exists():
        if run_dir.exists():  # an interrupted run: start that seed again
            import shutil

            shutil.rmtree(run_dir)
        load = open("/proc/loadavg").read().split()[0]
        cmd = [sys.executable, "-m", "tirl.cli", "demo", f"seed={seed}", *VARIANTS[variant], *extra,
               "--run-dir", str(run_dir)]
        print(f"$ {' '.join(cmd[1:])}   (load {load})", flush=True)
        t = time.perf_counter()
        log = out / variant / f"seed-{seed}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy())
        if r.returncode != 0:
            raise SystemExit(f"seed {seed} ({variant}) failed with exit code {r.returncode}: see {log}")
        (run_dir / "bench.json").write_text(json.dumps({"load_before": float(load),
                                                        "wall_s": round(time.perf_counter() - t, 1)}))
    s = json.loads(summary.read_text())
    bench = run_dir / "bench.json"
    s["load_before"] = json.loads(bench.read_text())["load_before"] if bench.exists() else None
    return s


def row(s: dict[str, Any]) -> dict[str, float]:
    sampled = s["sampled"]
    return {
        "sft": s["sft_accuracy"], "sft_s": sampled["sft"]["accuracy"],
        "rl": s["rl_accuracy"], "rl_s": sampled["rl"]["accuracy"],
        "text_rl": s["text_rl_accuracy"], "text_rl_s": sampled["text_rl"]["accuracy"],
        "copy": s.get("sft_copy_rate") if s.get("sft_copy_rate") is not None else float("nan"),
        "code_start": s["code_ratio_start"] or 0.0, "code_end": s["code_ratio_end"] or 0.0,
        "wall_s": s["wall_s"],
    }


def table(variant: str, seeds: list[int], rows: list[dict[str, float]], loads: list[Any]) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    def line(label: str, r: dict[str, float], load: str) -> str:
        return (f"| {label} | {pct(r['sft'])} / {pct(r['sft_s'])} | **{pct(r['rl'])}** / {pct(r['rl_s'])} | "
                f"{pct(r['text_rl'])} / {pct(r['text_rl_s'])} | {pct(r['copy'])} | "
                f"{pct(r['code_start'])} -> {pct(r['code_end'])} | "
                f"{r['wall_s']:.0f} | {load} |")

    out = [f"### {TITLES[variant]}", "",
           "| seed | SFT % (greedy / sampled) | tool-RL % | text-RL % | SFT copies output % | "
           "code use in RL % (start -> end) | wall s | load before |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    out += [line(str(seed), r, "n/a" if load is None else f"{load:.1f}") for seed, r, load in zip(seeds, rows, loads)]
    keys = rows[0].keys()
    out.append(line("median", {k: statistics.median(r[k] for r in rows) for k in keys}, ""))
    out.append(line("min", {k: min(r[k] for r in rows) for k in keys}, ""))
    return "\n".join(out)


def verdict(variant: str, seeds: list[int], rows: list[dict[str, float]]) -> str:
    misses = []
    for seed, r in zip(seeds, rows):
        if r["rl"] < TARGET[variant]:
            misses.append(f"seed {seed}: tool-RL greedy {100 * r['rl']:.1f}% < {100 * TARGET[variant]:.0f}%")
        if variant == "grpo" and r["rl"] - max(r["sft"], r["text_rl"]) < MARGIN:
            misses.append(f"seed {seed}: tool-RL is less than {100 * MARGIN:.0f} points above SFT or text-RL")
    head = f"target (tool-RL greedy >= {100 * TARGET[variant]:.0f}% on each seed"
    head += f", >= {100 * MARGIN:.0f} points above SFT and text-RL)" if variant == "grpo" else ")"
    return f"{head}: " + ("met on every seed" if not misses else "MISSED — " + "; ".join(misses))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="grpo", choices=[*VARIANTS, "all"])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--jobs", type=int, default=max(1, CORES // 2),
                    help="demos side by side (default: one per two cores, two SFT threads each, as make demo)")
    ap.add_argument("--out", default="runs/demo_seeds", help="one run directory per variant and seed")
    ap.add_argument("--table-only", action="store_true", help="print the tables of finished runs, run nothing")
    ap.add_argument("overrides", nargs="*", help="extra dotted overrides for every run (e.g. rl.steps=80)")
    args = ap.parse_args()
    out = Path(args.out)
    for variant in VARIANTS if args.variant == "all" else [args.variant]:
        seeds = [s for s in args.seeds
                 if not args.table_only or (out / variant / f"seed-{s}" / "summary.json").exists()]
        extra = args.overrides + (["sft.threads=1"] if 2 * args.jobs > CORES else [])
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            summaries = list(pool.map(lambda s: run_seed(out, variant, s, extra), seeds))
        if not summaries:
            print(f"### {TITLES[variant]}\n\nno finished runs under {out / variant}\n")
            continue
        rows = [row(s) for s in summaries]
        print(table(variant, seeds, rows, [s["load_before"] for s in summaries]))
        print(f"\n{verdict(variant, seeds, rows)}\n", flush=True)


if __name__ == "__main__":
    main()
