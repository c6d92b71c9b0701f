"""The RL run's held-out evaluation: the run's own prompt and tool loop, one sample per problem, through
`tirl.eval.evaluate`, the one evaluation path; its figures under `eval/*`."""

from __future__ import annotations

import dataclasses
from typing import Any

from tirl.sandbox import SandboxLike
from tirl.train.rl_config import RLConfig


def eval_config(cfg: RLConfig) -> Any:
    """The held-out evaluation's settings: the run's own prompt and tool loop, one sample at
    `trainer.eval_temperature` (what `tirl eval --model CHECKPOINT` uses by default, via tirl.json)."""
    from tirl.eval import EvalConfig

    return EvalConfig(prompt=cfg.prompt, rollout=dataclasses.replace(
        cfg.rollout, n=1, temperature=cfg.trainer.eval_temperature, seed=cfg.trainer.seed),
        batch_size=max(1, cfg.trainer.eval_size))


EVAL_KEYS = {"avg@1": "eval/accuracy", "reward_mean": "eval/reward_mean", "tool/code_ratio": "eval/code_ratio",
             "tool/pass_rate": "eval/pass_rate", "tool/calls_mean": "eval/calls_mean",
             "response/length_mean": "eval/length_mean"}


def evaluate(generator: Any, tokenizer: Any, sandbox: SandboxLike, items: list, cfg: RLConfig,
             rewards: Any = None) -> dict:
    """Held-out figures through `tirl.eval.evaluate`, the one evaluation path (nothing written).
    `rewards`: the run's reward functions (`tirl.rewards.Rewards`), so `eval/reward_mean` is the reward
    the run trains on, and each function's mean is `eval/reward/<name>`."""
    from tirl.eval import evaluate as run_eval, split_by_source

    if not items:
        return {}
    groups = split_by_source("heldout", items)
    summary = run_eval(generator, tokenizer, sandbox, groups, eval_config(cfg), None, show=False, rewards=rewards)
    overall = summary["overall"]
    out = {new: overall[old] for old, new in EVAL_KEYS.items() if old in overall}
    out.update({f"eval/{k}": v for k, v in overall.items() if k.startswith("reward/")})
    if len(groups) > 1:  # verl's data_source: accuracy per source as well
        out.update({f"eval/{name.split('/', 1)[-1]}/accuracy": s["avg@1"]
                    for name, s in summary["benchmarks"].items() if "avg@1" in s})
    return out
