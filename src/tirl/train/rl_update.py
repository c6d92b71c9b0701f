"""From an `RLBatch` to an optimizer step: log-probs, advantages, the PPO-style update.

The batch (`tirl.train.batch.RLBatch`, built by `make_batch` from the trajectories) holds its tensors
by name; its notation (B, L, T) and mask alignment are described there.

Every loss goes through `tirl.algorithms` with the mini-batch's global normaliser, so gradient
accumulation is exact: micro-batch 1 x 8 and 8 x 1 give the same step (tested). The update's metrics
are exact too: a `*_max` is the max over every token of the update, a mean is over every token (the
micro-batches' means weighted by their token counts), so micro-batch 64, 8 and 1 log the same figures
(tested); the loss and the gradient norm are means over the optimizer steps.

The update's rules that must agree with each other stay in this file: which rows train
(`rows_to_train`), which run (`rows_to_run`), the normaliser they share and the metrics pooled over
them. The config that sets them is `tirl.train.algo_config.AlgoConfig`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from tirl import algorithms as A
from tirl.train.algo_config import AlgoConfig  # noqa: F401  (its long-standing import path)
from tirl.train.batch import RLBatch, micro_batches
from tirl.train.dapo import informative


def _autocast(model: Any, precision: str) -> Any:
    from tirl.models import autocast

    return autocast(next(model.parameters()).device, precision)


def forward_logprobs(model: Any, batch: RLBatch, temperature: float, entropy: str = "none",
                     precision: str = "fp32", share_prompt: bool = False,
                     prompts: Any = None) -> tuple[Tensor, Tensor | None]:
    """(B, T) float32 log-probs of the actual next tokens under `model`, logits scaled as when sampling,
    at the positions `batch.mask` trains (0 elsewhere), and their entropies when `entropy` is
    "detached" or "grad"; `share_prompt` runs each shared prompt once, or takes it from `prompts` (a
    `prompt_pass` over the mini-batch: see `tirl.algorithms.logprobs.model_token_logprobs`)."""
    from tirl.algorithms.logprobs import model_token_logprobs

    with _autocast(model, precision):
        return model_token_logprobs(model, batch.input_ids, batch.attention_mask, batch.mask,
                                    temperature, entropy=entropy, share_prompt=share_prompt, prompts=prompts)


def prompt_pass(model: Any, batch: RLBatch, precision: str = "fp32", recompute: bool = False) -> Any:
    """The shared prompts of `batch` run once for all its micro-batches (`tirl.algorithms.shared_prompt.
    PromptPass`), under the precision the micro-batches run in; None when nothing is shared."""
    from tirl.algorithms.logprobs import prompt_pass as run

    with _autocast(model, precision):
        return run(model, batch.input_ids, batch.attention_mask, batch.mask, recompute=recompute)


def forward_values(critic: Any, batch: RLBatch, precision: str = "fp32") -> Tensor:
    """(B, T) value of the state before each target token (a token-classification head, 1 label)."""
    with _autocast(critic, precision):
        out = critic(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return out[:, :-1, 0].float()


@torch.no_grad()
def score_batch(model: Any, batch: RLBatch, temperature: float, micro: int, precision: str = "fp32",
                entropy: bool = False, share_prompt: bool = False) -> tuple[Tensor, Tensor | None]:
    """(B, T) log-probs of the batch under `model` (no grad), scored in micro-batches of similar lengths
    (`micro_batches`), and their entropies when `entropy`; the caller puts them in the field they are for."""
    lps = torch.zeros_like(batch.mask)
    ents = torch.zeros_like(batch.mask) if entropy else None
    parts = micro_batches(batch.attention_mask.sum(dim=1).tolist(), micro)
    prompts = prompt_pass(model, batch, precision) if share_prompt and len(parts) > 1 else None
    for part in parts:
        lp, ent = forward_logprobs(model, batch.subset(part), temperature, entropy="detached" if entropy else "none",
                                   precision=precision, share_prompt=share_prompt, prompts=prompts)
        lps[part, : lp.shape[1]] = lp
        if ents is not None:
            ents[part, : ent.shape[1]] = ent
    return lps, ents


@torch.no_grad()
def score_values(critic: Any, batch: RLBatch, micro: int, precision: str = "fp32") -> Tensor:
    """(B, T) critic values of the batch (no grad), in micro-batches: `old_values`."""
    values = torch.zeros_like(batch.mask)
    for part in micro_batches(batch.attention_mask.sum(dim=1).tolist(), micro):
        v = forward_values(critic, batch.subset(part), precision)
        values[part, : v.shape[1]] = v
    return values


def one_step_per_batch(algo: AlgoConfig, ppo_epochs: int, mini_batch_size: int, batch_size: int) -> bool:
    """True when each batch feeds exactly one optimizer step, so the policy that sampled it is still the
    policy being trained when its log-probs are taken: the old log-probs then equal the update's own
    (detached), and their separate no-grad forward can be skipped. PPO's KL-in-reward needs them
    before the advantages, and the adaptive KL controller needs every row's after the update, so both
    keep the separate pass."""
    return (ppo_epochs == 1 and mini_batch_size >= batch_size and not (algo.kl_coef > 0 and algo.kl_mode == "reward")
            and not algo.kl_target)


def compute_advantages(batch: RLBatch, rewards: Tensor, cfg: AlgoConfig, group_size: int,
                       valid: Tensor | None = None) -> dict:
    """Fill `batch.advantages` ((B,) for GRPO/RLOO, (B, T) for PPO) and PPO's `batch.returns`.

    `valid` (B,) bool, None = all: False for a sample the infrastructure failed (`tirl.rollout.faults`);
    it is left out of its group's statistics (GRPO/RLOO) or gets no reward and no advantage (PPO), and
    of the advantage figures. The caller leaves its rows out of the update."""
    mask = batch.mask
    if valid is not None:
        valid = valid.to(mask.device)
        mask = mask * valid[:, None]
    rewards = rewards.to(mask.device)
    out: dict[str, float] = {}
    kl_in_reward = cfg.kl_coef > 0 and cfg.kl_mode == "reward"
    if cfg.name in ("grpo", "rloo") and kl_in_reward:
        # Outcome advantages see one number per response: the KL reward penalty summed over its tokens
        # (what a per-token penalty adds up to with gamma = 1) is subtracted before the group baseline.
        penalty = A.kl_reward_penalty(batch.need("old_logprobs"), batch.need("ref_logprobs"), mask, cfg.kl_coef,
                                      cfg.kl_kind).sum(-1)
        rewards = rewards + penalty
        out["kl/reward_penalty_mean"] = float(penalty.mean())
    if cfg.name == "grpo":
        batch.advantages = A.grpo_advantages(rewards, group_size, scale_by_std=cfg.scale_by_std, valid=valid)
    elif cfg.name == "rloo":
        batch.advantages = A.rloo_advantages(rewards, group_size, valid=valid)
    else:
        if valid is None:
            token_rewards = A.outcome_token_rewards(rewards, mask)
        else:  # an invalid row may hold no sampled token at all: no reward to place
            token_rewards = torch.zeros_like(mask)
            token_rewards[valid] = A.outcome_token_rewards(rewards[valid], mask[valid]).to(mask.dtype)
        if cfg.kl_coef > 0 and cfg.kl_mode == "reward":
            token_rewards = token_rewards + A.kl_reward_penalty(
                batch.need("old_logprobs"), batch.need("ref_logprobs"), mask, cfg.kl_coef, cfg.kl_kind)
        adv, ret = A.gae_advantages(token_rewards, batch.need("old_values"), mask, cfg.gamma, cfg.lam)
        batch.advantages = A.whiten(adv, mask) if cfg.whiten_advantages else adv
        batch.returns = ret
    adv = batch.advantages
    counted = mask.bool() if adv.dim() == 2 else (valid if valid is not None else torch.ones_like(adv, dtype=torch.bool))
    out.update({"advantage/mean": float(adv[counted].mean()) if counted.any() else 0.0,
                "advantage/abs_mean": float(adv[counted].abs().mean()) if counted.any() else 0.0})
    return out


def _only_policy_term(cfg: AlgoConfig) -> bool:
    """GRPO/RLOO with no KL or entropy term: a row's loss is its advantage times its ratio, nothing else."""
    return cfg.name in ("grpo", "rloo") and cfg.kl_coef == 0 and cfg.entropy_coef == 0


