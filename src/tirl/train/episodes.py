"""One round of play: prompts -> `rollout` with the sandbox -> `grade` each response.

Shared by the RL step and held-out evaluation, so both see the same prompts, the same tool loop and
the same grader.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from tirl.formats import TagStyle
from tirl.reward import Grade, grade_detailed
from tirl.rollout import RolloutConfig, Trajectory, encode_prompt, rollout


def code_ran(t: Trajectory) -> bool | None:
    """None when the response wrote no code; else whether any of it ran cleanly (ToRL's penalty)."""
    calls = [c for c in t.tool_calls if c.executed]
    if not calls:
        return None
    return any(c.status == "ok" for c in calls)


def play(
    generator: Any,
    tokenizer: Any,
    sandbox: Any,
    problems: Sequence[Any],
    style: TagStyle,
    rollout_cfg: RolloutConfig,
    *,
    chat: bool | None = None,
    exec_penalty: float = 0.0,
    **overrides: Any,
) -> tuple[list[Trajectory], list[Grade], dict[str, float]]:
    """Roll out every problem (`rollout_cfg.n` samples each) and grade each trajectory."""
    cfg = dataclasses.replace(rollout_cfg, **overrides)
    prompts = [encode_prompt(tokenizer, p.problem, style, chat) for p in problems]
    trajs, metrics = rollout(generator, prompts, tokenizer, sandbox, style, cfg)
    grades = [grade_detailed(t.text, problems[t.group_index].answer, code_ran=code_ran(t),
                             exec_penalty=exec_penalty) for t in trajs]
    n = max(len(grades), 1)
    metrics["reward/mean"] = sum(g.score for g in grades) / n
    metrics["reward/accuracy"] = sum(g.correct for g in grades) / n
    metrics["reward/no_answer_ratio"] = sum(g.reason == "no_answer" for g in grades) / n
    return trajs, grades, metrics
