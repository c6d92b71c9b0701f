"""`tirl train`: RL with interleaved code execution (GRPO as in ToRL, PPO as in ReTool, RLOO).

The loop is two parts and one hand-off, wired in `train_rl`, which reads top to bottom like a recipe:
a producer (`tirl.train.producer`) draws a step's problems, plays them with the sandbox on a rollout
backend and grades them into a `ScoredBatch`, every trajectory stamped with the weight version that
sampled it; the learner (`tirl.train.learner`) takes the batch, keeps what is fresh enough
(`tirl.train.staleness`), scores old log-probs, computes advantages, updates, and the new weights are
published to the producer with the next version. Around them: resume, checkpoints and each step's
files (`tirl.train.rl_run`), the held-out evaluation (`tirl.train.rl_eval`), settings
(`tirl.train.rl_config`), models (`tirl.train.rl_models`).

Where rollouts run (`distributed:`, `tirl.distributed`): by default in this process with the training
model itself, so rollout and recomputed log-probs differ only by numerics; with `backend: ray` on
rollout-worker actors (copies of the policy synced after every update, or inference servers), in
`rollout.shards` shards whose results do not depend on where they run. `trainer_workers` > 1 runs the
policy update data-parallel on this machine (`rl_ranks.py`). DAPO's dynamic sampling and overlong
handling are options (`tirl.train.dapo`). Not covered: a trainer group across machines.
"""

from __future__ import annotations

import time
from contextlib import closing, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tirl.commands import check_model_source, loading
from tirl.config import check_resume, save_config
from tirl.jsonl import write_json
from tirl.progress import progress
from tirl.resources import stage_peak
from tirl.rewards import Rewards
from tirl.train import lora
from tirl.train.checkpoint import latest_checkpoint, resume_point
from tirl.train.common import ProblemStream, set_threads
from tirl.train.feed import open_feed
from tirl.train.learner import Learner
from tirl.train.logger import MetricsLogger
from tirl.train.producer import Producer
from tirl.train.rl_config import RLConfig, TrainerConfig, optimizer_steps, validate
from tirl.train.rl_eval import evaluate
from tirl.train.rl_models import load_critic as _load_critic, load_models, load_policy as _load_policy
from tirl.train.rl_run import checkpoint, restore, step_metrics, write_step
from tirl.train.setup import load_split, make_style, resolve_model

__all__ = ["RLConfig", "TrainerConfig", "validate", "train_rl", "rollout_backend", "evaluate"]


def rollout_backend(cfg: RLConfig, generator: Any, tokenizer: Any, sandbox: Any, style: Any, model_path: str,
                    run_dir: Path) -> Any:
    """Who plays a step's shards: this process (`local`, the trainer's own model) or Ray workers."""
    if cfg.distributed.backend == "local":
        from tirl.distributed.local import LocalBackend

        return LocalBackend(generator, tokenizer, sandbox, style)
    from tirl.distributed.ray_backend import RayBackend
    from tirl.distributed.worker import WorkerSpec

    d = cfg.distributed
    spec = WorkerSpec(model_path=model_path, style=style, gguf_file=cfg.model.gguf_file, dtype=cfg.model.dtype,
                      threads=cfg.trainer.threads or int(d.worker_cpus), generator=d.generator,
                      server_model=d.server_model, sandbox=cfg.sandbox,
                      device="cuda" if d.worker_gpus and d.generator == "hf" else "cpu")
    return RayBackend(d, spec, sync_dir=str(run_dir / "weight_sync"))


