"""`tirl train CONFIG [key=value ...] --run-dir DIR [--resume]`."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tirl.config import add_config_arguments

    parser.description = (
        "RL with interleaved code execution: rollouts pause at each closed code block, run it in the "
        "sandbox and resume; +1/-1 reward on the final answer. algorithm.name=grpo|ppo|rloo."
    )
    add_config_arguments(parser)
    parser.add_argument("--run-dir", default="runs/train",
                        help="where metrics.jsonl, samples.jsonl, checkpoints/ and summary.json go "
                        "(default: runs/train)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest complete checkpoint in --run-dir, exactly")


def run(args: argparse.Namespace) -> int:
    from tirl.config import ConfigError, load_config
    from tirl.train.rl import RLConfig, train_rl, validate

    try:
        cfg = load_config(RLConfig, args.config, args.overrides)
        validate(cfg)
    except (ConfigError, ValueError) as e:
        print(f"tirl train: {e}")
        return 2
    quiet_transformers()
    try:
        summary = train_rl(cfg, args.run_dir, resume=args.resume)
    except (FileExistsError, FileNotFoundError) as e:
        print(f"tirl train: {e}")
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def quiet_transformers() -> None:
    """Our progress bar is the one that matters; transformers' per-save bars are noise here."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
