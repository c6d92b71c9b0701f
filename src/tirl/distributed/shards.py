"""Cut a step's prompts into shards of whole GRPO groups, and put the shards' results back together.

Why shards: the transformers backend draws every row of a batch from one sampler per call and pads
to the batch's longest cache, so splitting a batch differently changes the sampled tokens. A shard
is therefore the unit of determinism: shard k always holds the same contiguous prompts and plays
with its own fixed seed, wherever it runs. K shards played in turn in one process and the same K
shards played on K (or 2, or 1) Ray workers give the same tokens; K = 1 is exactly the unsharded
rollout (same prompts, same seed).

Groups stay whole (all `n` samples of a prompt in one shard) so group-relative advantages never need
another shard's rewards, and a shard's trajectories keep the prompt-major order of `rollout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

SHARD_SEED_STRIDE = 1_000_033
"""Seed distance between shards; a rollout's turn t uses seed + t, so turns never reach the next shard."""

# Rollout counters that add up over shards; `rollout/turns` takes the longest shard instead.
_SUMMED = ("rollout/prefill_tokens", "rollout/decode_tokens", "rollout/generated_tokens",
           "rollout/interpreter_tokens", "rollout/prompt_tokens", "rollout/gen_time_s", "rollout/exec_time_s",
           "rollout/exec_retries")


@dataclass(frozen=True)
class Shard:
    index: int
    start: int
    """Index of the shard's first prompt in the step's prompt list."""
    prompts: tuple[tuple[int, ...], ...]
    """Prompt token ids, one per GRPO group."""
    seed: int | None


def shard_seed(seed: int | None, index: int) -> int | None:
    return None if seed is None else seed + index * SHARD_SEED_STRIDE


def cut_shards(prompts: Sequence[Sequence[int]], shards: int, seed: int | None) -> list[Shard]:
    """`shards` contiguous runs of prompts, sizes differing by at most one (the first ones larger).

    More shards than prompts leaves the extra shards out (evaluation on a short list), so a shard is
    never empty; the shard seeds do not depend on the number of prompts.
    """
    if shards < 1:
        raise ValueError(f"rollout.shards must be >= 1, not {shards}")
    k = min(shards, len(prompts)) or 1
    base, extra = divmod(len(prompts), k)
    out, start = [], 0
    for i in range(k):
        size = base + (i < extra)
        out.append(Shard(i, start, tuple(tuple(p) for p in prompts[start:start + size]), shard_seed(seed, i)))
        start += size
    return out


def merge_results(shards: Sequence[Shard], results: Sequence[Any]) -> Any:
    """One `RolloutResult` from per-shard ones, in shard order, as if one rollout had played them all.

    Trajectories get the step's group index back; tool metrics are recomputed over all trajectories;
    token counts and times add up; `rollout/recompute_ratio` is recomputed from the summed counts.
    One shard is returned unchanged.
    """
    from tirl.analysis.tool_stats import tool_metrics
    from tirl.rollout import RolloutResult

    if len(results) == 1:
        return results[0]
    trajs = []
    for shard, res in zip(shards, results):
        for t in res.trajectories:
            t.group_index += shard.start
            trajs.append(t)
    metrics = tool_metrics(trajs)
    ms = [r.metrics for r in results]
    for key in _SUMMED:
        if any(key in m for m in ms):
            metrics[key] = float(sum(m.get(key, 0.0) for m in ms))
    if any("rollout/turns" in m for m in ms):
        metrics["rollout/turns"] = float(max(m.get("rollout/turns", 0.0) for m in ms))
    computed = sum(m.get("rollout/prefill_tokens", 0.0) + m.get("rollout/decode_tokens", 0.0) for m in ms)
    # Each shard's ratio is computed / needed, so needed = computed / ratio.
    needed = sum((m.get("rollout/prefill_tokens", 0.0) + m.get("rollout/decode_tokens", 0.0)) / m["rollout/recompute_ratio"]
                 for m in ms if m.get("rollout/recompute_ratio"))
    if any("rollout/recompute_ratio" in m for m in ms):
        metrics["rollout/recompute_ratio"] = computed / needed if needed else 0.0
    # Anything else a rollout reports (a newer metric): the trajectory-weighted mean over shards.
    sizes = [len(r.trajectories) for r in results]
    for key in set().union(*ms) - set(metrics):
        have = [(m[key], n) for m, n in zip(ms, sizes) if key in m]
        total = sum(n for _, n in have)
        metrics[key] = float(sum(v * n for v, n in have) / total) if total else 0.0
    return RolloutResult(trajs, metrics)
