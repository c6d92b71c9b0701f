"""`tirl train`'s settings: `RLConfig` (every section of an RL run) and `TrainerConfig` (the loop's own),
and `validate`, which refuses a config that cannot work before any model loads or any file is written."""

from __future__ import annotations

from dataclasses import dataclass, field

from tirl.rewards import RewardConfig
from tirl.distributed.config import DistributedConfig
from tirl.rollout import RolloutConfig, check_prompt_and_rollout
from tirl.sandbox import SandboxConfig
from tirl.train import lora
from tirl.train import rl_update as U
from tirl.train.common import OptimConfig, check_device_and_precision
from tirl.train.logger import LogConfig
from tirl.train.setup import DataConfig, ModelConfig, PromptConfig, check_attention


@dataclass
class TrainerConfig:
    steps: int = 20
    """RL steps: each plays a batch and updates the policy on it (TRL: max_steps; verl: total_training_steps)."""
    prompts_per_step: int = 4
    """Prompts per step; the batch is prompts_per_step x rollout.n trajectories (ToRL: 128 x 16)."""
    mini_batch_size: int = 0
    """Trajectories per optimizer step; 0 = the whole batch (one step per epoch)."""
    micro_batch_size: int = 8
    """Trajectories per forward/backward; gradients accumulate exactly up to the mini-batch."""
    ppo_epochs: int = 1
    """Passes over each step's batch (1 = on-policy; more reuse it with the clipped ratio; TRL: num_iterations)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """The policy's optimizer: AdamW's learning rate, betas, weight decay, warm-up, schedule, clipping."""
    save_every: int = 10
    """Checkpoint every N steps and at the last step; 0 = only at the last step."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (the newest); 0 keeps them all."""
    eval_every: int = 0
    """Held-out evaluation every N steps; 0 = at the start and the end only."""
    eval_size: int = 50
    """Held-out problems evaluated (the first N of data.test)."""
    eval_temperature: float = 0.0
    """0 = greedy; report sampled figures with a positive value (greedy and sampled can differ a lot)."""
    seed: int = 0
    """Seeds problem order, sampling and initial weights of new heads: a run is repeatable at a given seed."""
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
    recompute_prompt: bool = False
    """With share_prompt: the shared prompt pass keeps no activations while the mini-batch's
    micro-batches run; it runs again, with grad, for its own backward. The same gradients bit for bit
    (tested), for one more forward of the distinct prompts per mini-batch: on SmolLM2 (8 prompts of
    ~150 tokens) ~1.3 GB less at the update's peak."""
    log: LogConfig = field(default_factory=LogConfig)
    """Where metrics go besides metrics.jsonl (TensorBoard, W&B, trackio) and the plain progress line."""
    warn_idle_steps: int = 5
    """Warn (once per idle stretch) after this many consecutive steps without a policy update."""
    max_staleness: int = 0
    """How many policy updates a rollout may lag the learner when it is trained on. 0 = the synchronous
    loop (every step plays with the current weights). k >= 1: rollouts run in a thread up to k steps
    ahead of the update, generating with a second copy of the policy's weights (memory: two copies);
    needs an off-policy correction (algorithm.tis_cap or algorithm.decoupled_cap). With
    distributed.backend=ray the rollout workers play ahead instead (no second copy here), synced to the
    learner's newest weights before each batch. See tirl.train.feed."""


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
    check_staleness(cfg)
    cfg.distributed.validate()
    check_device_and_precision(cfg.trainer.device, cfg.trainer.precision)
    lora.check(cfg.model.lora)
    check_attention(cfg.model.attn_implementation)


def optimizer_steps(cfg: RLConfig) -> int:
    """Optimizer steps of the whole run (the learning-rate schedule's length)."""
    batch = cfg.trainer.prompts_per_step * cfg.rollout.n
    return cfg.trainer.steps * cfg.trainer.ppo_epochs * -(-batch // (cfg.trainer.mini_batch_size or batch))


def check_staleness(cfg: RLConfig) -> None:
    """Refuse asynchronous settings that cannot work (yet): each in one line."""
    k, algo = cfg.trainer.max_staleness, cfg.algorithm
    if k < 0:
        raise ValueError(f"trainer.max_staleness must be >= 0 (0 = synchronous), got {k}")
    if k == 0:
        if cfg.rollout.partial:
            raise ValueError("rollout.partial=true needs trainer.max_staleness >= 1 (at 0 no new weights arrive "
                             "while a rollout plays)")
        return
    if algo.tis_cap <= 0 and algo.decoupled_cap <= 0:
        raise ValueError(f"trainer.max_staleness={k} trains on rollouts from older weights: set an off-policy "
                         "correction, algorithm.tis_cap (TIS, e.g. 2) or algorithm.decoupled_cap (decoupled PPO, e.g. 5)")
    if cfg.distributed.trainer_workers > 1:
        raise ValueError(f"trainer.max_staleness={k} with distributed.trainer_workers > 1 is not yet supported")
    if cfg.rollout.partial and cfg.distributed.backend != "local":
        raise ValueError("rollout.partial=true needs distributed.backend=local (a Ray worker takes new weights "
                         "only between shards)")
    if cfg.rollout.partial and cfg.rollout.continuous:
        raise ValueError("rollout.partial=true takes new weights between turns: it needs rollout.continuous=false")
