"""User reward functions, composed with the math grader: `reward.function: "module.path:callable"`.

The one signature::

    def my_reward(problem, response, trajectory, reference) -> float | tirl.reward.Grade:
        # problem:    the Problem (`.id`, `.problem`, `.answer`, `.extra` holds the row's other fields)
        # response:   the text the model wrote (interpreter output left out)
        # trajectory: the `tirl.rollout.Trajectory` (`.tool_calls`: code, status, output of each call;
        #             `.segments`: the whole response as (writer, text) runs, writer "model" or
        #             "interpreter", in order, so a reward can tell who wrote what)
        # reference:  the reference answer (a string)
        return 0.1 if trajectory.tool_calls else 0.0

Provenance: an answer or a format marker that only the interpreter printed (code that prints
`\\boxed{42}`) is not the model's; `response` and the model's segments never hold it, so a reward
that reads them cannot be gamed that way (tested for the built-in grade and a format reward). A sample
the infrastructure failed (`trajectory.infra_failed`) is never passed to the function.

`reward.combine: add` (default) adds the returned score to the math grader's +1/-1 (a shaping term;
`correct` stays the grader's); `replace` uses it alone (a returned Grade keeps its own `correct`, a
float counts as correct when > 0). `module.path` is imported as usual (it must be importable: installed,
or on PYTHONPATH); `path/to/file.py:callable` loads a file directly. A failing, missing or non-finite
reward stops the run with a message naming the function and the problem: a silent 0 would train on it.
No torch here.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from tirl.config import UserError
from tirl.reward import Grade

COMBINE = ("add", "replace")


@dataclass
class RewardConfig:
    function: Optional[str] = None
    """A user reward, "module.path:callable" or "file.py:callable"; None = the math grader alone."""
    combine: str = "add"
    """`add`: math score + user score; `replace`: the user score alone."""

    def validate(self) -> None:
        if self.combine not in COMBINE:
            raise UserError(f"reward.combine must be one of {', '.join(COMBINE)}, not {self.combine!r}")
        if self.function is not None and ":" not in self.function:
            raise UserError(f"reward.function must look like 'module.path:callable', got {self.function!r}")


class RewardFunctionError(UserError):
    """A user reward function that cannot be loaded or failed; the message names it (and the problem)."""


def load_reward_function(spec: str) -> Callable[..., Any]:
    """The callable `spec` names, or RewardFunctionError saying what is missing."""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise RewardFunctionError(f"reward.function {spec!r}: expected 'module.path:callable'")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise RewardFunctionError(f"reward.function {spec!r}: no such file {where}")
            module_spec = importlib.util.spec_from_file_location(f"tirl_user_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except RewardFunctionError:
        raise
    except Exception as e:  # the user's module failed to import: say which and why, in one line
        raise RewardFunctionError(f"reward.function {spec!r}: importing {where} failed: "
                                  f"{type(e).__name__}: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise RewardFunctionError(f"reward.function {spec!r}: {where} has no callable {name!r}")
    return fn


class UserReward:
    """A loaded reward function and how to combine it; call it on each graded response."""

    def __init__(self, cfg: RewardConfig):
        cfg.validate()
        self.cfg = cfg
        self.fn = load_reward_function(cfg.function) if cfg.function else None

    def __call__(self, problem: Any, response: str, trajectory: Any, math_grade: Grade) -> Grade:
        if self.fn is None:
            return math_grade
        try:
            out = self.fn(problem, response, trajectory, math_grade.reference)
        except Exception as e:
            raise RewardFunctionError(f"reward.function {self.cfg.function} failed on problem "
                                      f"{getattr(problem, 'id', '?')}: {type(e).__name__}: {e}") from e
        user = out if isinstance(out, Grade) else None
        score = out.score if user else out
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise RewardFunctionError(f"reward.function {self.cfg.function} returned {out!r} on problem "
                                      f"{getattr(problem, 'id', '?')}: expected a finite number or a Grade")
        if self.cfg.combine == "replace":
            return user or dataclasses.replace(math_grade, score=float(score), correct=score > 0, reason="custom")
        return dataclasses.replace(math_grade, score=math_grade.score + float(score))
