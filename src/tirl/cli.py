"""The `tirl` command. Nothing imports this module.

Each command lives in the module that owns its work and exposes `add_arguments(parser)` and
`run(args) -> int` (a module, or `module:name` for an object in it that has both). Only the chosen
command's module is imported, so `tirl --help` stays instant (no torch import).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    summary: str
    module: str
    """Module with add_arguments/run, or `module:name` of an object in it that has them."""


COMMANDS: dict[str, Command] = {
    "demo": Command("train a tiny model from nothing to tool use on CPU: SFT, RL with the sandbox, "
                    "evaluation, report", "tirl.demo"),
    "recipe": Command("the ReTool comparison on real word problems (SVAMP, GSM8K): rule-based traces, SFT and RL "
                      "with and without the tool, test", "tirl.recipe"),
    "sft": Command("cold-start supervised fine-tuning on code-integrated traces", "tirl.train.commands:sft"),
    "train": Command("RL with interleaved code execution (GRPO, PPO, RLOO)", "tirl.train.commands:train"),
    "replay": Command("play a recorded RL step again from its tokens and executions; check grades and "
                      "advantages are bit-identical", "tirl.train.replay"),
    "eval": Command("evaluate a model or server on math benchmarks (avg@k, pass@k, maj@k, tool use)",
                    "tirl.eval.command"),
    "sandbox": Command("the code sandbox: serve (SandboxFusion-compatible HTTP), bench, check",
                       "tirl.sandbox.cli"),
    "report": Command("HTML report and plots for one or more run directories", "tirl.report.command"),
    "convert": Command("rewrite text solutions into verified code-integrated SFT traces",
                       "tirl.convert.command"),
    "select": Command("choose training problems from earlier RL runs (LIMR learning-impact scores)",
                      "tirl.train.select_command"),
    "serve": Command("OpenAI-compatible completions server around a local model",
                     "tirl.generation.serve_command"),
    "config": Command("every key of a command's config with its type, default and meaning (docs/config.md), "
                      "and TRL's and verl's names for them", "tirl.config_command"),
}


def _load(name: str):
    module_name, _, attr = COMMANDS[name].module.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tirl",
        description="Tool-integrated RL: teach language models to reason with a code interpreter "
        "(ReTool / ToRL). Every command that writes takes --run-dir DIR.",
        epilog="Run `tirl COMMAND --help` for a command's options.",
    )
    from tirl import __version__

    parser.add_argument("--version", action="version", version=f"tirl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, spec in COMMANDS.items():
        sp = sub.add_parser(name, help=spec.summary, description=spec.summary)
        if name == selected:
            _load(name).add_arguments(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in COMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    # `key=value` words after flags (`tirl sft CFG --run-dir D trainer.steps=10`) are overrides too.
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(_load(args.command).run(args) or 0)
    except KeyboardInterrupt:
        print(f"\ntirl {args.command}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
