"""The run directories a report reads: metrics, samples and summary of each, and what is derived from them
(code purposes early vs late, which samples to show).

Per run directory, what `tirl train` / `tirl sft` write: `metrics.jsonl` (one JSON object per step;
an undefined figure is null, as `tirl.jsonl` writes it), `samples.jsonl` (a few trajectories per step,
`Trajectory.to_dict()` plus `step` and `grade`) and `summary.json`. A directory without `metrics.jsonl`
whose sub-directories have one (the demo's DIR/sft, DIR/rl, DIR/text_rl) expands into them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tirl.analysis.code_purpose import PURPOSES
from tirl.analysis.tool_stats import purpose_shares
from tirl.jsonl import read_rows


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@dataclass
class Run:
    label: str
    path: Path
    metrics: list[dict[str, float]] = field(default_factory=list)
    """One dict per step, sorted by step; numeric values only (an undefined figure, null, is absent)."""
    samples: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    """What could not be read (bad lines, missing files), shown on the page."""
    kind: str = "train"
    """"train" (tirl train / sft / demo: metrics.jsonl) or "eval" (tirl eval: summary.json per benchmark)."""

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of `key`, finite values only."""
        pts = [(m["step"], m[key]) for m in self.metrics if finite(m.get(key, math.nan))]
        return [p[0] for p in pts], [p[1] for p in pts]


def is_eval_dir(p: Path) -> bool:
    """A `tirl eval` run directory: its eval_config.json, and no training metrics."""
    return (p / "eval_config.json").is_file() and not (p / "metrics.jsonl").is_file()


def _is_run(p: Path) -> bool:
    return (p / "metrics.jsonl").is_file() or is_eval_dir(p)


def expand_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Each path that is a run (metrics.jsonl, or a `tirl eval` directory), or its sub-directories that are
    (sorted by name)."""
    out = []
    for p in map(Path, paths):
        if _is_run(p):
            out.append(p)
            continue
        subs = sorted(d for d in p.iterdir() if _is_run(d)) if p.is_dir() else []
        if not subs:
            raise FileNotFoundError(f"{p}: no metrics.jsonl (tirl train/sft) or eval_config.json (tirl eval) "
                                    "there or in its sub-directories")
        out.extend(subs)
    return out


def default_labels(dirs: Sequence[Path]) -> list[str]:
    """Directory names; parent/name where names repeat (two demo runs both have `rl`)."""
    names = [d.name for d in dirs]
    return [f"{d.parent.name}/{d.name}" if names.count(d.name) > 1 else d.name for d in dirs]


def _number(v: Any) -> float | None:
    """A metric value as a float; None for null (undefined, `tirl.jsonl`'s NaN rule) and non-numbers."""
    return float(v) if isinstance(v, (int, float)) else None


def _read_jsonl(path: Path, problems: list[str]) -> list[Any]:
    if not path.is_file():
        problems.append(f"{path.name} is missing")
        return []
    return read_rows(path, problems)


def load_run(path: Path, label: str) -> Run:
    if is_eval_dir(path):
        return _load_eval(path, label)
    run = Run(label=label, path=path)
    for row in _read_jsonl(path / "metrics.jsonl", run.problems):
        m = {k: x for k, v in row.items() if (x := _number(v)) is not None}
        if "step" in m:
            run.metrics.append(m)
    run.metrics.sort(key=lambda m: m["step"])
    # `tirl sft` keeps no samples: their absence is not a problem (the samples section says "none").
    if (path / "samples.jsonl").is_file():
        run.samples = [s for s in _read_jsonl(path / "samples.jsonl", run.problems) if isinstance(s, dict)]
    _read_summary(run, "summary.json is missing")
    return run


def _load_eval(path: Path, label: str) -> Run:
    """Its summary.json (scores per benchmark and overall); the per-sample records stay with `tirl eval`."""
    run = Run(label=label, path=path, kind="eval")
    _read_summary(run, "summary.json is missing (the evaluation has not finished)")
    return run


def _read_summary(run: Run, missing: str) -> None:
    """`run.summary` from its summary.json; a missing or broken file becomes one of `run.problems`."""
    try:
        run.summary = json.loads((run.path / "summary.json").read_text())
    except FileNotFoundError:
        run.problems.append(missing)
    except json.JSONDecodeError as e:
        run.problems.append(f"summary.json is not JSON ({e})")


# ---- what is derived: code purposes early vs late, samples to show ----------------------------

def _thirds(steps: list[float]) -> tuple[set[float], set[float]]:
    k = max(1, len(steps) // 3)
    return set(steps[:k]), set(steps[-k:])


def purpose_split(run: Run) -> tuple[dict[str, float], dict[str, float], str] | None:
    """(early shares, late shares, source) over the first and last third of the steps; None if no
    executed call was seen. Shares are weighted by each step's executed calls."""
    keys = [f"purpose/{p}" for p in PURPOSES]
    rows = [m for m in run.metrics if any(finite(m.get(k, math.nan)) for k in keys)]
    if rows:
        early, late = _thirds([m["step"] for m in run.metrics])

        def pooled(steps: set[float]) -> dict[str, float]:
            tot: dict[str, float] = {p: 0.0 for p in PURPOSES}
            weight = 0.0
            for m in rows:
                if m["step"] in steps:
                    w = m.get("tool/executed_calls", 1.0)
                    w = w if finite(w) else 1.0
                    weight += w
                    for p in PURPOSES:
                        v = m.get(f"purpose/{p}", math.nan)
                        tot[p] += w * v if finite(v) else 0.0
            return {p: t / weight for p, t in tot.items()} if weight else {}

        e, l = pooled(early), pooled(late)
        return (e, l, "purpose/* metrics") if e or l else None
    steps = sorted({s["step"] for s in run.samples if "step" in s})
    if not steps:
        return None
    early, late = _thirds(steps)
    shares = []
    for part in (early, late):
        sh = purpose_shares([s for s in run.samples if s.get("step") in part])
        shares.append({p: v for p, v in ((p, sh[f"purpose/{p}"]) for p in PURPOSES) if finite(v)})
    if not shares[0] and not shares[1]:
        return None
    return shares[0], shares[1], "samples.jsonl (the metrics have no purpose/* keys)"


def pick_samples(run: Run, k: int = 6) -> list[dict[str, Any]]:
    """Up to `k` samples from the first, middle and last steps: at each, one correct and one wrong where
    there are both (ones that used code first), then more from the same steps until `k`."""
    steps = sorted({s.get("step") for s in run.samples if isinstance(s.get("step"), (int, float))})
    chosen = list(dict.fromkeys([steps[0], steps[len(steps) // 2], steps[-1]] if steps else []))
    picked: list[dict[str, Any]] = []
    rest: list[dict[str, Any]] = []
    for step in chosen:
        at = [s for s in run.samples if s.get("step") == step]
        at.sort(key=lambda s: not s.get("tool_calls"))  # stable: ones that used code first
        right = next((s for s in at if (s.get("grade") or {}).get("correct")), None)
        wrong = next((s for s in at if not (s.get("grade") or {}).get("correct")), None)
        picked += [s for s in (right, wrong) if s is not None]
        rest += [s for s in at if s is not right and s is not wrong]
    picked += rest[:max(0, k - len(picked))]
    picked = picked[:k]
    return sorted(picked, key=lambda s: s.get("step", 0))  # stable: the page reads in step order
