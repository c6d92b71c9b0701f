"""The run's reward: weighted reward functions, the built-in answer grade among them.

    reward:
      functions:
        - {function: correct, weight: 1.0}                    # the +1/-1 answer grade (math_grade)
        - {function: "my_rewards:tool_bonus", weight: 0.5}    # a module (the working directory is importable)
        - {function: "rewards/fmt.py:boxed", weight: 0.2, name: format}   # a file

A sample's score is the weighted sum of the functions' values; each value is kept on its `Grade`
(`Grade.rewards`) and logged as `reward/<name>` (train and held-out evaluation), the sum stays
`reward/mean`. The list is the whole reward, as TRL's `reward_funcs`: leave `correct` out and the answer
grade is not in it (it still decides `Grade.correct` and `reward/accuracy`). How each function is called
(per sample, batched as TRL, verl's `compute_score`) is read from its signature (`tirl.rewards.functions`).
From Python, `tirl.train(reward_funcs=[fn, ...], reward_weights=[...])` hands callables over; they stand in
the saved config as `python:NAME`.

The older form, one `reward.function` with `reward.combine`: `add` is [correct, function], both weight 1;
`replace` is the function alone, and its returned Grade (or, for a number, its sign) also decides
`correct`. Without either the grade alone is the reward and nothing here runs (`Rewards.of` is None), so
such a run is bit for bit what it was. A sample the infrastructure failed is never passed to a function.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from tirl.config import UserError
from tirl.rewards.functions import RewardFunctionError, call_style, load_reward_function, scores
from tirl.rewards.math_grade import Grade

COMBINE = ("add", "replace")
GRADE_FN = "correct"
PYTHON = "python:"
RESERVED = ("mean", "std", "accuracy", "no_answer_ratio", "frac_zero_std")
"""`reward/*` figures the trainer logs already: no function may take their names."""
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass
class RewardFunctionConfig:
    """One entry of `reward.functions`."""

    function: str = GRADE_FN
    """`correct` (the +1/-1 answer grade), "module.path:callable", "path/file.py:callable", or "python:NAME"
    (a callable handed to `tirl.train(reward_funcs=...)`)."""
    weight: float = 1.0
    name: Optional[str] = None
    """Its metric name, `reward/<name>`; default: the callable's name (`correct` for the grade)."""

    @property
    def metric_name(self) -> str:
        return self.name or self.function.rpartition(":")[2]


@dataclass
class RewardConfig:
    function: Optional[str] = None
    """One user reward, "module.path:callable" or "file.py:callable", combined by `combine`; None = the math
    grader alone (or `functions`)."""
    combine: str = "add"
    """With `function`: `add` = math score + user score; `replace` = the user score alone."""
    functions: list[RewardFunctionConfig] = field(default_factory=list)
    """Weighted reward functions, the whole reward (TRL's reward_funcs / reward_weights): a list of
    {function, weight, name}, function = `correct` (the +1/-1 grade), "module:callable", "file.py:callable";
    per-sample, TRL's batched or verl's signature, read from its parameters; each logged as reward/<name>."""

    def entries(self) -> list[RewardFunctionConfig]:
        """The reward as a list of weighted functions, whichever form the config used."""
        if self.functions:
            return [RewardFunctionConfig(**f) if isinstance(f, dict) else f for f in self.functions]
        if self.function is None:
            return []
        user = RewardFunctionConfig(self.function)
        return [user] if self.combine == "replace" else [RewardFunctionConfig(GRADE_FN), user]

    def validate(self) -> None:
        if self.combine not in COMBINE:
            raise UserError(f"reward.combine must be one of {', '.join(COMBINE)}, not {self.combine!r}")
        if self.function is not None and ":" not in self.function:
            raise UserError(f"reward.function must look like 'module.path:callable', got {self.function!r}")
        if self.function is not None and self.functions:
            raise UserError("set reward.function or reward.functions, not both (list the function in "
                            "reward.functions, beside {function: correct})")
        seen: dict[str, int] = {}
        for i, e in enumerate(self.entries()):
            where = f"reward.functions[{i}]"
            if e.function != GRADE_FN and ":" not in e.function:
                raise UserError(f"{where}.function must be 'correct', 'module.path:callable' or 'file.py:callable', "
                                f"got {e.function!r}")
            if isinstance(e.weight, bool) or not isinstance(e.weight, (int, float)) or not math.isfinite(e.weight):
                raise UserError(f"{where}.weight must be a finite number, got {e.weight!r}")
            name = e.metric_name
            if not _NAME.fullmatch(name) or name in RESERVED:
                why = "is a figure the trainer logs" if name in RESERVED else "must be letters, digits, _ . -"
                raise UserError(f"{where}: the name {name!r} {why}; set {where}.name")
            if name in seen:
                raise UserError(f"reward.functions[{seen[name]}] and [{i}] are both named {name!r}; set a name on one")
            seen[name] = i


