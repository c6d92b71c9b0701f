"""DAPO's data rules (Yu et al. 2025): dynamic sampling and overlong handling.

Dynamic sampling (`algorithm.dynamic_sampling`): a GRPO group whose rewards are all equal has zero
advantage and teaches nothing, so a step keeps sampling rounds of `prompts_per_step` new prompts and
keeps only groups with some spread, until it holds `prompts_per_step` of them or has played
`dynamic_sampling_max_rounds` rounds (then it trains on what it has, and `dapo/groups_short` says how
many were missing). The step's batch stays full instead of shrinking to the few useful groups. The
spread is judged on accuracy (`algorithm.dynamic_sampling_metric: acc`, the default), as DAPO and verl's
`filter_groups.metric: acc` do: a group all right or all wrong goes, even when shaping (ToRL's exec
penalty, the overlong term, a user's reward) made its scores differ; `score` judges the shaped score.

Overlong handling, for responses that hit `rollout.max_new_tokens` (L_max):
- soft punishment (`algorithm.overlong_buffer` = L_cache > 0): a length-dependent reward term,
  0 up to L_max - L_cache, falling linearly to -1 at L_max (`tirl.rollout.episodes.overlong_penalty`,
  applied where rewards are made, in `play`);
- filtering (`algorithm.overlong_filter`): truncated responses are left out of the loss (their
  rewards still count in their group's baseline).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from tirl.rewards import INFRA_FAILED, Grade


METRICS = ("acc", "score")


def informative(scores: Sequence[float | None], n: int) -> list[bool]:
    """Per group of `n` consecutive scores: does it have any spread (a non-zero GRPO advantage)? None is
    a sample the infrastructure failed: it is no score and adds no spread."""
    return [len({s for s in scores[i:i + n] if s is not None}) > 1 for i in range(0, len(scores), n)]


def judged(grades: Sequence[Grade], metric: str) -> list[float]:
    """What dynamic sampling compares within a group: correctness (`acc`) or the shaped score (`score`)."""
    if metric not in METRICS:
        raise ValueError(f"algorithm.dynamic_sampling_metric must be one of {', '.join(METRICS)}, not {metric!r}")
    return [float(g.correct) if metric == "acc" else g.score for g in grades]


# play(problems, round) -> (trajectories, grades, metrics), n samples per problem, prompt-major.
PlayFn = Callable[[list[Any], int], tuple[list[Any], list[Grade], dict[str, float]]]


def dynamic_sample(play: PlayFn, take: Callable[[int], list[Any]], k: int, n: int, max_rounds: int,
                   metric: str = "acc"):
    """Play rounds of `k` prompts until `k` informative groups are held (or `max_rounds` are played);
    a group is informative when its `metric` (see `judged`) differs between samples.

    Returns (problems, trajectories, grades, metrics, played): `k` groups in the order they were
    sampled, renumbered 0.. — informative ones first choice; when the rounds run out, all-equal groups
    fill the rest (they carry no gradient, but the step keeps its samples and its metrics); metrics over
    every sampled round (times summed, rates weighted by groups) plus `dapo/*`; `played` lists
    (problem, grades) of every group sampled, for rewards.jsonl.
    """
    groups, rounds = [], []  # (problem, trajs, grades, informative) in sampling order
    for r in range(max_rounds):
        problems = take(k)
        trajs, grades, metrics = play(problems, r)
        rounds.append((len(problems), metrics))
        flags = informative([None if g.reason == INFRA_FAILED else s for g, s in zip(grades, judged(grades, metric))], n)
        groups += [(p, trajs[i * n:(i + 1) * n], grades[i * n:(i + 1) * n], useful)
                   for i, (p, useful) in enumerate(zip(problems, flags))]
        if sum(g[3] for g in groups) >= k:
            break
    useful = [i for i, g in enumerate(groups) if g[3]][:k]
    filler = [i for i, g in enumerate(groups) if not g[3]][: k - len(useful)]
    chosen = [groups[i] for i in sorted(useful + filler)]
    kept_t = [t for _, ts, _, _ in chosen for t in ts]
    for j, t in enumerate(kept_t):
        t.group_index = j // n
    metrics = _merge(rounds)
    metrics.update({"dapo/rounds": float(len(rounds)), "dapo/groups_sampled": float(len(groups)),
                    "dapo/groups_kept": float(len(useful)), "dapo/groups_short": float(k - len(useful)),
                    "dapo/informative_ratio": sum(g[3] for g in groups) / max(len(groups), 1)})
    played = [(p, gs) for p, _, gs, _ in groups]
    return [c[0] for c in chosen], kept_t, [g for _, _, gs, _ in chosen for g in gs], metrics, played


def _merge(rounds: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Rounds' metrics as one step's: durations and counts add up, everything else is a mean
    weighted by the round's number of groups."""
    keys = {k for _, m in rounds for k in m}
    out = {}
    for key in keys:
        vals = [(w, m[key]) for w, m in rounds if key in m]
        if key.endswith("_s") or key.endswith("_tokens"):
            out[key] = sum(v for _, v in vals)
        else:
            out[key] = sum(w * v for w, v in vals) / max(sum(w for w, _ in vals), 1)
    return out
