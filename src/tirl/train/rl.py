"""`tirl train`: RL with interleaved code execution (GRPO as in ToRL, PPO as in ReTool, RLOO).

One loop, read top to bottom in `train_rl`: sample prompts -> rollout with the sandbox -> grade ->
old log-probs (recomputed by the training model; the gap to the rollout's is logged) -> advantages
-> `ppo_epochs` passes of mini-batch updates with exact gradient accumulation and clipping -> log ->
checkpoint -> held-out evaluation.

Exact resume: the rollout seed of step s is derived from (seed, s), the problem order from
(seed, epoch), and checkpoints hold weights, optimizer, scheduler and RNG states, so 2 steps + resume
+ 2 steps equals 4 steps (tested).

Where rollouts run (`distributed:`, `tirl.distributed`): by default in this process with the training
model itself, so rollout and recomputed log-probs differ only by numerics; with `backend: ray` on
rollout-worker actors (copies of the policy synced after every update, or inference servers), in
`rollout.shards` shards whose results do not depend on where they run. `trainer_workers` > 1 runs the
policy update data-parallel on this machine (`rl_ranks.py`). DAPO's dynamic sampling and overlong
handling are options (`tirl.train.dapo`). Not covered: async rollouts overlapping training, a trainer
group across machines.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import closing, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tirl.analysis.limr import REWARDS_FILE, reward_rows
from tirl.commands import check_model_source, loading
from tirl.config import check_resume, save_config
from tirl.custom_reward import RewardConfig, UserReward
from tirl.distributed.config import DistributedConfig
from tirl.rollout import RolloutConfig, check_prompt_and_rollout
from tirl.rollout.episodes import play
from tirl.rollout.faults import check_weight_versions, trainable
from tirl.sandbox import SandboxConfig, SandboxLike
from tirl.trained_settings import settings_of
from tirl import algorithms as A
from tirl.train import dapo
from tirl.train import lora
from tirl.train import rl_update as U
from tirl.train.batch import make_batch
from tirl.train.checkpoint import latest_checkpoint, load_state, resume_point, save_checkpoint
from tirl.train.common import (OptimConfig, ProblemStream, build_optimizer, check_device_and_precision, grad_scaler,
                               set_threads)
from tirl.progress import progress
from tirl.jsonl import append_rows, truncate_after_step, write_json
from tirl.train.logger import LogConfig, MetricsLogger
from tirl.train.step_record import STEP_FILE, record_step, write_samples
from tirl.train.setup import DataConfig, ModelConfig, PromptConfig, load_split, make_style, resolve_model


log = logging.getLogger("tirl.train")


@dataclass
class TrainerConfig:
    steps: int = 20
    prompts_per_step: int = 4
    """Prompts per step; the batch is prompts_per_step x rollout.n trajectories (ToRL: 128 x 16)."""
    mini_batch_size: int = 0
    """Trajectories per optimizer step; 0 = the whole batch (one step per epoch)."""
    micro_batch_size: int = 8
    """Trajectories per forward/backward; gradients accumulate exactly up to the mini-batch."""
    ppo_epochs: int = 1
    optim: OptimConfig = field(default_factory=OptimConfig)
    save_every: int = 10
    """Checkpoint every N steps and at the last step; 0 = only at the last step."""
    keep_checkpoints: int = 2
    eval_every: int = 0
    """Held-out evaluation every N steps; 0 = at the start and the end only."""
    eval_size: int = 50
    eval_temperature: float = 0.0
    """0 = greedy; report sampled figures with a positive value (greedy and sampled can differ a lot)."""
    seed: int = 0
    threads: int = 1
    """Torch threads; 1 suits tiny models on small CPUs, 0 keeps torch's default."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N; auto = the first GPU when there is one. Policy, reference and critic
    live there; the sandbox never does."""
    precision: str = "fp32"
    """fp32 | bf16 | fp16: autocast for rollout and update forwards (CPU too for bf16); weights,
    gradients and optimizer state stay float32."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory for long sequences, ~30% more update time."""
    share_prompt: bool = True
    """In the update and the scoring passes, run each prompt once for all the samples that share it (a
    GRPO group) and only their own tokens on top: the same log-probs and gradients (tested), less work
    the longer the prompt. Off with gradient_checkpointing (it drops the cache this needs); the critic
    always runs whole rows."""
    log: LogConfig = field(default_factory=LogConfig)
    """Where metrics go besides metrics.jsonl (TensorBoard, W&B, trackio) and the plain progress line."""
    warn_idle_steps: int = 5
    """Warn (once per idle stretch) after this many consecutive steps without a policy update."""


