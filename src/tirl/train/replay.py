"""`tirl replay RUN_DIR --step N`: play a recorded training step again and check it is bit-identical.

The step's trajectories are played through the real rollout loop and grader (`rollout.episodes.play`,
with the run's shards), with no model and no sandbox: a `RecordedGenerator` writes the recorded
sampled tokens (`trajectories.jsonl`, `tirl.train.step_record`) and a `ReplaySandbox` answers each
program with what the run's sandbox answered during that step (`executions.jsonl`,
`tirl.sandbox.record`). The interpreter tokens, tool calls, finish reasons and grades that come out,
and the GRPO / RLOO advantages recomputed from those grades (`rl_update.compute_advantages`, on the
CPU), must equal the recorded ones exactly. One line is printed: `identical`, or the first trajectory
and field that differ (exit 1). What it catches: a change in code extraction, output rendering or
tokenisation, the grader or the advantages since the run, or a damaged or edited record.

Not covered: PPO's advantages and GRPO's with a KL reward penalty (they need the critic's values or
the log-probs, which are not recorded; the verdict says they were not checked); the sampler itself
(log-probs are not recorded); runs whose code ran on Ray workers (`distributed.backend: ray`: the
executions were not recorded here). A non-deterministic program run more than once in one step is
answered in recorded order; with `rollout.continuous` or dynamic sampling the replay may ask in another
order, and then reports that difference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tirl.config import UserError
from tirl.generation.recorded import ReplayDiverged
from tirl.jsonl import AppendLog, dumps
from tirl.sandbox.record import EXEC_FILE, MissingExecution
from tirl.train.step_record import STEP_FILE, mask_from_runs, tool_calls_row


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Play a recorded training step again from its recorded tokens and executions (no "
                          "model, no sandbox), recompute its grades and advantages, and check they are "
                          "bit-identical to the run's. Exit 0 identical, 1 different, 2 unusable input.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a `tirl train` run directory")
    parser.add_argument("--step", type=int, required=True, help="the training step to replay (1 = the first)")


def run(args: argparse.Namespace) -> int:
    from tirl.commands import guarded

    def body() -> int:
        identical, line = replay_step(args.run_dir, args.step)
        print(line)
        return 0 if identical else 1

    return guarded("replay", body)


def replay_step(run_dir: str | Path, step: int) -> tuple[bool, str]:
    """(identical?, the one-line verdict) for `step` of `run_dir`."""
    from tirl.config import load_config
    from tirl.train.rl import RLConfig

    run_dir = Path(run_dir)
    cfg = load_config(RLConfig, run_dir / "config.yaml")
    if cfg.distributed.backend != "local":
        raise UserError(f"{run_dir} ran its code on {cfg.distributed.backend} workers, whose executions are "
                        "not recorded; tirl replay needs distributed.backend=local")
    row = _step_row(run_dir, step)
    try:
        trajs, grades = _play(run_dir, cfg, row)
    except ReplayDiverged as e:
        return False, f"step {step}: differs at {e}"
    except MissingExecution as e:
        return False, f"step {step}: differs: {e}"
    diff = first_difference(row["trajs"], trajs, grades)
    if diff:
        return False, f"step {step}: differs at {diff}"
    checked, adv_diff = _check_advantages(cfg, row, trajs, grades)
    if adv_diff:
        return False, f"step {step}: differs at {adv_diff}"
    adv = {True: "advantages", None: "advantages not recorded",
           False: "advantages not checked: they need the critic's values or the log-probs"}[checked]
    return True, f"step {step}: identical ({len(trajs)} trajectories: tokens, masks, tool calls, grades, {adv})"


def _step_row(run_dir: Path, step: int) -> dict[str, Any]:
    path = run_dir / STEP_FILE
    if not path.is_file():
        raise UserError(f"{path} not found: the run recorded no trajectories (a run from before tirl replay?)")
    every = AppendLog(path).rows  # a line torn by a kill is cut off, as when the run resumes
    rows = [r for r in every if r.get("step") == step]
    if not rows:
        steps = sorted({r.get("step") for r in every})
        raise UserError(f"{path} holds no step {step} (recorded: {steps[0]}..{steps[-1]})" if steps
                        else f"{path} holds no step")
    return rows[-1]


def _play(run_dir: Path, cfg: Any, row: dict[str, Any]) -> tuple[list, list]:
    from tirl.commands import loading
    from tirl.distributed.local import LocalBackend
    from tirl.generation.recorded import RecordedGenerator
    from tirl.models import load_tokenizer
    from tirl.rewards import Rewards
    from tirl.rollout.episodes import play
    from tirl.sandbox.record import ExecRecord, ReplaySandbox, exec_settings
    from tirl.train.setup import load_split, make_style, resolve_model
    from tirl.train.step_record import recorded_responses

    style = make_style(cfg.prompt)
    base = resolve_model(cfg.model, style, cfg.data, run_dir)
    with loading("tokenizer", base):
        tokenizer = load_tokenizer(base, gguf_file=cfg.model.gguf_file)
    problems = _problems(cfg, row["problems"], load_split)
    record_path = run_dir / EXEC_FILE
    if not record_path.is_file():
        raise UserError(f"{record_path} not found: the run recorded no executions")
    sandbox = ReplaySandbox(ExecRecord(record_path), exec_settings(cfg.sandbox), *row["exec"])
    generator = RecordedGenerator(recorded_responses(row), tokenizer)
    algo = cfg.algorithm
    trajs, grades, _ = play(generator, tokenizer, sandbox, problems, style, cfg.rollout, chat=cfg.prompt.chat,
                            exec_penalty=algo.exec_penalty, overlong_buffer=algo.overlong_buffer,
                            reward_fn=Rewards.of(cfg.reward),
                            backend=LocalBackend(generator, tokenizer, sandbox, style))
    return trajs, grades


def _problems(cfg: Any, ids: list[str], load_split: Any) -> list[Any]:
    by_id: dict[str, Any] = {}
    for p in load_split(cfg.data, "train"):
        by_id.setdefault(p.id, p)
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise UserError(f"problem {missing[0]!r} of the recorded step is not in the run's training data "
                        f"({cfg.data.train}) any more")
    return [by_id[i] for i in ids]


def _plain(x: Any) -> Any:
    """`x` as the record holds it (through JSON: tuples become lists, the NaN rule applies)."""
    return json.loads(dumps(x))


def first_difference(recorded: list[dict[str, Any]], trajs: list, grades: list) -> str | None:
    """`trajectory I: FIELD ...` of the first replayed trajectory that is not the recorded one."""
    if len(recorded) != len(trajs):
        return f"the number of trajectories: recorded {len(recorded)}, replayed {len(trajs)}"
    for i, (rec, t, g) in enumerate(zip(recorded, trajs, grades)):
        pairs = (("response_ids", rec["ids"], t.response_ids),
                 ("loss_mask", mask_from_runs(rec["mask"]), t.loss_mask),
                 ("finish_reason", rec["finish"], t.finish_reason),
                 ("tool_calls", rec["calls"], tool_calls_row(t)),
                 ("grade", rec["grade"], _grade_as_recorded(rec["grade"], g)))
        for field, want, got in pairs:
            got = _plain(got)
            if want != got:
                return f"trajectory {i}: {field} ({_where(want, got)})"
    return None


def _grade_as_recorded(recorded: dict[str, Any], g: Any) -> dict[str, Any]:
    """The replayed grade in the recorded one's fields: a run from before reward functions kept no values."""
    d = g.to_dict()
    if "rewards" not in recorded:
        d.pop("rewards", None)
    return d


