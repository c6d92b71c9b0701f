"""TRL's and verl's names for tirl's config keys, for the user who arrives knowing theirs.

    foreign_key("num_generations")  # ForeignKey("TRL", "num_generations", "rollout.n")

Used twice: an unknown key that is another framework's name is answered with tirl's key
(`tirl.config`), and `docs/config.md` prints the table (`tirl config`). Never an alias: a foreign name
in a config is still refused, with the key to write instead, so one config reads one way.

Not covered: names whose meaning has no tirl counterpart (TRL's `max_prompt_length`, `delta`,
`importance_sampling_level`; verl's parallelism and engine settings). A note says where a unit differs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ForeignKey:
    framework: str
    """TRL or verl."""
    name: str
    """Their name: a field of TRL's `GRPOConfig` / `TrainingArguments`, or a verl dotted key."""
    key: str
    """tirl's key (`tirl config train` explains it)."""
    note: str = ""
    """Where the meaning or the unit differs."""


FOREIGN_KEYS: tuple[ForeignKey, ...] = (
    ForeignKey("TRL", "model_name_or_path", "model.path"),
    ForeignKey("TRL", "num_generations", "rollout.n"),
    ForeignKey("TRL", "max_completion_length", "rollout.max_new_tokens",
               "tirl counts interpreter output in the budget too"),
    ForeignKey("TRL", "temperature", "rollout.temperature"),
    ForeignKey("TRL", "top_p", "rollout.top_p"),
    ForeignKey("TRL", "top_k", "rollout.top_k"),
    ForeignKey("TRL", "learning_rate", "trainer.optim.lr"),
    ForeignKey("TRL", "per_device_train_batch_size", "trainer.micro_batch_size",
               "trajectories per forward/backward; prompts per step are trainer.prompts_per_step"),
    ForeignKey("TRL", "gradient_accumulation_steps", "trainer.mini_batch_size",
               "tirl sizes the optimizer step in trajectories: per_device_train_batch_size x "
               "gradient_accumulation_steps x GPUs"),
    ForeignKey("TRL", "num_iterations", "trainer.ppo_epochs"),
    ForeignKey("TRL", "max_steps", "trainer.steps"),
    ForeignKey("TRL", "beta", "algorithm.kl_coef"),
    ForeignKey("TRL", "epsilon", "algorithm.clip_low"),
    ForeignKey("TRL", "epsilon_high", "algorithm.clip_high"),
    ForeignKey("TRL", "loss_type", "algorithm.agg",
               "TRL names the objective, tirl the aggregation: dapo and bnpo ~ token-mean, "
               "grpo = seq-mean-token-mean, dr_grpo = seq-sum"),
    ForeignKey("TRL", "scale_rewards", "algorithm.scale_by_std", "false = Dr. GRPO; true = TRL's 'group'"),
    ForeignKey("TRL", "mask_truncated_completions", "algorithm.overlong_filter"),
    ForeignKey("TRL", "warmup_steps", "trainer.optim.warmup_steps"),
    ForeignKey("TRL", "lr_scheduler_type", "trainer.optim.schedule", "constant or cosine"),
    ForeignKey("TRL", "weight_decay", "trainer.optim.weight_decay"),
    ForeignKey("TRL", "max_grad_norm", "trainer.optim.max_grad_norm"),
    ForeignKey("TRL", "save_steps", "trainer.save_every"),
    ForeignKey("TRL", "save_total_limit", "trainer.keep_checkpoints"),
    ForeignKey("TRL", "eval_steps", "trainer.eval_every"),
    ForeignKey("TRL", "seed", "trainer.seed"),
    ForeignKey("TRL", "reward_funcs", "reward.functions", "a list of {function, weight}; from Python, "
               "tirl.train(reward_funcs=..., reward_weights=...)"),
    ForeignKey("TRL", "reward_weights", "reward.functions", "each entry's weight"),
    ForeignKey("TRL", "gradient_checkpointing", "trainer.gradient_checkpointing"),
    ForeignKey("TRL", "bf16", "trainer.precision", "bf16: true is trainer.precision=bf16 (autocast; "
               "weights stay float32)"),
    ForeignKey("verl", "data.train_files", "data.train"),
    ForeignKey("verl", "data.val_files", "data.test"),
    ForeignKey("verl", "data.train_batch_size", "trainer.prompts_per_step"),
    ForeignKey("verl", "data.max_response_length", "rollout.max_new_tokens"),
    ForeignKey("verl", "actor_rollout_ref.model.path", "model.path"),
    ForeignKey("verl", "actor_rollout_ref.rollout.n", "rollout.n"),
    ForeignKey("verl", "actor_rollout_ref.rollout.temperature", "rollout.temperature"),
    ForeignKey("verl", "actor_rollout_ref.actor.optim.lr", "trainer.optim.lr"),
    ForeignKey("verl", "actor_rollout_ref.actor.ppo_mini_batch_size", "trainer.mini_batch_size",
               "verl counts prompts (x rollout.n), tirl trajectories"),
    ForeignKey("verl", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", "trainer.micro_batch_size"),
    ForeignKey("verl", "actor_rollout_ref.actor.ppo_epochs", "trainer.ppo_epochs"),
    ForeignKey("verl", "actor_rollout_ref.actor.clip_ratio_low", "algorithm.clip_low"),
    ForeignKey("verl", "actor_rollout_ref.actor.clip_ratio_high", "algorithm.clip_high"),
    ForeignKey("verl", "actor_rollout_ref.actor.clip_ratio_c", "algorithm.dual_clip"),
    ForeignKey("verl", "actor_rollout_ref.actor.loss_agg_mode", "algorithm.agg"),
    ForeignKey("verl", "actor_rollout_ref.actor.kl_loss_coef", "algorithm.kl_coef"),
    ForeignKey("verl", "actor_rollout_ref.actor.kl_loss_type", "algorithm.kl_kind",
               "low_var_kl = k3, kl = k1, mse = k2"),
    ForeignKey("verl", "actor_rollout_ref.actor.entropy_coeff", "algorithm.entropy_coef"),
    ForeignKey("verl", "algorithm.adv_estimator", "algorithm.name", "grpo, rloo; gae = ppo"),
    ForeignKey("verl", "algorithm.norm_adv_by_std_in_grpo", "algorithm.scale_by_std"),
    ForeignKey("verl", "algorithm.kl_ctrl.kl_coef", "algorithm.kl_coef", "with algorithm.kl_mode=reward"),
    ForeignKey("verl", "critic.optim.lr", "algorithm.critic_lr"),
    ForeignKey("verl", "custom_reward_function.path", "reward.functions",
               "{function: FILE.py:NAME} in one key (verl's custom_reward_function.name); compute_score's "
               "signature is read as verl's"),
    ForeignKey("verl", "trainer.total_training_steps", "trainer.steps"),
    ForeignKey("verl", "trainer.save_freq", "trainer.save_every"),
    ForeignKey("verl", "trainer.test_freq", "trainer.eval_every"),
    ForeignKey("verl", "trainer.project_name", "trainer.log.project"),
    ForeignKey("verl", "trainer.experiment_name", "trainer.log.run_name"),
)

_BY_NAME = {f.name: f for f in FOREIGN_KEYS}


def foreign_key(key: str) -> ForeignKey | None:
    """The entry for `key`: a verl dotted key as written, or a TRL name at any depth (`trainer.beta`:
    only TRL's names are undotted)."""
    return _BY_NAME.get(key) or _BY_NAME.get(key.rsplit(".", 1)[-1])