@dataclass
class RLConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(n=4, max_new_tokens=128))
    algorithm: U.AlgoConfig = field(default_factory=U.AlgoConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    # Training refuses a partial sandbox unless the user opts in with sandbox.isolation=auto.
    sandbox: SandboxConfig = field(default_factory=lambda: SandboxConfig(isolation="strict"))
    reward: RewardConfig = field(default_factory=RewardConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


def validate(cfg: RLConfig) -> None:
    """Refuse a config that cannot work before any model loads."""
    batch = cfg.trainer.prompts_per_step * cfg.rollout.n
    mini = cfg.trainer.mini_batch_size or batch
    cfg.algorithm.validate(cfg.rollout.n, batch, mini)
    check_prompt_and_rollout(cfg.prompt, cfg.rollout)
    cfg.trainer.optim.validate("trainer.optim")
    cfg.reward.validate()
    if cfg.algorithm.overlong_buffer >= cfg.rollout.max_new_tokens:
        raise ValueError(f"algorithm.overlong_buffer ({cfg.algorithm.overlong_buffer}) must be below "
                         f"rollout.max_new_tokens ({cfg.rollout.max_new_tokens})")
    if cfg.trainer.steps < 1 or cfg.trainer.prompts_per_step < 1 or cfg.trainer.micro_batch_size < 1:
        raise ValueError("trainer.steps, trainer.prompts_per_step and trainer.micro_batch_size must be >= 1")
    if cfg.trainer.eval_temperature < 0:
        raise ValueError(f"trainer.eval_temperature must be >= 0 (0 = greedy), got {cfg.trainer.eval_temperature}")
    if not 1 <= cfg.rollout.shards <= cfg.trainer.prompts_per_step:
        raise ValueError(f"rollout.shards must be between 1 and trainer.prompts_per_step "
                         f"({cfg.trainer.prompts_per_step}): a shard holds whole prompt groups")
    if cfg.rollout.exec_cache != "off" and cfg.distributed.backend != "local":
        raise ValueError("rollout.exec_cache=reuse|replay needs distributed.backend=local (ray runs code on workers)")
    if cfg.distributed.trainer_workers > 1 and cfg.algorithm.name == "ppo":
        raise ValueError("distributed.trainer_workers > 1 covers the policy update only; PPO's critic needs 1")
    cfg.distributed.validate()
    check_device_and_precision(cfg.trainer.device, cfg.trainer.precision)
    lora.check(cfg.model.lora)


def _load_policy(path: str, cfg: RLConfig, gguf_file: str | None = None) -> Any:
    from tirl.models import load_model

    model = without_dropout(load_model(path, gguf_file=gguf_file, dtype=cfg.model.dtype, device=cfg.trainer.device))
    if cfg.trainer.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _load_critic(path: str, device: Any = None) -> Any:
    from transformers import AutoModelForTokenClassification

    from tirl.models import resolve_device

    # A token-classification head with one label is a value head on a copy of the policy.
    return without_dropout(AutoModelForTokenClassification.from_pretrained(path, num_labels=1).to(resolve_device(device)))


def without_dropout(model: Any) -> Any:
    """Every dropout at 0, as verl loads actor and critic. Updates run in train mode while old
    log-probs and values are scored in eval mode: with dropout on (Qwen2's token-classification head
    adds Dropout(0.1), peft's `model.lora.dropout` adds one per adapter) the ratio and the value clip
    would compare noisy numbers with clean ones."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for key in ("attention_dropout", "hidden_dropout", "classifier_dropout", "hidden_dropout_prob",
                "attention_probs_dropout_prob"):
        if getattr(model.config, key, None):
            setattr(model.config, key, 0.0)
    return model


def eval_config(cfg: RLConfig) -> Any:
    """The held-out evaluation's settings: the run's own prompt and tool loop, one sample at
    `trainer.eval_temperature` (what `tirl eval --model CHECKPOINT` uses by default, via tirl.json)."""
    from tirl.eval import EvalConfig

    return EvalConfig(prompt=cfg.prompt, rollout=dataclasses.replace(
        cfg.rollout, n=1, temperature=cfg.trainer.eval_temperature, seed=cfg.trainer.seed),
        batch_size=max(1, cfg.trainer.eval_size))


EVAL_KEYS = {"avg@1": "eval/accuracy", "reward_mean": "eval/reward_mean", "tool/code_ratio": "eval/code_ratio",
             "tool/pass_rate": "eval/pass_rate", "tool/calls_mean": "eval/calls_mean",
             "response/length_mean": "eval/length_mean"}


def evaluate(generator: Any, tokenizer: Any, sandbox: SandboxLike, items: list, cfg: RLConfig) -> dict:
    """Held-out figures through `tirl.eval.evaluate`, the one evaluation path (nothing written)."""
    from tirl.eval import evaluate as run_eval, split_by_source

    if not items:
        return {}
    groups = split_by_source("heldout", items)
    summary = run_eval(generator, tokenizer, sandbox, groups, eval_config(cfg), None, show=False)
    overall = summary["overall"]
    out = {new: overall[old] for old, new in EVAL_KEYS.items() if old in overall}
    if len(groups) > 1:  # verl's data_source: accuracy per source as well
        out.update({f"eval/{name.split('/', 1)[-1]}/accuracy": s["avg@1"]
                    for name, s in summary["benchmarks"].items() if "avg@1" in s})
    return out


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


def train_rl(cfg: RLConfig, run_dir: str | Path, resume: bool = False, force: bool = False) -> dict[str, Any]:
    from tirl.generation.hf import HFGenerator
    from tirl.models import load_tokenizer, resolve_device
    from tirl.sandbox.isolation import summarise
    from tirl.sandbox.record import open_recorded

    validate(cfg)
    device = resolve_device(cfg.trainer.device)
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    tc, algo = cfg.trainer, cfg.algorithm
    set_threads(tc.threads)
    ckpt = resume_point(run_dir, resume)
    if ckpt is not None:
        check_resume(run_dir, cfg, force)
    style = make_style(cfg.prompt)
    # Everything that can be refused is read before the run directory is written.
    train_items, test_items = load_split(cfg.data, "train"), load_split(cfg.data, "test")[: tc.eval_size]
    check_model_source(cfg.model.path)
    check_model_source(cfg.model.critic_path, "model.critic_path")
    reward_fn = UserReward(cfg.reward) if cfg.reward.function else None
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")

    base = resolve_model(cfg.model, style, cfg.data, run_dir)
    with loading("model", base):
        tokenizer = load_tokenizer(base, gguf_file=cfg.model.gguf_file)
        torch.manual_seed(tc.seed)
        # A checkpoint is a plain float directory (or LoRA adapters over the base); only the base may be GGUF.
        lora_on = cfg.model.lora.r > 0
        if ckpt and not lora_on:
            policy = _load_policy(str(ckpt / "policy"), cfg)
        else:
            # after the adapters exist: peft's LoRA dropout is a Dropout of its own
            policy = without_dropout(lora.apply(_load_policy(base, cfg, cfg.model.gguf_file), cfg.model.lora,
                                                adapter_dir=ckpt / "policy" if ckpt else None))
        critic = _load_critic(str(ckpt / "critic") if ckpt else (cfg.model.critic_path or base),
                              device) if algo.name == "ppo" else None
        # With LoRA the frozen base is the reference (adapters off): no second copy.
        ref = _load_policy(base, cfg, cfg.model.gguf_file) if algo.kl_coef > 0 and not lora_on else None
    if ref is not None:
        ref.requires_grad_(False)

    batch_size = tc.prompts_per_step * cfg.rollout.n
    mini = tc.mini_batch_size or batch_size
    steps_per_update = tc.ppo_epochs * -(-batch_size // mini)
    fused_old = U.one_step_per_batch(algo, tc.ppo_epochs, mini, batch_size)
    scaler = grad_scaler(tc.precision, device)
    opt, sched = build_optimizer([p for p in policy.parameters() if p.requires_grad], tc.optim,
                                 tc.steps * steps_per_update)
    c_opt = c_sched = None
    if critic is not None:
        c_cfg = OptimConfig(**{**tc.optim.__dict__, "lr": algo.critic_lr})
        c_opt, c_sched = build_optimizer(critic.parameters(), c_cfg, tc.steps * steps_per_update)

    logger = MetricsLogger(run_dir, tc.log, config=asdict(cfg), label="train", total_steps=tc.steps)
    stream = ProblemStream(train_items, seed=tc.seed)
    start = 0
    kl_coef = algo.kl_coef  # moves each step when algorithm.kl_target is set (adaptive controller)
    if ckpt is not None:
        state = load_state(ckpt)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if critic is not None:
            c_opt.load_state_dict(state["critic_optimizer"])
            c_sched.load_state_dict(state["critic_scheduler"])
        stream.position = state["data_position"]
        start = state["step"]
        kl_coef = state.get("kl_coef", algo.kl_coef)
        logger.truncate_after(start)
        for name in ("samples.jsonl", REWARDS_FILE, STEP_FILE):
            truncate_after_step(run_dir / name, start)

    def checkpoint(step: int) -> None:
        models = {"policy": policy, **({"critic": critic} if critic is not None else {})}
        state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "data_position": stream.position,
                 "kl_coef": kl_coef}
        if critic is not None:
            state.update(critic_optimizer=c_opt.state_dict(), critic_scheduler=c_sched.state_dict())
        save_checkpoint(run_dir, step, models, state, tokenizer=tokenizer, keep=tc.keep_checkpoints,
                        settings=settings_of(cfg.prompt, cfg.rollout))

    group = None
    if cfg.distributed.trainer_workers > 1:
        from tirl.train.rl_ranks import TrainerGroup

        group = TrainerGroup(cfg.distributed.trainer_workers, cfg, str(ckpt / "policy") if ckpt else base,
                             str(ckpt) if ckpt else None, tc.steps * steps_per_update, _load_policy)
        fused_old = False  # the ranks' update scores the old log-probs itself: keep the separate pass

    summary: dict[str, Any] = {}
    idle = 0  # consecutive steps without a policy update
    policy.eval()
    generator = HFGenerator(policy, tokenizer, precision=tc.precision)
    share = tc.share_prompt and not tc.gradient_checkpointing  # checkpointing drops the cache sharing needs
    with (open_recorded(cfg.sandbox, cfg.rollout.exec_cache, run_dir, cfg.rollout.exec_record) as sandbox,
          closing(rollout_backend(cfg, generator, tokenizer, sandbox, style, base, run_dir)) as backend,
          closing(group) if group is not None else nullcontext() as _,
          progress("train", tc.steps) as bar):
        summary["sandbox"] = summarise(sandbox.isolation)
        backend.sync_weights(policy, version=start)
        bar.update(0, completed=start)
        if start == 0 and test_items:
            summary["eval_start"] = evaluate(generator, tokenizer, sandbox, test_items, cfg)
        for step in range(start + 1, tc.steps + 1):
            t0 = time.perf_counter()
            exec_start = sandbox.position  # this step's lines of executions.jsonl start here
            epochs: list[int] = []  # epoch of every problem drawn this step, in order (for rewards.jsonl)

            def take(k: int) -> list:
                first = stream.position
                epochs.extend((first + i) // len(train_items) for i in range(k))
                return stream.take(k)

            def play_round(problems: list, round_: int) -> tuple:
                return play(generator, tokenizer, sandbox, problems, style, cfg.rollout, chat=cfg.prompt.chat,
                            exec_penalty=algo.exec_penalty, reward_fn=reward_fn, overlong_buffer=algo.overlong_buffer,
                            seed=tc.seed * 1_000_003 + step * 1009 + round_ * 7_919_017, backend=backend)

            if algo.dynamic_sampling:
                problems, trajs, grades, metrics, played = dapo.dynamic_sample(
                    play_round, take, tc.prompts_per_step, cfg.rollout.n, algo.dynamic_sampling_max_rounds,
                    algo.dynamic_sampling_metric)
            else:
                problems = take(tc.prompts_per_step)
                trajs, grades, metrics = play_round(problems, 0)
                played = [(p, grades[i * cfg.rollout.n:(i + 1) * cfg.rollout.n]) for i, p in enumerate(problems)]
            t_rollout = time.perf_counter() - t0
            check_weight_versions(trajs, expected=step - 1)  # the weights synced after the last update
            valid, infra = trainable(trajs, cfg.rollout.n, min_valid=1 if algo.name == "ppo" else 2)
            metrics.update(infra)

            t1 = time.perf_counter()
            batch = make_batch(trajs, tokenizer.pad_token_id or 0, device)
            if not fused_old:
                batch.old_logprobs, batch.old_entropy = U.score_batch(
                    policy, batch, cfg.rollout.temperature, tc.micro_batch_size, tc.precision, entropy=True,
                    share_prompt=share)
                metrics.update(U.logprob_mismatch(batch))
            if algo.kl_coef > 0:
                with lora.reference_view(policy, ref) as ref_model:
                    batch.ref_logprobs, _ = U.score_batch(ref_model, batch, cfg.rollout.temperature,
                                                          tc.micro_batch_size, tc.precision, share_prompt=share)
            if critic is not None:
                batch.old_values = U.score_values(critic, batch, tc.micro_batch_size, tc.precision)
            rewards = torch.tensor([g.score for g in grades], dtype=torch.float32)
            step_algo = dataclasses.replace(algo, kl_coef=kl_coef) if algo.kl_target else algo
            metrics.update(U.compute_advantages(batch, rewards, step_algo, cfg.rollout.n,
                                                None if all(valid) else torch.tensor(valid)))
            scored = [s if v else None for s, v in zip(rewards.tolist(), valid)]  # infra-failed: no score, no loss
            rows = [r for r in U.rows_to_train(batch, step_algo, scored, cfg.rollout.n) if valid[r]]
            if algo.overlong_filter:
                rows = [r for r in rows if trajs[r].finish_reason != "length"]
                metrics["dapo/overlong_filtered"] = float(sum(t.finish_reason == "length" for t in trajs))
            gen = torch.Generator().manual_seed(tc.seed * 7919 + step)
            common = dict(mini_batch_size=mini, micro_batch_size=tc.micro_batch_size, epochs=tc.ppo_epochs,
                          max_grad_norm=tc.optim.max_grad_norm, seq_len=cfg.rollout.max_new_tokens, generator=gen,
                          precision=tc.precision, scaler=scaler)
            if critic is not None:
                metrics.update(U.critic_update(critic, c_opt, c_sched, batch, rows, algo, **common))
            warming_up = critic is not None and step <= algo.critic_warmup_steps  # PPO's critic alone learns
            if rows and not warming_up:
                if group is not None:  # the same update, on every trainer rank
                    loop = {k: v for k, v in common.items() if k != "generator"}
                    metrics.update(group.policy_update(policy, opt, sched, batch, rows, step_algo, tc.seed * 7919 + step,
                                                       temperature=cfg.rollout.temperature, share_prompt=share,
                                                       **loop))
                else:
                    metrics.update(U.policy_update(policy, opt, sched, batch, rows, step_algo, old_from_update=fused_old,
                                                   temperature=cfg.rollout.temperature, share_prompt=share, **common))
                    if fused_old:
                        metrics.update(U.logprob_mismatch(batch, U.rows_to_run(batch, rows, step_algo)))
                idle = 0
            else:
                if fused_old:  # no update took them: score the old log-probs (and entropy) for the metrics
                    batch.old_logprobs, batch.old_entropy = U.score_batch(
                        policy, batch, cfg.rollout.temperature, tc.micro_batch_size, tc.precision, entropy=True,
                        share_prompt=share)
                    metrics.update(U.logprob_mismatch(batch))
                metrics.update(U.no_update_metrics(batch, step_algo))
                idle += not warming_up
                if idle == tc.warn_idle_steps:
                    log.warning("no policy update for %d steps: every group's rewards were all equal (all right "
                                "or all wrong). Raise rollout.n or temperature, or use easier/harder problems.",
                                idle)
            if algo.kl_target:
                observed = U.observed_kl(batch, algo.kl_kind)
                metrics.update({"kl/coef": kl_coef, "kl/observed": observed})
                kl_coef = A.adaptive_kl_coef(kl_coef, observed, algo.kl_target, len(trajs), algo.kl_horizon)
            t_train = time.perf_counter() - t1
            metrics.update(backend.sync_weights(policy, version=step))  # workers now hold this step's weights

            tokens = float(batch.attention_mask.sum())
            metrics.update({
                "train/rows": float(len(rows)), "train/lr": sched.get_last_lr()[0],
                "time/rollout_s": t_rollout, "time/generation_s": metrics.get("rollout/gen_time_s", 0.0),
                "time/sandbox_s": metrics.get("rollout/exec_time_s", 0.0), "time/train_s": t_train,
                "time/step_s": time.perf_counter() - t0,
                "throughput/tokens_per_s": tokens / max(time.perf_counter() - t0, 1e-9),
                "sandbox/full_isolation": float(summary["sandbox"]["level"] == "full"),
            })
            if tc.eval_every and step % tc.eval_every == 0 and step != tc.steps:
                metrics.update(evaluate(generator, tokenizer, sandbox, test_items, cfg))
            if step == tc.steps:
                final = evaluate(generator, tokenizer, sandbox, test_items, cfg)
                metrics.update(final)
                summary["eval_end"] = final
            logger.log(step, metrics)
            write_samples(run_dir, step, trajs, grades)
            record_step(run_dir, step, problems, trajs, grades, batch.advantages, (exec_start, sandbox.position))
            append_rows(run_dir / REWARDS_FILE, reward_rows(
                [p.id for p, _ in played], [g.correct for _, gs in played for g in gs], cfg.rollout.n, step,
                epochs))
            if (tc.save_every and step % tc.save_every == 0) or step == tc.steps:
                checkpoint(step)
            bar.update(bar.task_ids[0], completed=step,
                       info=f"reward {metrics['reward/mean']:+.2f}  code {metrics.get('tool/code_ratio', 0):.2f}")
        summary["distributed"] = backend.describe()
    logger.close()
    if lora_on and cfg.model.lora.merge:
        summary["merged_model"] = str(lora.save_merged(policy, tokenizer, run_dir / "merged"))
    summary.update(steps=tc.steps, wall_s=time.perf_counter() - t_start, run_dir=str(run_dir),
                   checkpoint=str(latest_checkpoint(run_dir)))
    write_json(run_dir / "summary.json", summary)
    return summary

