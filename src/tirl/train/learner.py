"""The learner half of the RL loop: take a step's `ScoredBatch`, update the policy (and PPO's critic), and
hold the version of its weights (the number of steps it has trained).

`learn` reads top to bottom: which samples may train (the infrastructure's faults, the staleness bound)
-> the batch -> old, reference log-probs and values (scored without grad) -> advantages -> the rows
of the update -> critic and policy updates (or the figures of a step with none) -> the adaptive KL
coefficient. The update's rules themselves are `tirl.train.rl_update`'s.

The old log-probs are the learner's own weights before the update (the proximal policy of decoupled
PPO); the rollout's are the behaviour policy's, which sampled the tokens: the same weights when
`trainer.max_staleness` is 0 (up to numerics), up to k updates older otherwise, corrected then by
`algorithm.tis_cap` or `algorithm.decoupled_cap` (`tirl.train.staleness`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from tirl import algorithms as A
from tirl.resources import release_if_grown
from tirl.rollout.faults import trainable
from tirl.train import lora
from tirl.train import rl_update as U
from tirl.train.batch import RLBatch, make_batch
from tirl.train.common import OptimConfig, build_optimizer, grad_scaler
from tirl.train.producer import ScoredBatch
from tirl.train.rl_config import optimizer_steps
from tirl.train.rl_models import Models
from tirl.train.staleness import fresh_enough

log = logging.getLogger("tirl.train")


class Learner:
    def __init__(self, cfg: Any, models: Models, pad_id: int, device: Any, group: Any = None):
        tc, algo = cfg.trainer, cfg.algorithm
        self.cfg, self.tc, self.algo, self.pad_id, self.device, self.group = cfg, tc, algo, pad_id, device, group
        self.policy, self.critic, self.ref = models.policy, models.critic, models.ref
        batch_size = tc.prompts_per_step * cfg.rollout.n
        self.mini = tc.mini_batch_size or batch_size
        updates = optimizer_steps(cfg)
        # The ranks' update scores the old log-probs itself: keep the separate pass with a trainer group.
        self.fused_old = U.one_step_per_batch(algo, tc.ppo_epochs, self.mini, batch_size) and group is None
        self.scaler = grad_scaler(tc.precision, device)
        self.opt, self.sched = build_optimizer([p for p in self.policy.parameters() if p.requires_grad], tc.optim,
                                               updates)
        self.c_opt = self.c_sched = None
        if self.critic is not None:
            c_cfg = OptimConfig(**{**tc.optim.__dict__, "lr": algo.critic_lr})
            self.c_opt, self.c_sched = build_optimizer(self.critic.parameters(), c_cfg, updates)
        self.kl_coef = algo.kl_coef  # moves each step when algorithm.kl_target is set (adaptive controller)
        self.share = tc.share_prompt and not tc.gradient_checkpointing  # checkpointing drops the cache sharing needs
        self.idle = 0  # consecutive steps without a policy update
        self.version = 0
        """Updates the weights have had: the version the next batch's staleness is measured from."""

    def state(self) -> dict[str, Any]:
        """What a checkpoint needs besides the weights to continue exactly."""
        state = {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "kl_coef": self.kl_coef}
        if self.critic is not None:
            state.update(critic_optimizer=self.c_opt.state_dict(), critic_scheduler=self.c_sched.state_dict())
        return state

    def load_state(self, state: dict[str, Any], version: int) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if self.critic is not None:
            self.c_opt.load_state_dict(state["critic_optimizer"])
            self.c_sched.load_state_dict(state["critic_scheduler"])
        self.kl_coef = state.get("kl_coef", self.algo.kl_coef)
        self.version = version

    def learn(self, scored: ScoredBatch, step: int) -> tuple[RLBatch, list[int], dict[str, float]]:
        """One step's update from `scored`; returns the batch (advantages filled), the rows trained and the
        step's metrics (the rollout's, then the learner's)."""
        algo, trajs, metrics = self.algo, scored.trajectories, scored.metrics
        fresh, ages = fresh_enough(trajs, self.version, self.tc.max_staleness)
        valid, infra = trainable(trajs, self.cfg.rollout.n, min_valid=1 if algo.name == "ppo" else 2)
        valid = [v and f for v, f in zip(valid, fresh)]
        metrics.update({**infra, **ages})
        batch = make_batch(trajs, self.pad_id, self.device)
        self._score(batch, metrics)
        rewards = torch.tensor([g.score for g in scored.grades], dtype=torch.float32)
        step_algo = dataclasses.replace(algo, kl_coef=self.kl_coef) if algo.kl_target else algo
        metrics.update(U.compute_advantages(batch, rewards, step_algo, self.cfg.rollout.n,
                                            None if all(valid) else torch.tensor(valid)))
        rows = self._rows(batch, trajs, rewards, valid, step_algo, metrics)
        self._update(batch, rows, step_algo, step, metrics)
        if algo.kl_target:
            observed = U.observed_kl(batch, algo.kl_kind)
            metrics.update({"kl/coef": self.kl_coef, "kl/observed": observed})
            self.kl_coef = A.adaptive_kl_coef(self.kl_coef, observed, algo.kl_target, len(trajs), algo.kl_horizon)
        self.version = step
        release_if_grown()  # or the next rollout's caches climb over this update's freed activations
        return batch, rows, metrics

    def _score(self, batch: RLBatch, metrics: dict) -> None:
        """Old log-probs (unless the update's own forward gives them), reference log-probs, old values."""
        tc, temperature = self.tc, self.cfg.rollout.temperature
        if not self.fused_old:
            batch.old_logprobs, batch.old_entropy = U.score_batch(
                self.policy, batch, temperature, tc.micro_batch_size, tc.precision, entropy=True,
                share_prompt=self.share)
            metrics.update(U.logprob_mismatch(batch))
        if self.algo.kl_coef > 0:
            with lora.reference_view(self.policy, self.ref) as ref_model:
                batch.ref_logprobs, _ = U.score_batch(ref_model, batch, temperature, tc.micro_batch_size,
                                                      tc.precision, share_prompt=self.share)
        if self.critic is not None:
            batch.old_values = U.score_values(self.critic, batch, tc.micro_batch_size, tc.precision)

    def _rows(self, batch: RLBatch, trajs: list, rewards: torch.Tensor, valid: list[bool], algo: Any,
              metrics: dict) -> list[int]:
        """The rows the update trains on: informative, valid, and (with DAPO's filter) not cut at the budget."""
        scored = [s if v else None for s, v in zip(rewards.tolist(), valid)]  # infra-failed: no score, no loss
        rows = [r for r in U.rows_to_train(batch, algo, scored, self.cfg.rollout.n) if valid[r]]
        if self.algo.overlong_filter:
            rows = [r for r in rows if trajs[r].finish_reason != "length"]
            metrics["dapo/overlong_filtered"] = float(sum(t.finish_reason == "length" for t in trajs))
        return rows

    def _update(self, batch: RLBatch, rows: list[int], algo: Any, step: int, metrics: dict) -> None:
        tc, critic = self.tc, self.critic
        gen = torch.Generator().manual_seed(tc.seed * 7919 + step)
        loop = dict(mini_batch_size=self.mini, micro_batch_size=tc.micro_batch_size, epochs=tc.ppo_epochs,
                    max_grad_norm=tc.optim.max_grad_norm, seq_len=self.cfg.rollout.max_new_tokens, generator=gen,
                    precision=tc.precision, scaler=self.scaler)
        if critic is not None:
            metrics.update(U.critic_update(critic, self.c_opt, self.c_sched, batch, rows, self.algo, **loop))
        warming_up = critic is not None and step <= self.algo.critic_warmup_steps  # PPO's critic alone learns
        if rows and not warming_up:
            metrics.update(self._policy_update(batch, rows, algo, step, loop))
            self.idle = 0
            return
        if self.fused_old:  # no update took them: score the old log-probs (and entropy) for the metrics
            batch.old_logprobs, batch.old_entropy = U.score_batch(
                self.policy, batch, self.cfg.rollout.temperature, tc.micro_batch_size, tc.precision, entropy=True,
                share_prompt=self.share)
            metrics.update(U.logprob_mismatch(batch))
        metrics.update(U.no_update_metrics(batch, algo))
        self.idle += not warming_up
        if self.idle == tc.warn_idle_steps:
            log.warning("no policy update for %d steps: every group's rewards were all equal (all right "
                        "or all wrong). Raise rollout.n or temperature, or use easier/harder problems.", self.idle)

    def _policy_update(self, batch: RLBatch, rows: list[int], algo: Any, step: int, loop: dict) -> dict[str, float]:
        temperature = self.cfg.rollout.temperature
        if self.group is not None:  # the same update, on every trainer rank
            loop = {k: v for k, v in loop.items() if k != "generator"}
            return self.group.policy_update(self.policy, self.opt, self.sched, batch, rows, algo,
                                            self.tc.seed * 7919 + step, temperature=temperature,
                                            share_prompt=self.share, recompute_prompt=self.tc.recompute_prompt,
                                            **loop)
        metrics = U.policy_update(self.policy, self.opt, self.sched, batch, rows, algo, old_from_update=self.fused_old,
                                  temperature=temperature, share_prompt=self.share,
                                  recompute_prompt=self.tc.recompute_prompt, **loop)
        if self.fused_old:
            metrics.update(U.logprob_mismatch(batch, U.rows_to_run(batch, rows, algo)))
        return metrics
