"""`tirl sft CONFIG [key=value ...] --run-dir DIR [--resume [--force]] [--skip-invalid]`."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tirl.config import add_config_arguments, add_device_arguments

    parser.description = (
        "Cold-start SFT on code-integrated traces: loss on the assistant's own tokens only "
        "(interpreter output masked). Writes RUN_DIR/model/ for `tirl train model.path=RUN_DIR/model`."
    )
    add_config_arguments(parser, example="trainer.steps=100 trainer.optim.lr=1e-4")
    add_device_arguments(parser)
    parser.add_argument("--run-dir", default="runs/sft",
                        help="where model/, metrics.jsonl, checkpoints/ and summary.json go (default: runs/sft)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument("--force", action="store_true",
                        help="with --resume: continue even though settings differ from the run's config.yaml")
    parser.add_argument("--skip-invalid", action="store_true", default=argparse.SUPPRESS,
                        help="skip malformed trace rows (their count is reported) instead of refusing the file")


def run(args: argparse.Namespace) -> int:
    from tirl.commands import guarded

    return guarded("sft", lambda: _run(args), run_dir=args.run_dir)


def _run(args: argparse.Namespace) -> int:
    from tirl.commands import UserError, command_config, quiet_transformers
    from tirl.train.sft import SFTConfig, train_sft, validate_sft

    cfg = command_config(SFTConfig, args, {"skip_invalid": "data.skip_invalid", "device": "trainer.device",
                                           "precision": "trainer.precision"})
    try:
        validate_sft(cfg)
    except ValueError as e:
        raise UserError(str(e)) from None
    quiet_transformers()
    summary = train_sft(cfg, args.run_dir, resume=args.resume, force=args.force)
    print(json.dumps(summary, indent=2))
    return 0
