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
    """None when the response wrote no code; False when any of its code did not execute cleanly.

    ToRL's optional penalty is for "code that cannot execute": one failing block is enough, even if a
    later fix ran (a model that learns to write a failing block before every answer must still pay).
    Blocks over the tool-call cap were never offered to the sandbox and do not count.
    """
    calls = [c for c in t.tool_calls if c.status != "capped"]
    if not calls:
        return None
    return all(c.status == "ok" for c in calls)


def grade_trajectory(t: Trajectory, reference: str, style: TagStyle | None = None, *, lenient: bool = False,
                     exec_penalty: float = 0.0) -> Grade:
    """Grade what the model wrote (`Trajectory.model_text`: interpreter output left out), by the
    style's answer rule (ReTool: inside `<answer>`). Used by RL rewards and every evaluation."""
    return grade_detailed(t.model_text, reference, style=style, lenient=lenient, code_ran=code_ran(t),
                          exec_penalty=exec_penalty)


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
    grades = [grade_trajectory(t, problems[t.group_index].answer, style, exec_penalty=exec_penalty) for t in trajs]
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
