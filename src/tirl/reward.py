"""`tirl.reward`, the grader's first home: `grade`, `grade_detailed` and `Grade` are public names
(docs/DESIGN's list; user reward functions return `tirl.reward.Grade`). They live in
`tirl.rewards.math_grade` now."""

from tirl.rewards.math_grade import CORRECT, INCORRECT, INFRA_FAILED, Grade, grade, grade_detailed, stated_number

__all__ = ["CORRECT", "INCORRECT", "INFRA_FAILED", "Grade", "grade", "grade_detailed", "stated_number"]
