"""`tirl select limr RUN_DIR [RUN_DIR ...] --out FILE [--threshold T]`: keep the problems worth training on.

Reads each run's `rewards.jsonl` and `config.yaml`, scores every training problem with LIMR
(`tirl.limr`), and writes the problems scoring >= T to FILE in the training data's own format (the
original rows, untouched; for the built-in task, `{"id", "problem", "answer"}` rows, which
`data.train=FILE` loads), and every score to `limr_scores.jsonl` beside FILE. Runs given together must
have trained on the same data; their samples are pooled epoch by epoch.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from tirl.jsonl import dumps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Select training problems from earlier RL runs. limr: keep problems whose accuracy "
                          "curve follows the run's average learning curve (LIMR, as ToRL selects its data).")
    sub = parser.add_subparsers(dest="method", metavar="METHOD", required=True)
    p = sub.add_parser("limr", help="LIMR learning-impact selection from rewards.jsonl",
                       description="score = 1 - sum_k (acc_k - mean_k)^2 / sum_k (1 - mean_k)^2 over complete "
                       "epochs; problems scoring >= --threshold are written to --out")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="RL run directories (with rewards.jsonl)")
    p.add_argument("--out", required=True, help="JSONL file for the selected problems; limr_scores.jsonl "
                   "is written beside it")
    p.add_argument("--threshold", type=float, default=0.6, help="minimum score to keep a problem (default 0.6)")


def run(args: argparse.Namespace) -> int:
    from tirl.commands import guarded

    def body() -> int:
        kept, scored = select_limr([Path(d) for d in args.run_dirs], Path(args.out), args.threshold)
        print(f"tirl select: kept {kept} of {scored} scored problems (threshold {args.threshold}) -> {args.out}")
        return 0

    return guarded("select", body)


def select_limr(run_dirs: list[Path], out: Path, threshold: float) -> tuple[int, int]:
    """Write the selection and the scores; returns (kept, scored)."""
    from tirl.analysis.limr import REWARDS_FILE, LimrError, accuracy_table, complete_epochs, limr_scores, read_rewards

    data = _same_training_data(run_dirs)
    trained, source = _training_data(data)
    rows, epochs = [], None
    for d in run_dirs:
        mine = read_rewards(d / REWARDS_FILE)
        done = complete_epochs(mine, trained)
        epochs = done if epochs is None else min(epochs, done)
        rows += mine
    if not epochs:
        raise LimrError(f"no complete epoch in {', '.join(map(str, run_dirs))}: LIMR compares accuracy across "
                        "epochs; train on a smaller set or for more steps (prompts_per_step x steps > train size)")
    scores = limr_scores(accuracy_table(rows, epochs))
    chosen = {s.problem_id for s in scores if s.score >= threshold}
    missing = sorted(chosen - set(source))
    if missing:
        raise LimrError(f"{len(missing)} selected problem id(s) are not in the training data {data.train!r} "
                        f"(first: {missing[0]}); did the data change since the run?")
    _write_jsonl(out, [row for pid, row in source.items() if pid in chosen])
    _write_jsonl(out.with_name("limr_scores.jsonl"),
                 [{"problem_id": s.problem_id, "score": s.score, "accuracy": list(s.accuracy)} for s in scores])
    return len(chosen), len(scores)


def _same_training_data(run_dirs: list[Path]) -> Any:
    from tirl.config import UserError, load_config
    from tirl.train.rl import RLConfig

    configs = []
    for d in run_dirs:
        if not (d / "config.yaml").is_file():
            raise FileNotFoundError(f"{d}: not an RL run directory (no config.yaml)")
        configs.append(load_config(RLConfig, str(d / "config.yaml"), []).data)
    for d, c in zip(run_dirs[1:], configs[1:]):
        if _data_key(c) != _data_key(configs[0]):
            raise UserError(f"{d} trained on other data than {run_dirs[0]}; select from runs on the same data")
    return configs[0]


def _data_key(data: Any) -> tuple:
    return (data.train, data.id_field, data.task_level, tuple(data.task_kinds), data.train_size, data.seed)


def _training_data(data: Any) -> tuple[int, dict[str, dict[str, Any]]]:
    """(how many problems the run trained on, every source row by problem id). The count is what an
    epoch covered: with `data.skip_invalid` the file holds rows the run never drew (the trainer cuts
    epochs by the loaded problems), and counting them would leave the last epoch forever incomplete."""
    from tirl.train.setup import BUILTIN, load_split

    problems = load_split(data, "train")
    if data.train == BUILTIN:
        return len(problems), {p.id: {"id": p.id, "problem": p.problem, "answer": p.answer} for p in problems}
    from tirl.data.problems import raw_rows_by_id

    return len(problems), raw_rows_by_id(data.train, id_field=data.id_field)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """All or nothing: a reader never sees half a selection."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(dumps(r) + "\n" for r in rows)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
