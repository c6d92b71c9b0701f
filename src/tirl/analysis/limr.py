"""LIMR data selection (Li et al., 2025, "LIMR: Less is More for RL Scaling"), as ToRL uses it.

A problem is worth keeping when its learning curve during a first RL run follows the run's average
curve: it started unsolved and became solved as the model learned. Problems solved from the start,
or never, taught nothing and are dropped.

Input: `RUN_DIR/rewards.jsonl`, one row per problem per RL step,
``{"step": int, "epoch": int, "problem_id": str, "correct": [bool, ...]}``.

1. Accuracy of problem p in epoch k: correct samples / samples, pooled over every step (and every run
   directory given) of that epoch.
2. An epoch in which p was not sampled takes p's accuracy from the next epoch in which it was; a
   problem left with a missing epoch (never sampled from some epoch on) is dropped.
3. The mean curve is the average over the kept problems, epoch by epoch.
4. score(p) = 1 - sum_k (acc_k - mean_k)^2 / sum_k (1 - mean_k)^2. When the mean curve is 1 in every
   epoch the denominator is 0; a problem then matches it exactly, and scores 1.

Only complete epochs count (the last epoch counts only when every training problem was sampled in
it): a partial last epoch would drop every problem it had not reached yet. No torch, no I/O beyond
reading and writing the JSONL files named here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tirl.config import UserError

REWARDS_FILE = "rewards.jsonl"


class LimrError(UserError):
    """Rewards that cannot be scored; the message names the file and line."""


@dataclass(frozen=True)
class RewardRow:
    step: int
    epoch: int
    problem_id: str
    correct: tuple[bool, ...]


@dataclass(frozen=True)
class LimrScore:
    problem_id: str
    score: float
    accuracy: tuple[float, ...]
    """Per complete epoch, after filling epochs the problem was not sampled in."""


def reward_rows(problem_ids: Iterable[str], correct: Iterable[bool], n: int, step: int,
                epochs: Iterable[int]) -> list[dict]:
    """The rows a step adds to `rewards.jsonl`: samples come in groups of `n`, one group per problem."""
    flags = list(correct)
    return [{"step": step, "epoch": int(e), "problem_id": str(pid),
             "correct": [bool(c) for c in flags[i * n:(i + 1) * n]]}
            for i, (pid, e) in enumerate(zip(problem_ids, epochs))]


def read_rewards(path: str | Path) -> list[RewardRow]:
    """Rows of one `rewards.jsonl`; a torn last line (a run killed mid-write) is ignored, any other bad
    line is refused naming `file:line`."""
    path = Path(path)
    if not path.is_file():
        raise LimrError(f"{path}: no such file (RL runs write it; was this run made before rewards were logged?)")
    lines = path.read_text(encoding="utf-8").split("\n")
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            row = RewardRow(int(d["step"]), int(d["epoch"]), str(d["problem_id"]),
                            tuple(bool(c) for c in d["correct"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            if n == len(lines) and not line.endswith("}"):
                continue  # torn final write
            raise LimrError(f"{path}:{n}: not a rewards row ({type(e).__name__}: {e})") from None
        if not row.correct:
            raise LimrError(f"{path}:{n}: 'correct' is empty")
        rows.append(row)
    return rows


def complete_epochs(rows: list[RewardRow], n_problems: int) -> int:
    """Epochs the run finished: all but the last, and the last too when it reached all `n_problems`."""
    if not rows:
        return 0
    last = max(r.epoch for r in rows)
    in_last = {r.problem_id for r in rows if r.epoch == last}
    return last + 1 if len(in_last) >= n_problems else last


def accuracy_table(rows: list[RewardRow], epochs: int) -> dict[str, list[float | None]]:
    """problem_id -> accuracy per epoch (None where it was not sampled), epochs 0..epochs-1 only."""
    counts: dict[str, list[list[int]]] = {}
    for r in rows:
        if r.epoch >= epochs:
            continue
        c = counts.setdefault(r.problem_id, [[0, 0] for _ in range(epochs)])
        c[r.epoch][0] += sum(r.correct)
        c[r.epoch][1] += len(r.correct)
    return {pid: [ok / total if total else None for ok, total in c] for pid, c in counts.items()}


def fill_from_next(curve: list[float | None]) -> list[float] | None:
    """Missing epochs take the next sampled epoch's value; None when the tail stays missing."""
    out: list[float | None] = list(curve)
    nxt: float | None = None
    for k in range(len(out) - 1, -1, -1):
        if out[k] is None:
            out[k] = nxt
        else:
            nxt = out[k]
    return None if any(v is None for v in out) else out  # type: ignore[return-value]


def limr_scores(table: dict[str, list[float | None]]) -> list[LimrScore]:
    """Scores of every problem whose curve can be completed, in the table's order."""
    curves = {pid: c for pid, c in ((pid, fill_from_next(c)) for pid, c in table.items()) if c is not None}
    if not curves:
        return []
    epochs = len(next(iter(curves.values())))
    mean = [sum(c[k] for c in curves.values()) / len(curves) for k in range(epochs)]
    denom = sum((1 - m) ** 2 for m in mean)
    out = []
    for pid, c in curves.items():
        num = sum((a - m) ** 2 for a, m in zip(c, mean))
        score = 1.0 - num / denom if denom > 0 else (1.0 if num == 0 else -math.inf)
        out.append(LimrScore(pid, score, tuple(c)))
    return out