class _Term:
    """One weighted function, loaded."""

    def __init__(self, entry: RewardFunctionConfig, callables: Mapping[str, Callable[..., Any]]):
        self.name, self.weight = entry.metric_name, float(entry.weight)
        self.fn: Callable[..., Any] | None = None
        self.style = GRADE_FN
        if entry.function == GRADE_FN:
            return
        if entry.function.startswith(PYTHON):
            self.fn = callables.get(entry.function[len(PYTHON):])
            if self.fn is None:
                raise RewardFunctionError(f"reward function {entry.function!r} was handed over from Python "
                                          "(tirl.train(reward_funcs=...)) and cannot be loaded here; pass it "
                                          "again, or name it as 'module:callable'")
        else:
            self.fn = load_reward_function(entry.function)
        self.style = call_style(self.fn, self.name)

    def values(self, problems: Sequence[Any], trajs: Sequence[Any], grades: Sequence[Grade]) -> list[Any]:
        if self.fn is None:
            return [g.score for g in grades]
        return scores(self.fn, self.style, self.name, problems, trajs, grades)


class Rewards:
    """The loaded reward functions; `rewards(problems, trajectories, grades)` -> each sample's new Grade
    (score = the weighted sum, `rewards` = each function's value). `problems[i]` is trajectory i's."""

    def __init__(self, cfg: RewardConfig, callables: Mapping[str, Callable[..., Any]] | None = None):
        cfg.validate()
        self.replace = cfg.function is not None and cfg.combine == "replace"
        self.terms = [_Term(e, callables or {}) for e in cfg.entries()]

    @classmethod
    def of(cls, cfg: RewardConfig, callables: Mapping[str, Callable[..., Any]] | None = None) -> Rewards | None:
        """The config's reward functions, or None when the grade alone is the reward."""
        return cls(cfg, callables) if cfg.entries() else None

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.terms]

    def __call__(self, problems: Sequence[Any], trajs: Sequence[Any], grades: Sequence[Grade]) -> list[Grade]:
        live = [i for i, t in enumerate(trajs) if not t.infra_failed]
        out = list(grades)
        if not live:
            return out
        ps, ts, gs = ([xs[i] for i in live] for xs in (problems, trajs, grades))
        values = [t.values(ps, ts, gs) for t in self.terms]
        for k, i in enumerate(live):
            out[i] = self._combined(gs[k], [v[k] for v in values])
        return out

    def _combined(self, grade: Grade, values: list[Any]) -> Grade:
        plain = {t.name: (v.score if isinstance(v, Grade) else v) for t, v in zip(self.terms, values)}
        score = float(sum(t.weight * plain[t.name] for t in self.terms if plain[t.name] is not None))
        if self.replace:  # the older form: the function's Grade, or its sign, decides `correct` too
            user = values[0]
            base = user if isinstance(user, Grade) else dataclasses.replace(grade, correct=score > 0, reason="custom")
            return dataclasses.replace(base, score=score, rewards=plain)
        return dataclasses.replace(grade, score=score, rewards=plain)


def component_means(rewards: Iterable[Mapping[str, float | None] | None]) -> dict[str, float]:
    """{name: mean value} over samples' `Grade.rewards` (None entries and samples without any left out)."""
    sums: dict[str, list[float]] = {}
    for r in rewards:
        for name, v in (r or {}).items():
            if v is not None:
                sums.setdefault(name, []).append(v)
    return {name: sum(vs) / len(vs) for name, vs in sums.items()}
