"""Fault injection: GRPO with a sandbox that fails 10% of calls as the infrastructure would (issue 29).

    python benchmarks/fault_injection.py --model RUN/sft/model          # e.g. a `tirl demo` run's SFT model
    python benchmarks/fault_injection.py                               # builds one: tiny model + short SFT
    python benchmarks/fault_injection.py --model M --steps 20 --rate 0.1 --out runs/fault_injection

Three GRPO runs from the same model with the same seed, each an ordinary `train_rl`, with
`algorithm.exec_penalty=0.5` (so a penalty would show):
1. `clean`    — the real sandbox;
2. `faults`   — the same sandbox behind a wrapper that fails a share `--rate` of calls with
               `sandbox_error` (what the HTTP client reports for a 503 or a dropped connection), drawn
               per call from a seeded generator; default retries (`rollout.exec_retries`);
3. `faults, no retry` — the same with `rollout.exec_retries=0`, so injected failures reach samples.
The wrapper (`tests/helpers_rollout.py:FlakySandbox`, a test double) replaces the sandbox the trainer
opens; every step's trajectories and grades are captured as `play` returns them.

Printed per run: calls failed by injection, re-runs, `rollout/infra_failed` and
`rollout/infra_dropped_groups` (summed over steps), the mean `train/rows`, the mean reward, the final
held-out accuracy, and **penalties applied to infrastructure failures**: samples whose grade carries the
exec penalty although a call of theirs failed in the infrastructure (target 0; before issue 29 every
such sample was graded wrong and penalised), plus samples graded at all despite an infra-failed call
(target 0). By hand, not in CI (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the fault wrapper is a test double

from helpers_rollout import FlakySandbox  # noqa: E402

PENALTY = 0.5


def sft_model(out: Path, steps: int, seed: int) -> str:
    """A tiny model that writes code: the demo's task and SFT, code traces only, `steps` steps."""
    from tirl.demo import DemoConfig, _sft_config
    from tirl.train.sft import train_sft

    if (out / "model" / "config.json").is_file():
        return str(out / "model")
    cfg = DemoConfig(seed=seed)
    cfg = dataclasses.replace(cfg, sft_mix={"code": 1.0}, sft=dataclasses.replace(cfg.sft, steps=steps, eval_every=0))
    from tirl.demo import seeded

    return train_sft(_sft_config(seeded(cfg), text_only=False, base=None), out)["model"]


def rl_config(model: str, steps: int, seed: int, retries: int | None, eval_size: int) -> Any:
    from tirl.demo import DemoConfig, _rl_config, seeded

    demo = seeded(DemoConfig(seed=seed))
    cfg = _rl_config(demo, model, with_tool=True)
    rollout = cfg.rollout if retries is None else dataclasses.replace(cfg.rollout, exec_retries=retries)
    return dataclasses.replace(cfg, rollout=dataclasses.replace(rollout, exec_retry_backoff_s=0.05),
                               algorithm=dataclasses.replace(cfg.algorithm, exec_penalty=PENALTY),
                               trainer=dataclasses.replace(cfg.trainer, steps=steps, eval_every=0, eval_size=eval_size,
                                                           save_every=0))


@contextlib.contextmanager
def injected(rate: float, seed: int, captured: list):
    """Faults in the sandbox the trainer opens, and every step's (trajectories, grades) captured."""
    import tirl.sandbox.isolation as iso
    import tirl.train.rl as rl

    real_open, real_play = iso.open_sandbox, rl.play
    wrappers: list[FlakySandbox] = []

    def open_sandbox(cfg, purpose, log=None):
        wrappers.append(FlakySandbox(real_open(cfg, purpose, log), rate=rate, seed=seed))
        return contextlib.closing(wrappers[-1])

    def play(*args, **kwargs):
        trajs, grades, metrics = real_play(*args, **kwargs)
        captured.append((trajs, grades))
        return trajs, grades, metrics

    iso.open_sandbox, rl.play = open_sandbox, play
    try:
        yield wrappers
    finally:
        iso.open_sandbox, rl.play = real_open, real_play


def infra_penalties(captured: list) -> tuple[int, int]:
    """(samples with an infra-failed call that carry the exec penalty, such samples graded at all)."""
    penalised = graded = 0
    for trajs, grades in captured:
        for t, g in zip(trajs, grades):
            if t.infra_failed or any(c.infra_failed for c in t.tool_calls):
                graded += g.reason != "infra_failed"
                penalised += abs(abs(g.score) - 1.0 + PENALTY) < 1e-9  # +1 - 0.5 or -1 - 0.5
    return penalised, graded


def run(name: str, model: str, out: Path, args: argparse.Namespace, rate: float, retries: int | None) -> dict:
    from tirl.train.logger import read_metrics
    from tirl.train.rl import train_rl

    captured: list = []
    t0 = time.perf_counter()
    with injected(rate, args.seed, captured) as wrappers:
        summary = train_rl(rl_config(model, args.steps, args.seed, retries, args.eval_size), out / name.replace(", ", "_").replace(" ", "_"))
    metrics = read_metrics(Path(summary["run_dir"]))
    penalised, graded = infra_penalties(captured)

    def total(key: str) -> float:
        return sum(m.get(key, 0.0) for m in metrics)

    return {"run": name, "injected": sum(len(w.injected) for w in wrappers), "retries": total("rollout/exec_retries"),
            "infra_failed": total("rollout/infra_failed"), "dropped_groups": total("rollout/infra_dropped_groups"),
            "rows_mean": total("train/rows") / len(metrics), "reward_mean": total("reward/mean") / len(metrics),
            "heldout_accuracy": (summary.get("eval_end") or {}).get("eval/accuracy"),
            "infra_penalties": penalised, "infra_graded": graded, "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a trained model directory (e.g. a demo's sft/model); default: build one")
    p.add_argument("--sft-steps", type=int, default=600, help="SFT steps when --model is not given")
    p.add_argument("--steps", type=int, default=10, help="GRPO steps per run")
    p.add_argument("--rate", type=float, default=0.1, help="share of sandbox calls failed as infrastructure")
    p.add_argument("--eval-size", type=int, default=100, help="held-out problems evaluated at the start and end")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/fault_injection")
    args = p.parse_args()
    out = Path(args.out)
    if out.exists() and any(out.glob("*/metrics.jsonl")):
        raise SystemExit(f"{out} holds earlier runs: choose another --out")
    model = args.model or sft_model(out / "sft", args.sft_steps, args.seed)
    rows = [run("clean", model, out, args, 0.0, None),
            run("faults", model, out, args, args.rate, None),
            run("faults, no retry", model, out, args, args.rate, 0)]
    (out / "fault_injection.json").write_text(json.dumps(rows, indent=2) + "\n")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    bad = [r["run"] for r in rows if r["infra_penalties"] or r["infra_graded"]]
    print(f"\npenalties applied to infrastructure failures: {sum(r['infra_penalties'] for r in rows)} (target 0); "
          + ("FAILED: " + ", ".join(bad) if bad else "every infra-failed sample was left ungraded"))


if __name__ == "__main__":
    main()