def _zero_advantage_rows(batch: RLBatch, cfg: AlgoConfig) -> set[int]:
    """Rows whose advantage is 0 and that no other loss term reads (GRPO/RLOO without KL or entropy)."""
    adv = batch.need("advantages")
    if adv.dim() != 1 or not _only_policy_term(cfg):
        return set()
    return {b for b in range(batch.size) if float(adv[b]) == 0.0}


def rows_to_train(batch: RLBatch, cfg: AlgoConfig, rewards: Tensor | Sequence[float | None], group_size: int) -> list[int]:
    """The rows of the update (and of its normaliser): those with a sampled token, less the groups of
    `group_size` consecutive rows whose `rewards` (the scores the advantages were made from) are all
    equal, when `cfg.filter_zero_advantage`. A row of zero advantage in a group whose rewards differ
    (Dr. GRPO's [1, -1, 0, 0], a 0.5 at its group's mean) stays: dropping it would shrink the token-mean
    normaliser of an informative group; `rows_to_run` still spares it the forward."""
    rows = [b for b in range(batch.size) if batch.mask[b].any()]
    if cfg.filter_zero_advantage and _only_policy_term(cfg):
        spread = informative([None if r is None else float(r) for r in rewards], group_size)
        rows = [b for b in rows if spread[b // group_size]]
    return rows


def rows_to_run(batch: RLBatch, rows: Sequence[int], cfg: AlgoConfig) -> list[int]:
    """Of `rows`, those the policy update runs forward/backward on (all unless `cfg.skip_zero_advantage`)."""
    zero = _zero_advantage_rows(batch, cfg) if cfg.skip_zero_advantage else set()
    return [b for b in rows if b not in zero]


def _mean_metrics(acc: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for m in acc for k in m}
    return {k: sum(m[k] for m in acc if k in m) / sum(1 for m in acc if k in m) for k in sorted(keys)}


def _pooled(parts: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Micro-batch metrics, each `(valid tokens, metrics)`, as the figure of all their tokens at once: a
    key ending in `_max` is the largest value; any other is a mean over valid tokens (every metric of
    `tirl.algorithms`' losses is), so the micro-batches' means are weighted by their token counts. The
    figures then do not depend on how the update was cut into micro-batches (tested)."""
    out = {}
    for key in sorted({k for _, m in parts for k in m}):
        vals = [(w, m[key]) for w, m in parts if key in m]
        if key.endswith("_max"):
            out[key] = max(v for _, v in vals)
        else:
            tokens = sum(w for w, _ in vals)
            out[key] = sum(w * v for w, v in vals) / tokens if tokens else 0.0
    return out


def _minibatch_steps(
    module: Any, opt: Any, sched: Any, batch: RLBatch, rows: list[int], agg: str,
    micro_loss: Callable[[RLBatch, float], tuple[Tensor, dict[str, float]]], *,
    mini_batch_size: int, micro_batch_size: int, epochs: int, max_grad_norm: float, seq_len: int,
    generator: torch.Generator, loss_key: str, grad_key: str, scaler: Any = None, dp: Any = None,
    skip: set[int] | frozenset[int] = frozenset(),
    prepare: Callable[[RLBatch, int], Callable[[], None]] | None = None,
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """`epochs` shuffled passes over `rows` in optimizer steps of `mini_batch_size` trajectories.

    Each step accumulates `micro_loss` over micro-batches of similar lengths (`micro_batches`: at most
    `micro_batch_size` rows, little padding), every one normalised by the whole
    mini-batch (`global_normalizer`), so accumulation is exact; the micro losses are parts of one
    loss, so the step's `loss_key` is their sum. Rows in `skip` (whose loss is known to be 0 with a zero
    gradient) count in the normaliser but are not run; a step left with no row to run still steps,
    on zero gradients, as it would have. `prepare(rows' batch, number of micro-batches)`, when given,
    runs before a step's micro-batches and returns what to run after their backward passes (the shared
    prompt pass's own backward). Returns (per optimizer step its `loss_key` and `grad_key`, the
    micro-batches' own metrics pooled over the whole update by `_pooled`).
    With `dp` (a `tirl.distributed.ddp.DataParallel`) this rank runs only its slice of each
    mini-batch and the gradients are summed over the ranks before the step.
    """
    from tirl.resources import release_if_grown
    from tirl.train.common import backward, clip_and_step

    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    steps: list[dict[str, float]] = []
    parts: list[tuple[float, dict[str, float]]] = []  # (valid tokens, metrics) of every micro-batch
    for _ in range(epochs):
        perm = [rows[i] for i in torch.randperm(len(rows), generator=generator).tolist()]
        for start in range(0, len(perm), mini_batch_size):
            mb = perm[start : start + mini_batch_size]
            norm = A.global_normalizer(batch.mask[mb], agg, seq_len=seq_len)
            run = [r for r in mb if r not in skip]
            mine = dp.rows(run) if dp is not None else run
            total = 0.0
            plan = micro_batches(batch.attention_mask[mine].sum(dim=1).tolist(), micro_batch_size)
            finish = prepare(batch.subset(mine), len(plan)) if prepare is not None and mine else None
            for part in plan:
                sub = batch.subset([mine[i] for i in part])
                loss, m = micro_loss(sub, norm)
                backward(loss, scaler)
                total += float(loss.detach())
                parts.append((float(sub.mask.sum()), m))
                # Micro-batches come in increasing length: glibc cannot fit the next one's activations
                # in the blocks this one freed, and kept them resident beside it (SmolLM2: +1 GB a step).
                release_if_grown()
            if finish is not None:
                finish()
            if not mine:  # nothing ran here: the zero gradients the skipped rows would have given
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
            if dp is not None:
                dp.reduce_grads(params)
                total = dp.sum(total)
            steps.append({loss_key: total, grad_key: clip_and_step(params, opt, sched, max_grad_norm, scaler)})
    module.eval()
    return steps, _pooled(parts)


def policy_update(
    model: Any, opt: Any, sched: Any, batch: RLBatch, rows: list[int], cfg: AlgoConfig, *,
    temperature: float, precision: str = "fp32", old_from_update: bool = False, share_prompt: bool = False,
    recompute_prompt: bool = False, **loop: Any,
) -> dict[str, float]:
    """Clipped policy loss (+ entropy bonus, + KL term) over `rows`; see `_minibatch_steps` for `loop`.

    `share_prompt`: a prompt that rows share runs once (same values, less work): once per mini-batch,
    for all its micro-batches (`prompt_pass`); `recompute_prompt` runs that pass again for its backward
    instead of holding its activations through the micro-batches (`PromptPass`'s `recompute`).
    `old_from_update` (only valid when `one_step_per_batch`): the old log-probs are this forward's own,
    detached, instead of a separate no-grad pass; they are written into `batch.old_logprobs` (rows
    not run, see `rows_to_run`, stay 0) for the rollout-vs-trainer check. Same loss, same gradient
    (tested).
    """
    entropy = "grad" if cfg.entropy_coef else ("detached" if cfg.log_entropy else "none")
    if old_from_update:
        batch.old_logprobs = torch.zeros_like(batch.rollout_logprobs)
    shared: list[Any] = [None]  # the current mini-batch's prompt pass

    def prepare(rows: RLBatch, n_micro: int) -> Callable[[], None]:
        # one micro-batch runs its own prompts anyway; several share one pass
        shared[0] = prompt_pass(model, rows, precision, recompute_prompt) if share_prompt and n_micro > 1 else None
        return lambda: shared[0].backward() if shared[0] is not None else None

    def micro_loss(sub: RLBatch, norm: float) -> tuple[Tensor, dict[str, float]]:
        lp, ent = forward_logprobs(model, sub, temperature, entropy=entropy, precision=precision,
                                   share_prompt=share_prompt, prompts=shared[0])
        if old_from_update:
            old = lp.detach()
            batch.old_logprobs[sub.row, : old.shape[1]] = old
        else:
            old = sub.need("old_logprobs")
        weights, tm = behaviour_weights(old, sub.rollout_logprobs, sub.mask, cfg)
        loss, m = A.policy_loss(lp, old, sub.need("advantages"), sub.mask, cfg.clip_low,
                                cfg.clip_high, cfg.dual_clip or None, cfg.agg, norm, weights)
        m.update(tm)
        if ent is not None:
            e_loss, em = A.entropy_loss(ent, sub.mask, cfg.agg, norm)
            m.update(em)
        if cfg.entropy_coef:  # e_loss is the negative entropy: adding it rewards exploration
            loss = loss + cfg.entropy_coef * e_loss
        if cfg.kl_coef > 0 and cfg.kl_mode == "loss":
            k_loss, km = A.kl_loss(lp, sub.need("ref_logprobs"), sub.mask, cfg.kl_kind, cfg.agg, norm)
            loss = loss + cfg.kl_coef * k_loss
            m.update(km)
        return loss, m

    skip = set(rows) - set(rows_to_run(batch, rows, cfg))
    steps, pooled = _minibatch_steps(model, opt, sched, batch, rows, cfg.agg, micro_loss, loss_key="loss/policy",
                                     grad_key="train/grad_norm", skip=skip, prepare=prepare, **loop)
    out = {**pooled, **_mean_metrics(steps)}
    out["train/optimizer_steps"] = float(len(steps))
    return out


def behaviour_weights(old: Tensor, rollout: Tensor, mask: Tensor, cfg: AlgoConfig) -> tuple[Tensor | None, dict]:
    """The per-token correction for tokens another policy sampled: TIS (`tis_cap`), decoupled PPO
    (`decoupled_cap`) or none (None: every weight 1)."""
    if cfg.tis_cap > 0:
        return A.truncated_is_weights(old, rollout, mask, cfg.tis_cap)
    if cfg.decoupled_cap > 0:
        return A.decoupled_is_weights(old, rollout, mask, cfg.decoupled_cap)
    return None, {}


def no_update_metrics(batch: RLBatch, cfg: AlgoConfig) -> dict[str, float]:
    """The keys `policy_update` logs, for a step that made no update (every group all-equal, or the
    critic warm-up): curves get a point, not a hole. Nothing moved, so losses, clip fractions and the
    gradient are 0 and the ratio is 1; entropy is the sampled tokens' under the unchanged policy."""
    out = {"loss/policy": 0.0, "train/grad_norm": 0.0, "train/optimizer_steps": 0.0,
           "policy/clipfrac": 0.0, "policy/clipfrac_low": 0.0, "policy/clipfrac_high": 0.0,
           "policy/dual_clipfrac": 0.0, "policy/approx_kl": 0.0, "policy/ratio_mean": 1.0, "policy/ratio_max": 1.0}
    if batch.old_entropy is not None:
        out["entropy/mean"] = float(A.masked_mean(batch.old_entropy, batch.mask))
    if cfg.kl_coef > 0 and cfg.kl_mode == "loss" and batch.ref_logprobs is not None:
        _, km = A.kl_loss(batch.need("old_logprobs"), batch.ref_logprobs, batch.mask, cfg.kl_kind, cfg.agg)
        out.update(km)
    return out


def critic_update(
    critic: Any, opt: Any, sched: Any, batch: RLBatch, rows: list[int], cfg: AlgoConfig, *,
    precision: str = "fp32", **loop: Any,
) -> dict[str, float]:
    """Clipped value loss towards the GAE returns over `rows`; see `_minibatch_steps` for `loop`."""

    def micro_loss(sub: RLBatch, norm: float) -> tuple[Tensor, dict[str, float]]:
        return A.value_loss(forward_values(critic, sub, precision), sub.need("old_values"), sub.need("returns"),
                            sub.mask, cfg.value_clip or None, cfg.agg, norm)

    steps, pooled = _minibatch_steps(critic, opt, sched, batch, rows, cfg.agg, micro_loss, loss_key="loss/value",
                                     grad_key="critic/grad_norm", **loop)
    return {**pooled, **_mean_metrics(steps)}


def observed_kl(batch: RLBatch, kind: str) -> float:
    """Mean per-token KL estimate of the sampled tokens between the rollout policy and the reference."""
    return float(A.masked_mean(A.kl_penalty(batch.need("old_logprobs"), batch.need("ref_logprobs"), kind, batch.mask),
                               batch.mask))


def logprob_mismatch(batch: RLBatch, rows: Sequence[int] | None = None) -> dict[str, float]:
    """Rollout vs recomputed log-probs on sampled tokens (of `rows`; default all): a gap silently
    biases the ratio. Tokens whose rollout log-prob is unknown (NaN: the OpenAI backend's re-tokenised
    output and appended stop text) are left out of the differences and counted in
    `rollout/logprob_unknown` (their share of the sampled tokens); with none known the differences
    are undefined (NaN, null in metrics.jsonl)."""
    m = batch.mask.bool()
    if rows is not None:
        keep = torch.zeros(m.shape[0], dtype=torch.bool, device=m.device)
        keep[list(rows)] = True
        m = m & keep[:, None]
    if not m.any():
        return {"rollout/logprob_max_diff": 0.0, "rollout/logprob_mean_diff": 0.0, "rollout/logprob_unknown": 0.0}
    unknown = torch.isnan(batch.rollout_logprobs) & m
    known = m & ~unknown
    share = float(unknown.sum()) / float(m.sum())
    if not known.any():
        return {"rollout/logprob_max_diff": math.nan, "rollout/logprob_mean_diff": math.nan,
                "rollout/logprob_unknown": share}
    d = (batch.rollout_logprobs - batch.need("old_logprobs")).abs()[known]
    return {"rollout/logprob_max_diff": float(d.max()), "rollout/logprob_mean_diff": float(d.mean()),
            "rollout/logprob_unknown": share}
