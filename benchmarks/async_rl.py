"""Asynchronous RL: seconds per step and where they go at trainer.max_staleness k = 0, 1, 2.

    python benchmarks/async_rl.py                                  # the demo's RL stage, random tiny model
    python benchmarks/async_rl.py --model runs/demo/sft/model      # from the demo's SFT model (writes code)
    python benchmarks/async_rl.py --model runs/demo/sft/model --ray 2   # on 2 Ray rollout actors
    python benchmarks/async_rl.py --steps 10 --ks 0 1 --partial -- rollout.max_new_tokens=96
    python benchmarks/async_rl.py --config configs/demo_smollm2.yaml --model runs/smollm2/sft/model --steps 20 \\
        --ks 1 --keep runs/smollm2_async     # SmolLM2's RL stage at k=1; the final policy kept for tirl eval

Runs the RL stage of a demo config (`--config`, default `configs/demo.yaml`; `tirl.demo`'s own settings:
task, model, rollout, GRPO) for `--steps` steps at each k, locally or with `--ray W` (W rollout actors, W
shards), and prints per k the mean over the steps after the first (which pays for start-up):
- s/step: the learner's step, from asking for a batch to its update's metrics (`time/step_s`);
- generation, sandbox: the rollout's time in the model and in the sandbox (`time/generation_s`,
  `time/sandbox_s`); at k >= 1 they are spent in the producer, overlapping the update;
- update: old log-probs, advantages and optimizer steps (`time/train_s`);
- waiting: the learner idle for its batch (k = 0: the whole rollout, `time/rollout_s`; k >= 1:
  `async/wait_s`), and the mean age of what it trained on (`async/age_mean`).
k >= 1 uses decoupled PPO (`algorithm.decoupled_cap=5`); extra dotted overrides apply to every k.
Timings on a loaded machine mean nothing: check `cat /proc/loadavg` first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rl_config(demo_yaml: str, model: str, overrides: list[str]) -> object:
    """The RL stage of the demo config `demo_yaml` (`tirl.demo`) with `model` as its policy, then `overrides`."""
    from tirl.config import load_config, save_config
    from tirl.demo import DemoConfig, _rl_config
    from tirl.train.rl import RLConfig

    demo = load_config(DemoConfig, demo_yaml, [])
    with tempfile.TemporaryDirectory() as d:
        save_config(_rl_config(demo, model, with_tool=True), Path(d) / "rl.yaml")
        return load_config(RLConfig, Path(d) / "rl.yaml", overrides)


def run_k(demo_yaml: str, model: str, k: int, steps: int, ray: int, partial: bool, extra: list[str],
          keep: str | None) -> dict[str, float]:
    from tirl.train.logger import read_metrics
    from tirl.train.rl import train_rl

    overrides = [f"trainer.steps={steps}", f"trainer.max_staleness={k}", "trainer.eval_size=0", 'data.test=""',
                 "trainer.save_every=0"]
    if k:
        overrides += ["algorithm.decoupled_cap=5"] + (["rollout.partial=true"] if partial else [])
    if ray:
        overrides += ["distributed.backend=ray", f"distributed.rollout_workers={ray}", f"rollout.shards={ray}"]
    if keep:  # the final policy, for tirl eval
        overrides = [o for o in overrides if not o.startswith("trainer.save_every")] + [f"trainer.save_every={steps}"]
    cfg = rl_config(demo_yaml, model, overrides + extra)
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(keep or tmp, f"k{k}")
        train_rl(cfg, run)
        metrics = read_metrics(run)[1:]

    def mean(key: str) -> float:
        return statistics.mean(float(m.get(key) or 0.0) for m in metrics)

    return {"s/step": mean("time/step_s"), "generation": mean("time/generation_s"),
            "sandbox": mean("time/sandbox_s"), "update": mean("time/train_s"),
            "waiting": mean("async/wait_s") if k else mean("time/rollout_s"), "age": mean("async/age_mean")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"), help="the demo config whose RL stage runs")
    ap.add_argument("--model", default="builtin:tiny", help="the policy to start from (default: a random tiny model)")
    ap.add_argument("--steps", type=int, default=8, help="steps per k (the first is not counted)")
    ap.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2], help="values of trainer.max_staleness")
    ap.add_argument("--ray", type=int, default=0, metavar="W", help="play on W Ray rollout actors (0: locally)")
    ap.add_argument("--partial", action="store_true", help="rollout.partial=true at k >= 1 (local only)")
    ap.add_argument("--keep", metavar="DIR", help="keep each k's run (metrics, final checkpoint) as DIR/k<k>")
    ap.add_argument("overrides", nargs="*", help="extra dotted config overrides, for every k")
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps must be >= 2 (the first step is not counted)")

    from tirl.commands import quiet_transformers

    quiet_transformers()
    print(f"load average before: {open('/proc/loadavg').read().split()[:3]}")
    rows = {k: run_k(args.config, args.model, k, args.steps, args.ray, args.partial, args.overrides, args.keep)
            for k in args.ks}
    print(f"load average after:  {open('/proc/loadavg').read().split()[:3]}")
    where = f"{args.ray} Ray rollout actors" if args.ray else "locally"
    print(f"{args.config}: {args.model}, {args.steps} steps per k (first not counted), {where}")
    cols = ["s/step", "generation", "sandbox", "update", "waiting", "age"]
    print(f"{'k':>3} " + " ".join(f"{c:>11}" for c in cols))
    for k, r in rows.items():
        print(f"{k:>3} " + " ".join(f"{r[c]:>11.3f}" for c in cols))
    base = rows.get(0)
    for k, r in rows.items():
        if base and k:
            print(f"k={k}: {base['s/step'] / max(r['s/step'], 1e-9):.2f}x the steps per second of k=0")


if __name__ == "__main__":
    main()
