"""`tirl report RUN_DIR [RUN_DIR ...] [--out DIR] [--replace] [--title T] [--labels A B ...]`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "A self-contained HTML page (plots embedded, and written as PNG files next to it) over one or "
        "more run directories of tirl train / sft / demo / eval: accuracy, reward and its components, losses, "
        "KL, entropy, clip fraction, grad norm, learning rate, throughput, response length, tool-use statistics "
        "over training steps (runs overlaid, two or three plots a row), the time split of a step (generation / "
        "sandbox / update), code purposes; summary figures; tirl eval scores per benchmark; samples with "
        "their prompts."
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="a run directory (metrics.jsonl of tirl train/sft, or a tirl eval directory), or a "
                        "parent whose sub-directories are runs (a demo's run directory)")
    parser.add_argument("--out", "--run-dir", dest="out", default=None,
                        help="where report.html and plots/ go (default: the first RUN_DIR). A report.html "
                        "that another command wrote there (tirl demo's page) is kept: this page is then "
                        "report_runs.html beside it")
    parser.add_argument("--replace", action="store_true",
                        help="write report.html even over another command's page")
    parser.add_argument("--title", default="tirl report", help="page title (default: %(default)s)")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="one legend label per run, after parents are expanded; give it after the "
                        "RUN_DIRs (default: directory names)")


def page_name(out: Path, replace: bool) -> str:
    """report.html, unless a page another command wrote is there and `replace` is off."""
    import sys

    from tirl.report.page import page_generator

    own = out / "report.html"
    if replace or not own.is_file() or page_generator(own) == "tirl report":
        return "report.html"
    who = f"{page_generator(own)}'s" if page_generator(own) else "another command's"
    print(f"{own} is {who} page; writing report_runs.html beside it (--replace to replace it)", file=sys.stderr)
    return "report_runs.html"


def run(args: argparse.Namespace) -> int:
    from tirl.commands import guarded

    return guarded("report", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from tirl.commands import UserError
    from tirl.report.page import write_report

    out = Path(args.out) if args.out else Path(args.run_dirs[0])
    name = page_name(out, args.replace)
    try:
        path = write_report(args.run_dirs, out, title=args.title, labels=args.labels, name=name)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(path)
    return 0
