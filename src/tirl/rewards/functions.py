"""One reward function: where it comes from, how it is called (read from its signature), what it returned.

Three signatures, told apart by their parameter names::

    # per sample (tirl's own): problem, the model's text, the trajectory, the reference answer
    def tool_bonus(problem, response, trajectory, reference) -> float | Grade: ...

    # batched, as TRL writes them: every row's prompt and completion, the data's other columns as lists
    def short(prompts, completions, **kwargs) -> list[float | None]: ...

    # verl's compute_score: one sample, its data_source, text and ground truth, the row's extra_info
    def compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float | dict: ...

A parameter named `completions` makes a function batched; `solution_str` makes it verl's; anything else
must take the four per-sample arguments. A batched function gets `prompts` (the problems' text),
`completions` (what the model wrote, interpreter output left out), `answer` (the references),
`trajectories`, and each column of the rows (`Problem.extra`) by its name; when it has no `**kwargs`, only
the names it declares. It may return None for a sample it does not apply to (TRL's rule: 0 in the
weighted sum, left out of its mean). Any other failure stops the run with one line naming the function:
it cannot be imported, it raised, it returned the wrong number of values or something not a finite number.
A silent 0 would train on it. No torch here.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import numbers
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from tirl.config import UserError
from tirl.rewards.math_grade import Grade

STYLES = ("sample", "batch", "verl")


class RewardFunctionError(UserError):
    """A reward function that cannot be loaded, failed, or returned what is not a reward; the message names it."""


def load_reward_function(spec: str) -> Callable[..., Any]:
    """The callable `spec` ("module.path:callable" or "path/file.py:callable") names, or
    RewardFunctionError saying what is missing. The working directory is importable, as for `python -m`."""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise RewardFunctionError(f"reward function {spec!r}: expected 'module.path:callable' or 'file.py:callable'")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise RewardFunctionError(f"reward function {spec!r}: no such file {where}")
            module_spec = importlib.util.spec_from_file_location(f"tirl_user_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.append(str(Path.cwd()))  # `mymod:fn` beside the config works under `tirl train` too
            module = importlib.import_module(where)
    except RewardFunctionError:
        raise
    except Exception as e:  # the user's module failed to import: say which and why, in one line
        raise RewardFunctionError(f"reward function {spec!r}: importing {where} failed: "
                                  f"{type(e).__name__}: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise RewardFunctionError(f"reward function {spec!r}: {where} has no callable {name!r}")
    return fn


def call_style(fn: Callable[..., Any], name: str) -> str:
    """"batch", "verl" or "sample", from the parameter names (see the module docstring)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: take it as per-sample
        return "sample"
    if "completions" in params:
        return "batch"
    if "solution_str" in params:
        return "verl"
    try:
        inspect.signature(fn).bind(None, None, None, None)
    except TypeError:
        raise RewardFunctionError(
            f"reward function {name}: takes ({', '.join(params)}); expected (problem, response, trajectory, "
            f"reference), TRL's (prompts, completions, **kwargs) or verl's (data_source, solution_str, "
            f"ground_truth, extra_info)") from None
    return "sample"


def scores(fn: Callable[..., Any], style: str, name: str, problems: Sequence[Any], trajs: Sequence[Any],
           grades: Sequence[Grade]) -> list[Any]:
    """`fn`'s value for each sample: a finite float, a Grade (per-sample functions) or None (batched ones)."""
    if style == "batch":
        out = _call(name, None, lambda: fn(**_batch_arguments(fn, problems, trajs, grades)))
        if isinstance(out, (str, bytes)) or not hasattr(out, "__len__") or len(out) != len(trajs):
            got = f"{len(out)} values" if hasattr(out, "__len__") and not isinstance(out, (str, bytes)) else repr(out)
            raise RewardFunctionError(f"reward function {name} returned {got} for {len(trajs)} completions: "
                                      "expected a list with one number (or None) per completion")
        return [_checked(name, p, v, none_ok=True) for p, v in zip(problems, list(out))]
    values = []
    for p, t, g in zip(problems, trajs, grades):
        if style == "verl":
            v = _call(name, p, lambda: fn(data_source=getattr(p, "data_source", None), solution_str=t.model_text,
                                          ground_truth=g.reference, extra_info=_extra(p).get("extra_info")))
            v = v.get("score") if isinstance(v, dict) else v  # verl's dict: the reward is under "score"
        else:
            v = _call(name, p, lambda: fn(p, t.model_text, t, g.reference))
        values.append(_checked(name, p, v, grade_ok=style == "sample"))
    return values


def _batch_arguments(fn: Callable[..., Any], problems: Sequence[Any], trajs: Sequence[Any],
                     grades: Sequence[Grade]) -> dict[str, Any]:
    columns = sorted({k for p in problems for k in _extra(p)})
    kwargs = {k: [_extra(p).get(k) for p in problems] for k in columns}
    kwargs.update(prompts=[p.problem for p in problems], completions=[t.model_text for t in trajs],
                  answer=[g.reference for g in grades], trajectories=list(trajs))
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def _extra(problem: Any) -> dict[str, Any]:
    """The row's other columns; none for a built-in task's problem."""
    return getattr(problem, "extra", None) or {}


def _call(name: str, problem: Any, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as e:
        on = f" on problem {problem.id}" if problem is not None else ""
        raise RewardFunctionError(f"reward function {name} failed{on}: {type(e).__name__}: {e}") from e


def _checked(name: str, problem: Any, value: Any, *, none_ok: bool = False, grade_ok: bool = False) -> Any:
    if value is None and none_ok:
        return None
    if isinstance(value, Grade) and grade_ok:
        number = value.score
    else:
        number = value
    if isinstance(number, bool) or not isinstance(number, numbers.Real) or not math.isfinite(number):
        what = "a finite number or None" if none_ok else "a finite number" + (" or a Grade" if grade_ok else "")
        raise RewardFunctionError(f"reward function {name} returned {value!r} on problem "
                                  f"{getattr(problem, 'id', '?')}: expected {what}")
    return value if isinstance(value, Grade) else float(number)
