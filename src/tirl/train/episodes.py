"""One round of RL play: prompts -> `rollout` with the sandbox -> `grade_trajectory` each response.

Grading is evaluation's (`tirl.eval.grade_trajectory`), so a reward and an evaluation score judge a
response the same way; held-out evaluation itself goes through `tirl.eval.evaluate`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from tirl.formats import TagStyle
from tirl.eval import code_ran, grade_trajectory  # noqa: F401 (code_ran re-exported)
from tirl.reward import Grade
from tirl.train.dapo import with_overlong_penalty
from tirl.rollout import RolloutConfig, Trajectory, encode_prompt, rollout
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
    """Roll out every problem (`rollout_cfg.n` samples each) and grade each trajectory; then the
    user's reward function (`tirl.custom_reward.UserReward`), then DAPO's overlong term, if set.

    With a rollout `backend` (`tirl.distributed`), it plays the prompts in `cfg.shards` shards, here or
    on workers; the grading stays here."""
    cfg = dataclasses.replace(rollout_cfg, **overrides)
    prompts = [encode_prompt(tokenizer, p.problem, style, chat) for p in problems]
    if backend is not None:
        trajs, metrics = backend.rollout(prompts, cfg, cfg.shards)
    else:
        trajs, metrics = rollout(generator, prompts, tokenizer, sandbox, style, cfg)
    grades = [grade_trajectory(t, problems[t.group_index].answer, style, exec_penalty=exec_penalty) for t in trajs]
    if reward_fn is not None:
        grades = [reward_fn(problems[t.group_index], t.model_text, t, g) for t, g in zip(trajs, grades)]
    if overlong_buffer:
        grades = [with_overlong_penalty(g, len(t.response_ids), cfg.max_new_tokens, overlong_buffer)
                  for t, g in zip(trajs, grades)]
    n = max(len(grades), 1)
    scores = [g.score for g in grades]
    mean = sum(scores) / n
    metrics["reward/mean"] = mean
    metrics["reward/std"] = (sum((x - mean) ** 2 for x in scores) / n) ** 0.5
    metrics["reward/accuracy"] = sum(g.correct for g in grades) / n
    metrics["reward/no_answer_ratio"] = sum(g.reason == "no_answer" for g in grades) / n
    groups = [scores[i:i + cfg.n] for i in range(0, len(scores), cfg.n)]
    metrics["reward/frac_zero_std"] = sum(len(set(g)) <= 1 for g in groups) / max(len(groups), 1)
    return trajs, grades, metrics
