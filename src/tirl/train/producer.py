"""The producer half of the RL loop: draw a step's problems, play them on a rollout backend, grade them,
and hand the learner one typed `ScoredBatch`.

Every trajectory carries the weight version that sampled it (`Trajectory.weight_version`, set by the
backend from its last `sync_weights`); the producer never looks at the learner, so the learner alone
decides what is too old to train on (`tirl.train.staleness`).

The rollout seed of step s is derived from (seed, s, round) and the problem order from (seed, epoch),
so a step's batch does not depend on when or in which thread it is produced.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tirl.rewards import Grade
from tirl.rollout import Trajectory
from tirl.rollout.episodes import play
from tirl.train import dapo
from tirl.train.common import ProblemStream


@dataclass
class ScoredBatch:
    """One step's scored groups: the hand-off from producer to learner. Groups of `rollout.n` consecutive
    trajectories and grades, prompt-major, one per problem."""

    step: int
    problems: list[Any]
    trajectories: list[Trajectory]
    grades: list[Grade]
    metrics: dict[str, float]
    """Rollout, reward and DAPO figures of the play (`rollout/*`, `reward/*`, `tool/*`, `dapo/*`)."""
    played: list[tuple[Any, list[Grade]]]
    """(problem, grades) of every group sampled, kept or not (dynamic sampling), for rewards.jsonl."""
    epochs: list[int]
    """The data epoch of every problem drawn, in order (rewards.jsonl)."""
    exec_span: tuple[int, int]
    """Lines [from, to) of executions.jsonl written while this batch was played (`tirl replay`)."""
    data_position: int
    """The problem stream's position after this batch: where a resumed run continues."""
    rollout_s: float

    @property
    def versions(self) -> list[Any]:
        """The weight version each trajectory was sampled with."""
        return [t.weight_version for t in self.trajectories]


class Producer:
    """Plays steps: `produce(step)` draws `prompts_per_step` problems (more rounds with dynamic sampling),
    rolls them out on `backend` and grades them."""

    def __init__(self, cfg: Any, stream: ProblemStream, backend: Any, generator: Any, tokenizer: Any,
                 sandbox: Any, style: Any, reward_fn: Any = None):
        self.cfg, self.stream, self.backend = cfg, stream, backend
        self.generator, self.tokenizer, self.sandbox, self.style, self.reward_fn = (generator, tokenizer, sandbox,
                                                                                   style, reward_fn)

    def produce(self, step: int) -> ScoredBatch:
        cfg, tc, algo, n = self.cfg, self.cfg.trainer, self.cfg.algorithm, self.cfg.rollout.n
        t0 = time.perf_counter()
        exec_start = self.sandbox.position  # this step's lines of executions.jsonl start here
        epochs: list[int] = []

        def take(k: int) -> list:
            first = self.stream.position
            epochs.extend((first + i) // len(self.stream.items) for i in range(k))
            return self.stream.take(k)

        def play_round(problems: list, round_: int) -> tuple:
            return play(self.generator, self.tokenizer, self.sandbox, problems, self.style, cfg.rollout,
                        chat=cfg.prompt.chat, exec_penalty=algo.exec_penalty, reward_fn=self.reward_fn,
                        overlong_buffer=algo.overlong_buffer, seed=round_seed(tc.seed, step, round_),
                        backend=self.backend)

        if algo.dynamic_sampling:
            problems, trajs, grades, metrics, played = dapo.dynamic_sample(
                play_round, take, tc.prompts_per_step, n, algo.dynamic_sampling_max_rounds,
                algo.dynamic_sampling_metric)
        else:
            problems = take(tc.prompts_per_step)
            trajs, grades, metrics = play_round(problems, 0)
            played = [(p, grades[i * n:(i + 1) * n]) for i, p in enumerate(problems)]
        return ScoredBatch(step, problems, trajs, grades, metrics, played, epochs,
                           (exec_start, self.sandbox.position), self.stream.position, time.perf_counter() - t0)


def round_seed(seed: int, step: int, round_: int) -> int:
    """The rollout seed of a step's sampling round: fixed by the run's seed, the step and the round."""
    return seed * 1_000_003 + step * 1009 + round_ * 7_919_017
