"""`tirl sft` and `tirl train`: one command shape for both trainers.

    tirl sft   CONFIG [key=value ...] --run-dir DIR [--resume [--force]] [--skip-invalid]
    tirl train CONFIG [key=value ...] --run-dir DIR [--resume [--force]] [--skip-invalid]

Each builds its config (defaults < settings saved with the starting model < CONFIG < key=value <
flags, `tirl.commands.command_config`), refuses a bad one in one line before any model loads, trains,
and prints the summary. The saved settings are the `tirl.json` beside `model.path`'s weights (an SFT
model or an RL checkpoint, `tirl.trained_settings`): `tirl train model.path=SFT_RUN/model` prompts the
model as its SFT did unless the config says otherwise. The trainer's module is imported only when the
command runs, so `tirl sft --help` loads no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from dataclasses import dataclass
from typing import Any

FLAG_KEYS = {"skip_invalid": "data.skip_invalid", "device": "trainer.device", "precision": "trainer.precision"}


def training_config(schema: type, args: argparse.Namespace, command: str = "train") -> Any:
    """The trainer's config; the prompt and tool-loop settings saved with `model.path` (when it has a
    `tirl.json`) sit under the config file and overrides, as `tirl eval --model` does."""
    from tirl.commands import command_config
    from tirl.trained_settings import FILE, read_settings

    cfg = command_config(schema, args, FLAG_KEYS)
    names = {f.name for f in dataclasses.fields(schema)}
    saved = {k: v for k, v in read_settings(cfg.model.path).items() if k in names}
    if not saved:
        return cfg
    print(f"tirl {command}: {', '.join(sorted(saved))} settings from {cfg.model.path}/{FILE} "
          "(the config file and key=value still win)", file=sys.stderr)
    return command_config(schema, args, FLAG_KEYS, base=saved)


@dataclass(frozen=True)
class TrainingCommand:
    name: str
    description: str
    example: str
    """Overrides shown in `--help`."""
    run_dir: str
    run_dir_help: str
    resume_help: str
    skip_invalid_help: str
    trainer: str
    """`module:Config:validate:train` of the trainer, imported when the command runs."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from tirl.config import add_config_arguments, add_device_arguments

        parser.description = self.description
        add_config_arguments(parser, example=self.example)
        add_device_arguments(parser)
        parser.add_argument("--run-dir", default=self.run_dir, help=f"{self.run_dir_help} (default: {self.run_dir})")
        parser.add_argument("--resume", action="store_true", help=self.resume_help)
        parser.add_argument("--force", action="store_true",
                            help="with --resume: continue even though settings differ from the run's config.yaml")
        parser.add_argument("--skip-invalid", action="store_true", default=argparse.SUPPRESS,
                            help=self.skip_invalid_help)

    def run(self, args: argparse.Namespace) -> int:
        from tirl.commands import guarded

        return guarded(self.name, lambda: self._run(args), run_dir=args.run_dir)

    def _run(self, args: argparse.Namespace) -> int:
        from tirl.jsonl import pretty

        print(pretty(self.execute(args)))  # strict JSON: an undefined figure is null, never NaN
        return 0

    def execute(self, args: argparse.Namespace, **train_kwargs: Any) -> dict[str, Any]:
        """Build the config from `args` (config, overrides, run_dir, resume, force and the flags), refuse a
        bad one, train; the summary. `tirl.sft` / `tirl.train` call this too (`train_kwargs`: what only
        Python can hand over, e.g. reward callables)."""
        from tirl.commands import UserError, quiet_transformers

        module, config, validate, train = self.trainer.split(":")
        trainer = importlib.import_module(module)
        cfg = training_config(getattr(trainer, config), args, self.name)
        try:
            getattr(trainer, validate)(cfg)
        except ValueError as e:
            raise UserError(str(e)) from None
        quiet_transformers()
        return getattr(trainer, train)(cfg, args.run_dir, resume=args.resume, force=args.force, **train_kwargs)


sft = TrainingCommand(
    name="sft",
    description="Cold-start SFT on code-integrated traces: loss on the assistant's own tokens only "
                "(interpreter output masked). Writes RUN_DIR/model/ for `tirl train model.path=RUN_DIR/model`.",
    example="trainer.steps=100 trainer.optim.lr=1e-4",
    run_dir="runs/sft",
    run_dir_help="where model/, metrics.jsonl, checkpoints/ and summary.json go",
    resume_help="continue from the newest complete checkpoint",
    skip_invalid_help="skip malformed trace rows (their count is reported) instead of refusing the file",
    trainer="tirl.train.sft:SFTConfig:validate_sft:train_sft",
)

train = TrainingCommand(
    name="train",
    description="RL with interleaved code execution: rollouts pause at each closed code block, run it in the "
                "sandbox and resume; +1/-1 reward on the final answer. algorithm.name=grpo|ppo|rloo.",
    example="trainer.optim.lr=1e-5 rollout.n=8",
    run_dir="runs/train",
    run_dir_help="where metrics.jsonl, samples.jsonl, checkpoints/ and summary.json go",
    resume_help="continue from the newest complete checkpoint in --run-dir, exactly",
    skip_invalid_help="skip malformed problem rows (their count is logged) instead of refusing the file",
    trainer="tirl.train.rl:RLConfig:validate:train_rl",
)
