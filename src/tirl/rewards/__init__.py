"""Rewards: the built-in answer grade and the reward functions a run adds to it or puts in its place.

* `math_grade` — grading a finished response against a reference: +1 / -1 (`grade`, `grade_detailed`,
  `Grade`), math-verify in bounded worker processes;
* `functions` — one user reward function: loaded from a module or a file, called per sample, batched as
  TRL does or as verl's `compute_score`, its values checked;
* `combine` — the run's reward (`reward.functions`: weighted functions, `correct` the grade among them),
  `Rewards`, applied to a batch of graded samples.

No torch in this package: the grader runs in worker processes and under `tirl --help`.
"""

from tirl.rewards.combine import (GRADE_FN, RewardConfig, RewardFunctionConfig, Rewards, component_means)
from tirl.rewards.functions import RewardFunctionError, call_style, load_reward_function
from tirl.rewards.math_grade import INFRA_FAILED, Grade, grade, grade_detailed, stated_number

__all__ = ["GRADE_FN", "INFRA_FAILED", "Grade", "RewardConfig", "RewardFunctionConfig", "RewardFunctionError",
           "Rewards", "call_style", "component_means", "grade", "grade_detailed", "load_reward_function",
           "stated_number"]
