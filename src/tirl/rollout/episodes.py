"""One round of RL play: prompts -> `rollout` with the sandbox -> `grade_trajectory` each response.

`grade_trajectory` is also what every evaluation record is graded with (`tirl.eval`), so a reward and
an evaluation score judge a response the same way. DAPO's soft overlong term (`overlong_penalty`) is
applied here too, as a reward term; the rest of DAPO is the trainer's (`tirl.train.dapo`).

A sample the infrastructure failed (`Trajectory.infra_failed`, `tirl.rollout.faults`) is not graded:
its grade has reason `infra_failed` and score 0 (no `exec_penalty`, no reward function, no overlong term),
and the `reward/*` figures are over the other samples; the learner leaves it out of the loss.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from tirl.formats import TagStyle
from tirl.rewards import INFRA_FAILED, Grade, component_means, grade_detailed
from tirl.rollout.config import RolloutConfig
from tirl.rollout.loop import encode_prompt, rollout
from tirl.rollout.trajectory import Trajectory
from tirl.sandbox.protocol import SandboxLike


def play(
    generator: Any,
    tokenizer: Any,
    sandbox: SandboxLike,
    problems: Sequence[Any],
    style: TagStyle,
    rollout_cfg: RolloutConfig,
    *,
    chat: bool | None = None,
    exec_penalty: float = 0.0,
    reward_fn: Any = None,
    overlong_buffer: int = 0,
    backend: Any = None,
    **overrides: Any,
) -> tuple[list[Trajectory], list[Grade], dict[str, float]]:
    """Roll out every problem (`rollout_cfg.n` samples each) and grade each trajectory; then the run's
    reward functions (`reward_fn`: `tirl.rewards.Rewards`, called on the whole batch), then DAPO's
    overlong term, if set.

    With a rollout `backend` (`tirl.distributed`), it plays the prompts in `cfg.shards` shards, here or
    on workers; the grading stays here."""
    cfg = dataclasses.replace(rollout_cfg, **overrides)
    prompts = [encode_prompt(tokenizer, p.problem, style, chat) for p in problems]
    if backend is not None:
        trajs, metrics = backend.rollout(prompts, cfg, cfg.shards)
    else:
        trajs, metrics = rollout(generator, prompts, tokenizer, sandbox, style, cfg)
    grades = grade_all(trajs, [problems[t.group_index].answer for t in trajs], style, exec_penalty=exec_penalty)
    if reward_fn is not None:
        grades = reward_fn([problems[t.group_index] for t in trajs], trajs, grades)
    if overlong_buffer:
        grades = [g if t.infra_failed else with_overlong_penalty(g, len(t.response_ids), cfg.max_new_tokens,
                                                                 overlong_buffer)
                  for t, g in zip(trajs, grades)]
    metrics.update(reward_metrics(grades, cfg.n))
    return trajs, grades, metrics


def reward_metrics(grades: Sequence[Grade], n: int) -> dict[str, float]:
    """`reward/*` over the graded samples (infra-failed ones left out); groups of `n` consecutive grades.
    With reward functions, `reward/<name>` is each one's mean value (before its weight)."""
    valid = [g for g in grades if g.reason != INFRA_FAILED]
    k = max(len(valid), 1)
    scores = [g.score for g in valid]
    mean = sum(scores) / k
    groups = [[g.score for g in grades[i:i + n] if g.reason != INFRA_FAILED] for i in range(0, len(grades), n)]
    groups = [g for g in groups if g]
    out = {"reward/mean": mean, "reward/std": (sum((x - mean) ** 2 for x in scores) / k) ** 0.5,
           "reward/accuracy": sum(g.correct for g in valid) / k,
           "reward/no_answer_ratio": sum(g.reason == "no_answer" for g in valid) / k,
           "reward/frac_zero_std": sum(len(set(g)) <= 1 for g in groups) / max(len(groups), 1)}
    out.update({f"reward/{name}": v for name, v in component_means(g.rewards for g in valid).items()})
    return out


def code_ran(t: Trajectory) -> bool | None:
    """None when the response wrote no code; False when any of its code did not execute cleanly.

    ToRL's optional penalty is for "code that cannot execute": one failing block is enough, even if a
    later fix ran (a model that learns to write a failing block before every answer must still pay).
    Blocks over the tool-call cap were never offered to the sandbox and do not count, nor do calls the
    infrastructure failed (the program never got its run: not the model's fault).
    """
    calls = [c for c in t.tool_calls if c.status != "capped" and not c.infra_failed]
    if not calls:
        return None
    return all(c.status == "ok" for c in calls)


def grade_trajectory(t: Trajectory, reference: str, style: TagStyle | None = None, *, lenient: bool = False,
                     exec_penalty: float = 0.0) -> Grade:
    """Grade what the model wrote (`Trajectory.model_text`: interpreter output left out), by the
    style's answer rule (ReTool: inside `<answer>`). Used by RL rewards and every evaluation. A sample
    the infrastructure failed is not graded (reason `infra_failed`, score 0, never penalised)."""
    if t.infra_failed:
        return Grade(0.0, False, None, str(reference), INFRA_FAILED)
    return grade_detailed(t.model_text, reference, style=style, lenient=lenient, code_ran=code_ran(t),
                          exec_penalty=exec_penalty)


def grade_all(trajs: Sequence[Trajectory], references: Sequence[str], style: TagStyle | None = None,
              **kwargs: Any) -> list[Grade]:
    """`grade_trajectory` of each trajectory against its reference, in order. Comparisons that need
    math-verify run in its grading processes; asking them from a few threads keeps them all busy
    instead of one round trip at a time."""
    workers = min(4, os.cpu_count() or 1, len(trajs))
    if workers <= 1:
        return [grade_trajectory(t, r, style, **kwargs) for t, r in zip(trajs, references)]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda tr: grade_trajectory(tr[0], tr[1], style, **kwargs), zip(trajs, references)))


def overlong_penalty(length: int, max_len: int, buffer: int) -> float:
    """DAPO's soft overlong punishment for a response of `length` tokens (0 when `buffer` is 0)."""
    if buffer <= 0 or length <= max_len - buffer:
        return 0.0
    if length > max_len:
        return -1.0
    return ((max_len - buffer) - length) / buffer


def with_overlong_penalty(grade: Grade, length: int, max_len: int, buffer: int) -> Grade:
    p = overlong_penalty(length, max_len, buffer)
    return dataclasses.replace(grade, score=grade.score + p) if p else grade
