"""`RUN_DIR/trajectories.jsonl`: one line per training step with what `tirl replay` needs to play the
step again and check it, and nothing more.

    {"step": 3, "exec": [FROM, TO], "n": 4, "problems": [id, ...], "prompts": [digest, ...],
     "trajs": [{"ids": [...], "mask": [runs], "finish": "answer", "calls": [[status, start, end], ...],
                "grade": {score, correct, extracted, reference, reason}, "adv": 0.866, "version": 2}, ...]}

- `exec`: the lines [FROM, TO) of `executions.jsonl` (`tirl.sandbox.record`) written during the step:
  every answer its programs got, in order.
- `problems`: the step's problem ids, one per group (the problems are reloaded from the run's data);
  `prompts`: a digest of each group's prompt ids (`ids_digest`), so a changed prompt rule is caught
  without storing the prompt.
- per trajectory (prompt-major, as trained): the response's token ids (sampled and interpreter
  tokens), its loss mask as run lengths (1s first: `[12, 30, 8]` = 12 sampled, 30 interpreter, 8
  sampled), its finish reason, each tool call's status and token span (its code and output are in the
  ids), its grade, and its advantage (GRPO / RLOO: one number; PPO's per-token GAE advantages need the
  critic and are not kept: null), and the weight version that sampled it (`Trajectory.weight_version`:
  the step's own minus one in the synchronous loop, up to `trainer.max_staleness` older otherwise; with
  partial rollouts the oldest, and `versions`: [[first token, version], ...] of each run of tokens one
  version sampled).
Sampling log-probs are not kept: nothing a replay recomputes reads them.

Written with the other per-step files (`tirl.jsonl.append_rows`, cut back on resume like them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from tirl.generation.recorded import RecordedResponse, ids_digest
from tirl.jsonl import append_rows

STEP_FILE = "trajectories.jsonl"


def mask_runs(mask: Sequence[int]) -> list[int]:
    """Run lengths of a 0/1 mask, starting with a run of 1s (0 long when the mask starts with 0)."""
    runs, want, count = [], 1, 0
    for m in mask:
        if m != want:
            runs.append(count)
            want, count = m, 0
        count += 1
    return runs + [count] if mask else []


def mask_from_runs(runs: Sequence[int]) -> list[int]:
    return [1 - i % 2 for i, r in enumerate(runs) for _ in range(r)]


def record_step(run_dir: Any, step: int, problems: Sequence[Any], trajs: Sequence[Any], grades: Sequence[Any],
                advantages: Any, exec_span: tuple[int, int]) -> None:
    """Append the step's line to `run_dir / STEP_FILE` (see `step_row`)."""
    append_rows(run_dir / STEP_FILE, [step_row(step, problems, trajs, grades, advantages, exec_span)])


def step_row(step: int, problems: Sequence[Any], trajs: Sequence[Any], grades: Sequence[Any], advantages: Any,
             exec_span: tuple[int, int]) -> dict[str, Any]:
    """The line of one step: `advantages` is the batch's tensor ((B,) for GRPO / RLOO)."""
    n = len(trajs) // max(len(problems), 1)
    adv = advantages.tolist() if advantages is not None and advantages.dim() == 1 else [None] * len(trajs)
    return {"step": step, "exec": list(exec_span), "n": n, "problems": [p.id for p in problems],
            "prompts": [ids_digest(trajs[g * n].prompt_ids) for g in range(len(problems))],
            "trajs": [trajectory_row(t, g, a) for t, g, a in zip(trajs, grades, adv)]}


def trajectory_row(t: Any, grade: Any, advantage: float | None) -> dict[str, Any]:
    return {"ids": t.response_ids, "mask": mask_runs(t.loss_mask), "finish": t.finish_reason,
            "calls": tool_calls_row(t), "grade": grade.to_dict(), "adv": advantage,
            "version": t.weight_version, **({"versions": [list(r) for r in t.version_runs]} if t.version_runs else {})}


def tool_calls_row(t: Any) -> list[list]:
    return [[c.status, c.span[0], c.span[1]] for c in t.tool_calls]


def recorded_responses(row: dict[str, Any]) -> list[RecordedResponse]:
    """What `RecordedGenerator` plays back, from a step's line."""
    n = row["n"]
    return [RecordedResponse(row["prompts"][i // n], r["ids"], mask_from_runs(r["mask"]), r["finish"],
                             call_at_end=any(c[1] == len(r["ids"]) for c in r["calls"]))
            for i, r in enumerate(row["trajs"])]


def write_samples(run_dir: Any, step: int, trajs: list, grades: list, k: int = 4) -> None:
    """A few whole trajectories per step in `samples.jsonl`, for the report (all of them, with text and
    log-probs, would be gigabytes on a big run; `trajectories.jsonl` keeps every one, compactly)."""
    append_rows(Path(run_dir) / "samples.jsonl",
                [{"step": step, "grade": g.to_dict(), **t.to_dict()} for t, g in list(zip(trajs, grades))[:k]])
