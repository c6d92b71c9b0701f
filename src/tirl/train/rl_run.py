"""An RL run's bookkeeping around the loop: resuming from a checkpoint, saving one, and what each step
writes (metrics.jsonl through the logger, samples.jsonl, trajectories.jsonl, rewards.jsonl).

Exact resume: checkpoints hold weights, optimizer, scheduler, the adaptive KL coefficient and the data
position of the last batch trained (`ScoredBatch.data_position`, not the stream's: a producer running
ahead has drawn more), so 2 steps + resume + 2 steps equals 4 steps (tested); the logs are cut back to
the checkpoint's step.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tirl.analysis.limr import REWARDS_FILE, reward_rows
from tirl.jsonl import append_rows, truncate_after_step
from tirl.trained_settings import settings_of
from tirl.train.batch import RLBatch
from tirl.train.checkpoint import load_state, save_checkpoint
from tirl.train.common import ProblemStream
from tirl.train.learner import Learner
from tirl.train.producer import ScoredBatch
from tirl.train.step_record import STEP_FILE, record_step, write_samples


def restore(ckpt: Path | None, run_dir: Path, learner: Learner, stream: ProblemStream, logger: Any) -> int:
    """The step to continue after (0 for a fresh run): the learner's and the stream's state restored, the
    logs cut back to it."""
    if ckpt is None:
        return 0
    state = load_state(ckpt)
    start = state["step"]
    learner.load_state(state, version=start)
    stream.position = state["data_position"]
    logger.truncate_after(start)
    for name in ("samples.jsonl", REWARDS_FILE, STEP_FILE):
        truncate_after_step(run_dir / name, start)
    return start


def checkpoint(run_dir: Path, step: int, learner: Learner, data_position: int, tokenizer: Any, cfg: Any) -> None:
    models = {"policy": learner.policy, **({"critic": learner.critic} if learner.critic is not None else {})}
    state = {**learner.state(), "data_position": data_position}
    save_checkpoint(run_dir, step, models, state, tokenizer=tokenizer, keep=cfg.trainer.keep_checkpoints,
                    settings=settings_of(cfg.prompt, cfg.rollout))


def step_metrics(scored: ScoredBatch, batch: RLBatch, rows: list[int], learner: Learner, t_train: float,
                 t0: float, full_isolation: bool) -> dict[str, float]:
    """The step's own figures besides the rollout's and the update's: rows, lr, times, throughput."""
    m = scored.metrics
    tokens = float(batch.attention_mask.sum())
    return {
        "train/rows": float(len(rows)), "train/lr": learner.sched.get_last_lr()[0],
        "time/rollout_s": scored.rollout_s, "time/generation_s": m.get("rollout/gen_time_s", 0.0),
        "time/sandbox_s": m.get("rollout/exec_time_s", 0.0), "time/train_s": t_train,
        "time/step_s": time.perf_counter() - t0,
        "throughput/tokens_per_s": tokens / max(time.perf_counter() - t0, 1e-9),
        "sandbox/full_isolation": float(full_isolation),
    }


def write_step(run_dir: Path, step: int, scored: ScoredBatch, batch: RLBatch, n: int) -> None:
    """A few trajectories (samples.jsonl), every one with its grade and advantage (trajectories.jsonl, for
    `tirl replay`), and each group's rewards (rewards.jsonl, for LIMR)."""
    write_samples(run_dir, step, scored.trajectories, scored.grades)
    record_step(run_dir, step, scored.problems, scored.trajectories, scored.grades, batch.advantages,
                scored.exec_span)
    append_rows(run_dir / REWARDS_FILE, reward_rows(
        [p.id for p, _ in scored.played], [g.correct for _, gs in scored.played for g in gs], n, step,
        scored.epochs))
