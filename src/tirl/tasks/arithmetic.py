"""A built-in task where the tool matters: exact arithmetic a tiny model cannot do in its head.

Each problem asks for an exact integer (a product, a sum of products, a modular power, a digit
sum); copying the numbers into one line of Python gets it right every time, while computing in text
fails for a model of a few million parameters. That is what makes the demo show tool use being
learned rather than memorised.

Splits are deterministic and disjoint: a problem belongs to the test split when a hash of its text
falls in the held-out tenth, so no seed choice can leak test problems into training.

Simplifications: one phrasing per kind (a tiny model learns formats, not language); answers are
non-negative integers. Not covered: problems needing several dependent code calls.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass
from typing import Any, Callable

KINDS = ("mul", "add_mul", "modpow", "digit_sum")
LEVEL_DIGITS = {1: 2, 2: 3, 3: 4}
"""Operand digits per difficulty level; level 2 (3x3-digit products) is the demo default."""


@dataclass(frozen=True)
class TaskItem:
    id: str
    problem: str
    answer: str
    code: str
    """One Python program whose printed output is the answer (what a good trace runs)."""
    expression: str
    """The computation written as a person would (what a text-only trace works on)."""
    kind: str
    level: int
    broken_code: str = ""
    """A first program with a realistic mistake, for error-then-fix traces ("" = derive one)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _num(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


# Each maker returns (problem, code, expression).
def _mul(rng: random.Random, d: int) -> tuple[str, str, str]:
    a, b = _num(rng, d), _num(rng, d)
    return f"What is {a} * {b}?", f"print({a} * {b})", f"{a} * {b}"


def _add_mul(rng: random.Random, d: int) -> tuple[str, str, str]:
    a, b, c = _num(rng, d + 1), _num(rng, d), _num(rng, d)
    return f"What is {a} + {b} * {c}?", f"print({a} + {b} * {c})", f"{a} + {b} * {c}"


def _modpow(rng: random.Random, d: int) -> tuple[str, str, str]:
    a, e, m = _num(rng, d), rng.randint(10, 99), _num(rng, d)
    return f"What is {a}^{e} mod {m}?", f"print(pow({a}, {e}, {m}))", f"{a}^{e} mod {m}"


def _digit_sum(rng: random.Random, d: int) -> tuple[str, str, str]:
    a, b = _num(rng, d), _num(rng, d)
    return (f"What is the sum of the digits of {a} * {b}?",
            f"print(sum(int(c) for c in str({a} * {b})))", f"digit sum of {a} * {b}")


_MAKERS: dict[str, Callable[[random.Random, int], tuple[str, str, str]]] = {
    "mul": _mul, "add_mul": _add_mul, "modpow": _modpow, "digit_sum": _digit_sum,
}


def run_code(code: str) -> str:
    """The output of one of this module's own programs (trusted: built here, never model-written)."""
    lines: list[str] = []
    exec(compile(code, "<task>", "exec"), {"print": lambda *a: lines.append(" ".join(map(str, a)))})
    return "\n".join(lines)


def in_test_split(problem: str) -> bool:
    return hashlib.sha256(problem.encode()).digest()[0] % 10 == 0


def generate(
    n: int,
    *,
    split: str = "train",
    seed: int = 0,
    level: int = 2,
    kinds: tuple[str, ...] | list[str] = ("mul",),
    answer_digits: int = 0,
) -> list[TaskItem]:
    """`n` distinct problems of `split` ('train' or 'test'), deterministic in (`seed`, `level`, `kinds`);
    with `answer_digits`, only problems whose answer has that many digits (0 = any)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if level not in LEVEL_DIGITS:
        raise ValueError(f"level must be one of {sorted(LEVEL_DIGITS)}, not {level}")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown task kind(s) {sorted(unknown)}; known: {', '.join(KINDS)}")
    rng = random.Random(f"{seed}-{level}-{','.join(kinds)}")
    digits = LEVEL_DIGITS[level]

    def draw(kept: int) -> tuple[str, Callable[[int], TaskItem]]:
        for _ in range(1000):
            kind = kinds[rng.randrange(len(kinds))]
            problem, code, expression = _MAKERS[kind](rng, digits)
            answer = run_code(code)
            if not answer_digits or len(answer) == answer_digits:
                return problem, lambda i: TaskItem(f"{kind}-{split}-{i}", problem, answer, code, expression, kind,
                                                   level)
        raise ValueError(f"no {'/'.join(kinds)} problem at level {level} has a {answer_digits}-digit answer")

    return draw_distinct(n, split, draw, in_test_split, f"problems at level {level}")


def draw_distinct(n: int, split: str, draw: Callable[[int], tuple[str, Callable[[int], TaskItem]]],
                  in_test: Callable[[str], bool], what: str) -> list[TaskItem]:
    """`n` items with distinct problems on `split`'s side of `in_test` (the built-in tasks' one draw loop).

    `draw(kept)` makes a candidate from the task's own seeded generator (`kept` = items kept so far) as
    (problem text, a function building the item at index i); a duplicate or a problem of the other split
    is dropped. `what` names the items in the error when the space runs out."""
    items: list[TaskItem] = []
    seen: set[str] = set()
    attempts = 0
    while len(items) < n:
        attempts += 1
        if attempts > 200 * n + 1000:
            raise ValueError(f"cannot draw {n} distinct {split} {what}")
        problem, make = draw(len(items))
        if problem in seen or in_test(problem) != (split == "test"):
            continue
        seen.add(problem)
        items.append(make(len(items)))
    return items
