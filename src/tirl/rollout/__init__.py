"""Rollouts: the generate -> execute -> append loop (`loop`), its record (`trajectory`), its settings
(`config`), and a round of RL play, rollout then grade (`episodes`, imported on its own: it loads the
grader).

`tirl.rollout.rollout` and `tirl.rollout.Trajectory` are public names; the rest is re-exported so that
`from tirl.rollout import RolloutConfig, encode_prompt` keeps working.
"""

from tirl.rollout.config import RolloutConfig, check_prompt_and_rollout
from tirl.rollout.loop import (
    CAP_MESSAGE,
    EMPTY_CODE_MESSAGE,
    HARD_OUTPUT_CHARS,
    encode_prompt,
    prompt_text,
    rollout,
)
from tirl.rollout.trajectory import RolloutResult, ToolCall, Trajectory

__all__ = [
    "CAP_MESSAGE", "EMPTY_CODE_MESSAGE", "HARD_OUTPUT_CHARS", "RolloutConfig", "RolloutResult", "ToolCall",
    "Trajectory", "check_prompt_and_rollout", "encode_prompt", "prompt_text", "rollout",
]
