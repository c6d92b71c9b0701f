"""The score table `tirl eval` prints (rich): one row per benchmark and an overall row."""

from __future__ import annotations

import math
import sys
from typing import Any


TABLE_TOOL_COLUMNS = [("code%", "tool/code_ratio", 100), ("calls", "tool/calls_mean", 1),
                      ("ok%", "tool/pass_rate", 100), ("fix%", "tool/self_correction", 100),
                      ("tokens", "response/length_mean", 1)]


def render_table(summary: dict[str, Any], console: Any = None) -> None:
    """Print one row per benchmark and an overall row (rich); percentages. pass@k for k = 1 and n only
    (summary.json has every k); code% = responses with code, ok% = executed calls that ran cleanly,
    fix% = self-correction, tokens = mean response length."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    n = summary["n"]
    ks = sorted({1, n})
    table = Table(title=f"tirl eval: {n} sample{'s' if n > 1 else ''} per problem", box=box.SIMPLE_HEAD)
    for col in ["benchmark", "problems", f"avg@{n}"] + [f"pass@{k}" for k in ks] + [f"maj@{n}"]:
        table.add_column(col, justify="left" if col == "benchmark" else "right")
    for title, _, _ in TABLE_TOOL_COLUMNS:
        table.add_column(title, justify="right")
    rows = list(summary["benchmarks"].items())
    if len(rows) > 1:
        rows.append(("overall", summary["overall"]))
    for name, s in rows:
        cells = [name, str(int(s.get("problems", 0)))]
        cells += [_pct(s.get(key)) for key in [f"avg@{n}"] + [f"pass@{k}" for k in ks] + [f"maj@{n}"]]
        cells += [_num(s.get(key), scale) for _, key, scale in TABLE_TOOL_COLUMNS]
        table.add_row(*cells)
    if console is None:  # a pipe or log file gets the whole table, not 80 squeezed columns
        console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(table)
    failed = summary["overall"].get("infra_failed", 0)
    if failed:
        console.print(f"{failed} sample{'s' if failed > 1 else ''} failed in the sandbox or generation server: "
                      "not scored (run the same command again to retry them)")


def _pct(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _num(x: Any, scale: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x * scale:.1f}" if scale != 1 else f"{x:.2f}" if x < 100 else f"{x:.0f}"


COMPARISON_COLUMNS = [("acc%", "accuracy", 100), ("code%", "code_ratio", 100), ("blocked%", "blocked_ratio", 100),
                      ("tool err%", "tool_error_rate", 100), ("interp. tok%", "interpreter_share", 100),
                      ("calls/solved", "calls_per_correct", 1)]


def render_comparison(comparison: dict[str, Any], console: Any = None) -> None:
    """With and without the tool, one pair of rows per benchmark (`tirl.eval.summary.tool_comparison`):
    acc% = avg@n, code% = responses whose code ran, blocked% = responses that wrote a code block the
    tool cap refused (without the tool: every block), tool err% = failed / executed calls, interp. tok%
    = response tokens that are interpreter output, calls/solved = code calls per correct sample."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"tirl eval: with and without the tool, {comparison['n']} sample(s) per problem",
                  box=box.SIMPLE_HEAD)
    for col in ["benchmark", "tool"] + [title for title, _, _ in COMPARISON_COLUMNS]:
        table.add_column(col, justify="left" if col in ("benchmark", "tool") else "right")
    rows = list(comparison["benchmarks"].items())
    if len(rows) > 1:
        rows.append(("overall", comparison["overall"]))
    for name, pair in rows:
        for mode in ("on", "off"):
            table.add_row(name if mode == "on" else "", mode,
                          *[_num(pair[mode].get(key), scale) for _, key, scale in COMPARISON_COLUMNS])
    if console is None:
        console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(table)
