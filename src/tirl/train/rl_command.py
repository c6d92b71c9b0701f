"""`tirl train CONFIG [key=value ...] --run-dir DIR [--resume [--force]] [--skip-invalid]`."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tirl.config import add_config_arguments, add_device_arguments

    parser.description = (
        "RL with interleaved code execution: rollouts pause at each closed code block, run it in the "
        "sandbox and resume; +1/-1 reward on the final answer. algorithm.name=grpo|ppo|rloo."
    )
    add_config_arguments(parser, example="trainer.optim.lr=1e-5 rollout.n=8")
    add_device_arguments(parser)
    parser.add_argument("--run-dir", default="runs/train",
                        help="where metrics.jsonl, samples.jsonl, checkpoints/ and summary.json go "
                        "(default: runs/train)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest complete checkpoint in --run-dir, exactly")
    parser.add_argument("--force", action="store_true",
                        help="with --resume: continue even though settings differ from the run's config.yaml")
    parser.add_argument("--skip-invalid", action="store_true", default=argparse.SUPPRESS,
                        help="skip malformed problem rows (their count is logged) instead of refusing the file")


def run(args: argparse.Namespace) -> int:
    from tirl.commands import guarded

    return guarded("train", lambda: _run(args), run_dir=args.run_dir)


def _run(args: argparse.Namespace) -> int:
    from tirl.commands import UserError, command_config, quiet_transformers
    from tirl.train.rl import RLConfig, train_rl, validate

    cfg = command_config(RLConfig, args, {"skip_invalid": "data.skip_invalid", "device": "trainer.device",
                                          "precision": "trainer.precision"})
    try:
        validate(cfg)
    except ValueError as e:
        raise UserError(str(e)) from None
    quiet_transformers()
    summary = train_rl(cfg, args.run_dir, resume=args.resume, force=args.force)
    print(json.dumps(summary, indent=2))
    return 0

