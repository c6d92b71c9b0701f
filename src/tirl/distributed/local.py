"""The `local` rollout backend: today's single process, with the step's shards played in turn.

It generates with the trainer's own model, so there are no weights to sync. With `rollout.shards: 1`
(the default) it is exactly one `rollout` call over the step's prompts.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

from tirl.distributed.shards import cut_shards, merge_results


class LocalBackend:
    name = "local"

    def __init__(self, generator: Any, tokenizer: Any, sandbox: Any, style: Any):
        self.generator, self.tokenizer, self.sandbox, self.style = generator, tokenizer, sandbox, style
        self.version: int | None = None
        """The version the trainer's model holds (its last `sync_weights`): each trajectory carries it."""
        self.weights: Callable[[], int] | None = None
        """Partial rollouts (`rollout.partial`): called between turns, it brings the generator's weights up
        to the newest published and returns their version (`tirl.train.feed`); None: a rollout keeps the
        weights it started with."""

    def rollout(self, prompts: Sequence[Sequence[int]], cfg: Any, shards: int = 1) -> Any:
        from tirl.rollout import rollout

        parts = cut_shards(prompts, shards, cfg.seed)
        results = [rollout(self.generator, [list(p) for p in s.prompts], self.tokenizer, self.sandbox, self.style,
                           dataclasses.replace(cfg, seed=s.seed), weights=self.weights) for s in parts]
        if self.weights is None:  # else the rollout stamped each token's version itself
            for r in results:
                for t in r.trajectories:
                    t.weight_version = self.version
        return merge_results(parts, results)

    def sync_weights(self, model: Any, version: int) -> dict[str, float]:
        """Nothing to copy: the generator holds the trainer's model itself; only the version is noted."""
        self.version = version
        return {}

    def describe(self) -> dict[str, Any]:
        return {"backend": "local", "driver_pid": os.getpid()}

    def close(self) -> None:
        """The generator and sandbox belong to the caller."""
