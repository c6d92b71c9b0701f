"""How old a sample may be when the learner trains on it: the one place that decides.

A trajectory carries the weight version that sampled it (`Trajectory.weight_version`); the learner's
version is the number of updates its weights have had. A sample's age is their difference.
`trainer.max_staleness` k bounds it:

- k = 0 (the default): every sample must come from the learner's current weights, as in the
  synchronous loop; anything else means a weight sync went missing, and the run stops
  (`tirl.rollout.faults.StaleRollout`).
- k >= 1: the producer may run up to k updates ahead (`tirl.train.feed`); a sample older than k is
  never trained on (left out of the update like an infrastructure failure, and counted), and one
  from a version the learner has not reached yet stops the run.

A partial rollout (`rollout.partial`) holds several versions, each token its own
(`Trajectory.version_runs`); its `weight_version` is the oldest, so the bound holds for every token.
`async/partial_share` is the share of samples with more than one version.
"""

from __future__ import annotations

from typing import Any, Sequence

from tirl.rollout.faults import StaleRollout, check_weight_versions


def fresh_enough(trajs: Sequence[Any], learner_version: int, max_staleness: int) -> tuple[list[bool], dict[str, float]]:
    """Which samples are young enough to train on at `learner_version`, and the figures: with k >= 1 the
    age's mean and max, the share of samples at each age 0..k (`async/age_<a>`, a histogram) and how
    many were too old (`async/stale_dropped`)."""
    if max_staleness == 0:
        check_weight_versions(trajs, expected=learner_version)
        return [True] * len(trajs), {}
    ages = [learner_version - t.weight_version for t in trajs]
    if any(a < 0 for a in ages):
        raise StaleRollout(f"a rollout was sampled with weights version {learner_version - min(ages)}, newer than "
                           f"the learner's {learner_version}")
    fresh = [a <= max_staleness for a in ages]
    n = max(len(ages), 1)
    metrics = {"async/age_mean": sum(ages) / n, "async/age_max": float(max(ages, default=0)),
               "async/stale_dropped": float(len(ages) - sum(fresh))}
    metrics.update({f"async/age_{a}": sum(x == a for x in ages) / n for a in range(max_staleness + 1)})
    metrics["async/partial_share"] = sum(len({v for _, v in t.version_runs}) > 1 for t in trajs) / n
    return fresh, metrics