def train_rl(cfg: RLConfig, run_dir: str | Path, resume: bool = False, force: bool = False,
             reward_callables: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train and write `summary.json` (with the run's peak resident memory, `memory`); `reward_callables`:
    the functions `reward.functions` names `python:NAME` (from `tirl.train`)."""
    with stage_peak() as mem:
        summary = _train_rl(cfg, run_dir, resume, force, reward_callables)
    summary["memory"] = mem.as_dict()
    write_json(Path(run_dir) / "summary.json", summary)
    return summary


def _train_rl(cfg: RLConfig, run_dir: str | Path, resume: bool, force: bool,
              reward_callables: dict[str, Any] | None) -> dict[str, Any]:
    from tirl.generation.hf import HFGenerator
    from tirl.models import load_tokenizer, resolve_device
    from tirl.sandbox.isolation import summarise
    from tirl.sandbox.record import open_recorded

    validate(cfg)
    device = resolve_device(cfg.trainer.device)
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    tc = cfg.trainer
    set_threads(tc.threads)
    ckpt = resume_point(run_dir, resume)
    if ckpt is not None:
        check_resume(run_dir, cfg, force)
    style = make_style(cfg.prompt)
    # Everything that can be refused is read before the run directory is written.
    train_items, test_items = load_split(cfg.data, "train"), load_split(cfg.data, "test")[: tc.eval_size]
    check_model_source(cfg.model.path)
    check_model_source(cfg.model.critic_path, "model.critic_path")
    reward_fn = Rewards.of(cfg.reward, reward_callables)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")

    base = resolve_model(cfg.model, style, cfg.data, run_dir)
    with loading("model", base):
        tokenizer = load_tokenizer(base, gguf_file=cfg.model.gguf_file)
        torch.manual_seed(tc.seed)
        models = load_models(cfg, base, ckpt, device)
    group = trainer_group(cfg, base, ckpt)
    learner = Learner(cfg, models, tokenizer.pad_token_id or 0, device, group)
    logger = MetricsLogger(run_dir, tc.log, config=asdict(cfg), label="train", total_steps=tc.steps)
    stream = ProblemStream(train_items, seed=tc.seed)
    start = restore(ckpt, run_dir, learner, stream, logger)

    summary: dict[str, Any] = {}
    policy = learner.policy
    policy.eval()
    generator = HFGenerator(policy, tokenizer, precision=tc.precision)
    with (open_recorded(cfg.sandbox, cfg.rollout.exec_cache, run_dir, cfg.rollout.exec_record) as sandbox,
          closing(rollout_backend(cfg, generator, tokenizer, sandbox, style, base, run_dir)) as backend,
          closing(group) if group is not None else nullcontext() as _,
          progress("train", tc.steps) as bar):
        summary["sandbox"] = summarise(sandbox.isolation)
        full_isolation = summary["sandbox"]["level"] == "full"
        backend.sync_weights(policy, version=start)
        bar.update(0, completed=start)
        if start == 0 and test_items:
            summary["eval_start"] = evaluate(generator, tokenizer, sandbox, test_items, cfg, reward_fn)
        producer = Producer(cfg, stream, backend, generator, tokenizer, sandbox, style, reward_fn)
        # in turn, or a producer thread up to trainer.max_staleness updates ahead
        with closing(open_feed(cfg, producer, backend, policy, start)) as feed:
            for step in range(start + 1, tc.steps + 1):
                t0 = time.perf_counter()
                scored = feed.next(step)
                t1 = time.perf_counter()
                with feed.learning():
                    batch, rows, metrics = learner.learn(scored, step)
                    t_train = time.perf_counter() - t1
                    metrics.update(feed.publish(policy, version=step))  # the producer may now play with these
                metrics.update(step_metrics(scored, batch, rows, learner, t_train, t0, full_isolation))
                if step == tc.steps or (tc.eval_every and step % tc.eval_every == 0):
                    with feed.paused():
                        held_out = evaluate(generator, tokenizer, sandbox, test_items, cfg, reward_fn)
                    metrics.update(held_out)
                    if step == tc.steps:
                        summary["eval_end"] = held_out
                logger.log(step, metrics)
                write_step(run_dir, step, scored, batch, cfg.rollout.n)
                if (tc.save_every and step % tc.save_every == 0) or step == tc.steps:
                    checkpoint(run_dir, step, learner, scored.data_position, tokenizer, cfg)
                bar.update(bar.task_ids[0], completed=step,
                           info=f"reward {metrics['reward/mean']:+.2f}  code {metrics.get('tool/code_ratio', 0):.2f}")
        summary["distributed"] = backend.describe()
    logger.close()
    if cfg.model.lora.r > 0 and cfg.model.lora.merge:
        summary["merged_model"] = str(lora.save_merged(policy, tokenizer, run_dir / "merged"))
    summary.update(steps=tc.steps, wall_s=time.perf_counter() - t_start, run_dir=str(run_dir),
                   checkpoint=str(latest_checkpoint(run_dir)))
    return summary


def trainer_group(cfg: RLConfig, base: str, ckpt: Path | None) -> Any:
    """The data-parallel trainer ranks (`distributed.trainer_workers` > 1), or None."""
    if cfg.distributed.trainer_workers <= 1:
        return None
    from tirl.train.rl_ranks import TrainerGroup

    return TrainerGroup(cfg.distributed.trainer_workers, cfg, str(ckpt / "policy") if ckpt else base,
                        str(ckpt) if ckpt else None, optimizer_steps(cfg), _load_policy)