def _where(want: Any, got: Any) -> str:
    """Where two recorded values first part: a list index or a dict key, with both values."""
    if isinstance(want, list) and isinstance(got, list):
        at = next((j for j, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
        if at == min(len(want), len(got)):
            return f"recorded {len(want)} long, replayed {len(got)}"
        return f"at {at}: recorded {want[at]!r}, replayed {got[at]!r}"
    if isinstance(want, dict) and isinstance(got, dict):
        key = next(k for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k))
        return f"{key}: recorded {want.get(key)!r}, replayed {got.get(key)!r}"
    return f"recorded {want!r}, replayed {got!r}"


def _check_advantages(cfg: Any, row: dict[str, Any], trajs: list, grades: list) -> tuple[bool | None, str | None]:
    """(checked: True, not recorded: None, not recomputable here: False; the first difference or None)."""
    import torch

    from tirl.train import rl_update as U
    from tirl.train.batch import make_batch

    recorded = [r["adv"] for r in row["trajs"]]
    if any(a is None for a in recorded):
        return None, None
    algo = cfg.algorithm
    if algo.name not in ("grpo", "rloo") or (algo.kl_coef > 0 and algo.kl_mode == "reward"):
        return False, None
    # What train_rl does with the step's grades, on the CPU.
    batch = make_batch(trajs, 0)
    U.compute_advantages(batch, torch.tensor([g.score for g in grades], dtype=torch.float32), algo, row["n"])
    replayed = batch.advantages.tolist()
    at = next((i for i, (a, b) in enumerate(zip(recorded, replayed)) if a != b), None)
    if at is None:
        return True, None
    return True, f"trajectory {at}: advantage (recorded {recorded[at]!r}, replayed {replayed[at]!r})"
