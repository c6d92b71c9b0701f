"""Rollout time with 1 vs W Ray rollout workers on the same config (same shards, so same samples).

    python benchmarks/scale_out.py                         # smoke config, 4 steps, 2 shards, W = 1 and 2
    python benchmarks/scale_out.py --workers 1 2 4 trainer.prompts_per_step=8 rollout.shards=4

Each run is `tirl train` in-process with `distributed.backend=ray`; per run it reports the wall time,
the summed `time/rollout_s` of the steps after the first (which pays for start-up) and the ratio to
the first worker count. Checks that the runs' sampled tokens agree. Needs the ray extra; check
`cat /proc/loadavg` first: on a 2-core machine two workers compete with the driver and the
sandboxes, so expect little.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "smoke_grpo.yaml"))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("overrides", nargs="*", help="extra dotted config overrides (default adds rollout.shards=2)")
    args = ap.parse_args()

    from tirl.config import load_config
    from tirl.train.logger import read_metrics
    from tirl.train.rl import RLConfig, train_rl

    with open("/proc/loadavg") as f:
        print(f"load before: {f.read().split()[:3]}")
    rows, tokens = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workers:
            over = ["rollout.shards=2", f"trainer.steps={args.steps}", "trainer.eval_size=0", *args.overrides,
                    "distributed.backend=ray", f"distributed.rollout_workers={w}"]
            cfg = load_config(RLConfig, args.config, over)
            t0 = time.perf_counter()
            train_rl(cfg, Path(tmp) / f"w{w}")
            wall = time.perf_counter() - t0
            m = read_metrics(Path(tmp) / f"w{w}")[1:]
            rollout_s = sum(x["time/rollout_s"] for x in m)
            rows.append((w, wall, rollout_s))
            samples = (Path(tmp) / f"w{w}" / "samples.jsonl").read_text().splitlines()
            tokens.append([json.loads(s)["response_ids"] for s in samples])
    base = rows[0][2]
    for w, wall, rollout_s in rows:
        print(f"workers {w}: wall {wall:.1f} s, rollout time (steps 2..) {rollout_s:.2f} s, "
              f"speed-up {base / rollout_s:.2f}x")
    print("same samples for every worker count:", all(t == tokens[0] for t in tokens))
    with open("/proc/loadavg") as f:
        print(f"load after: {f.read().split()[:3]}")


if __name__ == "__main__":
    main()
