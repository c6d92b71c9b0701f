"""`tirl sft CONFIG [key=value ...] --run-dir DIR [--resume] [--skip-invalid]`."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tirl.config import add_config_arguments

    parser.description = (
        "Cold-start SFT on code-integrated traces: loss on the assistant's own tokens only "
        "(interpreter output masked). Writes RUN_DIR/model/ for `tirl train model.path=RUN_DIR/model`."
    )
    add_config_arguments(parser)
    parser.add_argument("--run-dir", default="runs/sft",
                        help="where model/, metrics.jsonl, checkpoints/ and summary.json go (default: runs/sft)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="skip malformed trace rows (their count is reported) instead of refusing the file")


def run(args: argparse.Namespace) -> int:
    from tirl.config import ConfigError, load_config
    from tirl.data import DataError
    from tirl.train.rl_command import quiet_transformers
    from tirl.train.sft import SFTConfig, train_sft

    try:
        cfg = load_config(SFTConfig, args.config, args.overrides)
    except ConfigError as e:
        print(f"tirl sft: {e}")
        return 2
    if args.skip_invalid:
        cfg.data.skip_invalid = True
    quiet_transformers()
    try:
        summary = train_sft(cfg, args.run_dir, resume=args.resume)
    except (FileExistsError, FileNotFoundError, DataError) as e:
        print(f"tirl sft: {e}")
        return 2
    print(json.dumps(summary, indent=2))
    return 0
