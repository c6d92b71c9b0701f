"""`tirl report RUN_DIR [RUN_DIR ...] [--out DIR] [--title T] [--labels A B ...]`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "A self-contained HTML page (plots embedded, and written as PNG files next to it) over one or "
        "more run directories of tirl train / sft / demo / eval: accuracy, losses, KL, entropy, clip "
        "fraction, grad norm, response length, tool-use statistics and code purposes over training steps, "
        "runs overlaid; summary figures; tirl eval scores per benchmark; samples."
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="a run directory (metrics.jsonl of tirl train/sft, or a tirl eval directory), or a "
                        "parent whose sub-directories are runs (a demo's run directory)")
    parser.add_argument("--out", "--run-dir", dest="out", default=None,
                        help="where report.html and plots/ go (default: the first RUN_DIR)")
    parser.add_argument("--title", default="tirl report", help="page title (default: %(default)s)")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="one legend label per run, after parents are expanded; give it after the "
                        "RUN_DIRs (default: directory names)")


def run(args: argparse.Namespace) -> int:
    from tirl.commands import guarded

    return guarded("report", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from tirl.commands import UserError
    from tirl.report.page import write_report

    out = Path(args.out) if args.out else Path(args.run_dirs[0])
    try:
        path = write_report(args.run_dirs, out, title=args.title, labels=args.labels)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(path)
    return 0
