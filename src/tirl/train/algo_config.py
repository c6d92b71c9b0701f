"""`algorithm:` — the settings of the RL update (`tirl.train.rl_update`): estimator, clipping, KL,
entropy, critic, dynamic sampling and off-policy correction, and the checks that they agree."""

from __future__ import annotations

from dataclasses import dataclass

from tirl import algorithms as A
from tirl.train.dapo import METRICS as DYNAMIC_SAMPLING_METRICS


@dataclass
class AlgoConfig:
    """The RL algorithm; defaults follow ReTool's recipe where it applies (clip 0.2 / 0.28, KL off)."""

    name: str = "grpo"
    """`grpo` (ToRL), `ppo` (ReTool: GAE with a critic) or `rloo`."""
    scale_by_std: bool = True
    """GRPO divides by the group's std; False is Dr. GRPO."""
    clip_low: float = 0.2
    """PPO clip range below: the ratio is clipped at 1 - clip_low."""
    clip_high: float = 0.28
    """> clip_low is DAPO's clip-higher (ReTool 0.28)."""
    dual_clip: float = 0.0
    """Dual-clip bound c for negative advantages (ReTool 10); 0 = off."""
    agg: str = "token-mean"
    """`token-mean`, `seq-mean-token-mean`, `seq-sum` (Dr. GRPO: token sum / (rows x max_new_tokens)) or
    `seq-mean-token-sum-norm` (verl's Dr. GRPO mode: token sum / max_new_tokens, rows x seq-sum):
    see `tirl.algorithms.aggregate`."""
    tis_cap: float = 0.0
    """Truncated importance sampling: weight each token's loss by min(pi_trainer / pi_rollout, cap)
    when another engine or stale weights sampled the rollout (verl/TRL use 2); 0 = off. A token whose
    rollout log-prob is unknown (NaN: the OpenAI backend's re-tokenised output) keeps weight 1."""
    decoupled_cap: float = 0.0
    """Decoupled PPO (Hilton et al. 2021, AReaL): weight each token's loss by pi_trainer / pi_rollout in
    full, the PPO ratio clipped around the trainer's weights before the update; tokens whose weight
    exceeds this cap are masked out (AReaL's behav_imp_weight_cap, e.g. 5). 0 = off. An alternative to
    tis_cap (which truncates instead of masking) for `trainer.max_staleness` >= 1; set one of them."""
    kl_coef: float = 0.0
    """KL to a frozen reference model; 0 (both papers) loads no reference model."""
    kl_target: float = 0.0
    """Adaptive KL controller (Ziegler et al.): steer kl_coef so the per-token KL to the reference
    stays near this value; 0 = a fixed kl_coef. kl_coef is the starting value."""
    kl_horizon: int = 10000
    """The controller's horizon in samples: larger = slower changes of the coefficient."""
    kl_kind: str = "k3"
    """k1, k2 or k3 (low-variance, GRPO's)."""
    kl_mode: str = "loss"
    """`loss`: a loss term; `reward`: a per-token reward penalty (classic RLHF PPO)."""
    entropy_coef: float = 0.0
    """Entropy bonus (ToRL: 0)."""
    gamma: float = 1.0
    """PPO: the GAE discount."""
    lam: float = 1.0
    """GAE discount and lambda (ReTool's PPO: 1 and 1)."""
    whiten_advantages: bool = True
    """PPO: whiten GAE advantages over valid tokens of the batch."""
    value_clip: float = 0.2
    """PPO: clip the critic's new values to within this of its old ones; 0 = off."""
    critic_lr: float = 2e-6
    """ReTool's critic learning rate."""
    critic_warmup_steps: int = 0
    """PPO: steps where only the critic learns (ReTool: 20) so early advantages are not noise. GRPO and
    RLOO have no critic: it holds nothing back there."""
    skip_zero_advantage: bool = True
    """GRPO/RLOO: run no forward/backward for samples whose advantage is 0 (all-equal groups) when no KL
    or entropy term needs them: they add nothing to the policy gradient, and on small models they are
    often most of the batch. A pure speed-up: their tokens still count in the loss's normaliser, and a
    mini-batch left with nothing to run still makes its (zero-gradient) optimizer step, so the update
    equals the one without the skip (tested)."""
    filter_zero_advantage: bool = True
    """GRPO/RLOO: all-equal groups (every reward the same) leave the batch before the update (when no KL
    or entropy term needs them; a zero-advantage row of a group whose rewards differ stays), so the loss's normaliser counts only the informative samples' tokens and each of them weighs
    more; a step where every group is all-equal makes no update. Like DAPO's dynamic sampling without
    the refill. False keeps them in the normaliser, as TRL's and verl's GRPO do (then
    `skip_zero_advantage` still saves their forward)."""
    dynamic_sampling: bool = False
    """DAPO: keep sampling rounds of prompts until the step holds `prompts_per_step` groups whose
    accuracy differs (GRPO/RLOO; `dynamic_sampling_metric`), instead of training on fewer; see
    `tirl.train.dapo`."""
    dynamic_sampling_max_rounds: int = 4
    """Bound on sampling rounds per step; the step then trains on the informative groups it has."""
    dynamic_sampling_metric: str = "acc"
    """What must differ within a group for dynamic sampling to keep it: `acc` (correctness, as DAPO and
    verl) or `score` (the shaped reward: exec penalty, overlong term, a user's reward)."""
    overlong_buffer: int = 0
    """DAPO's soft overlong punishment: the last N tokens before rollout.max_new_tokens cost up to -1
    (linearly); 0 = off."""
    overlong_filter: bool = False
    """DAPO's overlong filtering: responses cut at rollout.max_new_tokens are left out of the loss."""
    exec_penalty: float = 0.0
    """ToRL's variant: subtract this (0.5) when a response's code never ran successfully."""
    log_entropy: bool = True
    """Log the policy's entropy (`entropy/mean`); computed without a graph unless entropy_coef > 0.
    False skips it (a softmax over the vocabulary at every trained token)."""

    def validate(self, n: int, batch: int, mini_batch: int) -> None:
        if self.name not in ("grpo", "ppo", "rloo"):
            raise ValueError(f"algorithm.name must be grpo, ppo or rloo, not {self.name!r}")
        if self.name in ("grpo", "rloo") and n < 2:
            raise ValueError(f"{self.name} compares samples of one prompt: rollout.n must be >= 2, got {n}")
        if mini_batch > batch:
            raise ValueError(f"trainer.mini_batch_size ({mini_batch}) is larger than the batch "
                             f"(trainer.prompts_per_step x rollout.n = {batch})")
        if self.agg not in A.AGG_MODES:
            raise ValueError(f"algorithm.agg must be one of {A.AGG_MODES}, not {self.agg!r}")
        if self.dynamic_sampling and self.name == "ppo":
            raise ValueError("algorithm.dynamic_sampling needs groups (grpo or rloo); PPO's advantages are "
                             "not zero for all-equal groups")
        if self.dynamic_sampling_metric not in DYNAMIC_SAMPLING_METRICS:
            raise ValueError(f"algorithm.dynamic_sampling_metric must be one of "
                             f"{', '.join(DYNAMIC_SAMPLING_METRICS)}, not {self.dynamic_sampling_metric!r}")
        if self.dynamic_sampling_max_rounds < 1:
            raise ValueError(f"algorithm.dynamic_sampling_max_rounds must be >= 1, not {self.dynamic_sampling_max_rounds}")
        if self.overlong_buffer < 0:
            raise ValueError(f"algorithm.overlong_buffer must be >= 0 (0 = off), not {self.overlong_buffer}")
        if self.kl_target < 0 or (self.kl_target > 0 and (self.kl_coef <= 0 or self.kl_horizon <= 0)):
            raise ValueError("algorithm.kl_target needs a starting algorithm.kl_coef > 0 and kl_horizon > 0 "
                             f"(got kl_target={self.kl_target}, kl_coef={self.kl_coef}, kl_horizon={self.kl_horizon})")
        if self.tis_cap < 0:
            raise ValueError(f"algorithm.tis_cap must be >= 0 (0 = off), not {self.tis_cap}")
        if self.decoupled_cap < 0 or 0 < self.decoupled_cap <= 1:
            raise ValueError(f"algorithm.decoupled_cap must be 0 (off) or > 1, not {self.decoupled_cap}")
        if self.tis_cap > 0 and self.decoupled_cap > 0:
            raise ValueError("algorithm.tis_cap and algorithm.decoupled_cap are two corrections for the same "
                             "thing: set one")
        if self.kl_mode not in ("loss", "reward"):
            raise ValueError(f"algorithm.kl_mode must be 'loss' or 'reward', not {self.kl_mode!r}")
        if self.kl_kind not in A.KL_KINDS:
            raise ValueError(f"algorithm.kl_kind must be one of {', '.join(A.KL_KINDS)}, not {self.kl_kind!r}")
        if not 0 < self.clip_low < 1:
            raise ValueError(f"algorithm.clip_low must be in (0, 1) (the ratio's lower bound is 1 - clip_low), "
                             f"got {self.clip_low}")
        if self.clip_high <= 0:
            raise ValueError(f"algorithm.clip_high must be > 0, got {self.clip_high}")
        if self.dual_clip < 0 or 0 < self.dual_clip <= 1:
            raise ValueError(f"algorithm.dual_clip must be 0 (off) or > 1 (ReTool: 10), got {self.dual_clip}")
        if self.kl_coef < 0 or self.entropy_coef < 0 or self.exec_penalty < 0 or self.critic_lr < 0:
            raise ValueError("algorithm.kl_coef, entropy_coef, exec_penalty and critic_lr must be >= 0")
