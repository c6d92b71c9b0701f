"""PNG plots of the report: metric curves over training steps (runs overlaid) and code purposes early
vs late. Matplotlib's object API with the Agg canvas (no pyplot, no global state, no display needed).

Each function writes one PNG and returns True, or returns False without writing when there is nothing
finite to draw (the caller says so in the page). Simplifications: fixed sizes and colours; a moving
average is drawn over the raw curve only when a run has 15 or more points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
SMOOTH_FROM = 15  # points per run from which a moving average is worth drawing over the raw curve


class Curve:
    """One line of a plot: x (steps) and y of equal length N, all finite. `dash`: a matplotlib line style
    ("-", "--", ":") telling apart several figures of one run drawn in the run's colour."""

    def __init__(self, label: str, color: str, x: Sequence[float], y: Sequence[float], *,
                 points: bool = False, dash: str = "-") -> None:
        self.label, self.color, self.x, self.y, self.points = label, color, list(x), list(y), points
        self.dash = dash


def _figure(width: float = 7.0, height: float = 3.6) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _moving_average(y: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(y):
        acc += v
        if i >= window:
            acc -= y[i - window]
        out.append(acc / min(i + 1, window))
    return out


def line_plot(curves: list[Curve], path: Path, *, title: str, ylabel: str,
              ylim: tuple[float, float] | None = None, xlim: tuple[float, float] | None = None) -> bool:
    """Curves over steps on one axis; `points` curves (e.g. held-out evaluations) as markers. `xlim`: the
    runs' step range, so a figure logged on a few steps is drawn where those steps are in the run."""
    curves = [c for c in curves if c.x]
    if not curves:
        return False
    below = len(curves) > 2  # more entries than fit in a corner without hiding data: a legend under the axes
    fig = _figure(width=6.4, height=3.6 + (0.18 * ((len(curves) + 1) // 2) if below else 0.0))
    ax = fig.add_subplot(1, 1, 1)
    for c in curves:
        if c.points:
            ax.plot(c.x, c.y, "o--", color=c.color, label=c.label, markersize=6, linewidth=1,
                    markerfacecolor="white", markeredgewidth=2)
        elif len(c.x) >= SMOOTH_FROM:
            ax.plot(c.x, c.y, c.dash, color=c.color, alpha=0.25, linewidth=1)
            window = max(3, len(c.x) // 10)
            ax.plot(c.x, _moving_average(c.y, window), c.dash, color=c.color, linewidth=2,
                    label=f"{c.label} (mean of {window})")
        else:
            ax.plot(c.x, c.y, "." + c.dash, color=c.color, label=c.label, linewidth=1.5)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("training step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if xlim is not None and xlim[1] > xlim[0]:
        pad = (xlim[1] - xlim[0]) * 0.03
        ax.set_xlim(xlim[0] - pad, xlim[1] + pad)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        lo, hi = ylim
        pad = (hi - lo) * 0.04
        ax.set_ylim(lo - pad, hi + pad)
    ax.grid(alpha=0.3)
    if below:  # two columns under the plot, so a figure stays one grid cell wide
        ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    else:
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    fig.tight_layout()
    fig.savefig(path, format="png", bbox_inches="tight")
    return True


def purpose_plot(shares: list[tuple[str, str, dict[str, float], dict[str, float]]], purposes: Sequence[str],
                 path: Path, *, title: str) -> bool:
    """One panel per run: the share of executed calls per purpose, early (light) vs late (dark) bars.

    `shares`: (run label, colour, early {purpose: share}, late {purpose: share}); purposes never seen in any run
    are left out so the bars stay readable.
    """
    shown = [p for p in purposes if any(s.get(p, 0) > 0 for _, _, e, l in shares for s in (e, l))]
    if not shares or not shown:
        return False
    fig = _figure(width=max(7.0, 3.6 * len(shares)), height=3.8)
    axes = fig.subplots(1, len(shares), sharey=True, squeeze=False)[0]
    width = 0.38
    for ax, (label, color, early, late) in zip(axes, shares):
        xs = range(len(shown))
        ax.bar([x - width / 2 for x in xs], [early.get(p, 0.0) for p in shown], width, color=color,
               alpha=0.35, label="early (first third)")
        ax.bar([x + width / 2 for x in xs], [late.get(p, 0.0) for p in shown], width, color=color,
               label="late (last third)")
        ax.set_xticks(list(xs))
        tilt = len(shown) * len(shares) > 6  # long purpose names overlap when many bars share a row
        ax.set_xticklabels(shown, rotation=30 if tilt else 0, ha="right" if tilt else "center", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    axes[0].set_ylabel("share of executed calls")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return True



def time_split_plot(rows: list[tuple[str, dict[str, float]]], parts: Sequence[str], path: Path, *,
                    title: str) -> bool:
    """One horizontal bar per run: its mean seconds per step, split into `parts` (stacked, in order).

    `rows`: (run label, {part: mean seconds per step}); a run with no part above zero is left out.
    """
    rows = [(label, split) for label, split in rows if any(split.get(p, 0.0) > 0 for p in parts)]
    if not rows:
        return False
    fig = _figure(height=1.4 + 0.5 * len(rows))
    ax = fig.add_subplot(1, 1, 1)
    ys = list(range(len(rows)))
    left = [0.0] * len(rows)
    for i, part in enumerate(parts):
        widths = [split.get(part, 0.0) for _, split in rows]
        ax.barh(ys, widths, left=left, color=COLORS[i % len(COLORS)], label=part, height=0.6)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_yticks(ys)
    ax.set_yticklabels([label for label, _ in rows], fontsize=8)
    ax.invert_yaxis()  # the first run on top, as in the legend of the other plots
    ax.set_xlabel("seconds per step (mean over steps)")
    ax.set_title(title, fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, ncol=len(parts), loc="upper center", bbox_to_anchor=(0.5, -0.35), frameon=False)
    fig.tight_layout()
    fig.savefig(path, format="png", bbox_inches="tight")
    return True
