"""A built-in word-problem task where the tool matters for a small pretrained model, in real language.

Each problem is a short story with an exact integer answer two or three dependent steps away: bulk
costs, unit conversions (km/m, h/min/s), percentages, remainders, day counts between dates, sums of
ranges, savings over months. A 135M-parameter model reads the story well enough to write the one or
two lines of Python that compute it, but cannot multiply 4-digit numbers or count days between dates
in its head, so text alone fails where the interpreter succeeds.

Every kind has several phrasings and draws names, objects and numbers from a seeded generator, so the
model must read the text rather than memorise a template. Difficulty: `level` 1 uses small numbers
(a text-only model can get some right, which gives the no-tool baseline a reward signal), level 3 large
ones, and level 2 (the default) draws each problem easy with probability 0.3, else hard.

Splits are deterministic and disjoint: a problem is in the test split when a hash of its text falls in
the held-out fifth, whatever the seed, so no seed or size choice can leak a test problem into training.

Each item carries the program that answers it (`code`, run in the sandbox to build SFT traces), the
worked steps a careful person would write in text (`steps`, for text traces), and a broken first
program (`broken_code`) with a realistic mistake (a missing import, a misspelled name) for
error-then-fix traces.

Not covered: non-integer answers, problems needing more than one program, other languages.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import random
from typing import Callable

from tirl.tasks.arithmetic import TaskItem, draw_distinct, run_code

WORD_KINDS = ("bulk_cost", "distance", "duration", "discount", "leftover", "days_between", "range_sum", "savings")
EASY_SHARE = 0.3
"""Share of easy problems at level 2: enough reward for the text-only baseline to learn from."""

_NAMES = ("Ana", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Keiko", "Liam",
          "Maya", "Noor", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yara")
_GOODS = (("crates", "bottles"), ("boxes", "pencils"), ("packs", "batteries"), ("cartons", "eggs"),
          ("bags", "apples"), ("trays", "cupcakes"), ("cases", "cans"), ("bundles", "sticks"))
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")

# A maker returns (problem, code, steps, broken_code): `steps` are "expr = value" lines a text trace shows.
Made = tuple[str, str, tuple[str, ...], str]


def _n(rng: random.Random, hard: bool, easy: tuple[int, int], big: tuple[int, int]) -> int:
    lo, hi = big if hard else easy
    return rng.randint(lo, hi)


def _typo(code: str, name: str) -> str:
    """`code` with the first *use* of variable `name` misspelled (a NameError the fix repairs)."""
    head, sep, tail = code.partition("\n")
    return head + sep + tail.replace(name, name + "s", 1) if sep else code.replace(name, name + "s", 1)


def _bulk_cost(rng: random.Random, hard: bool) -> Made:
    who = rng.choice(_NAMES)
    outer, inner = rng.choice(_GOODS)
    a = _n(rng, hard, (2, 9), (120, 980))
    b = _n(rng, hard, (2, 12), (12, 48))
    c = _n(rng, hard, (2, 9), (17, 95))
    problem = rng.choice((
        f"{who} orders {a} {outer} of {inner}. Each of the {outer} holds {b} {inner}, and each of the {inner} "
        f"costs {c} cents. How many cents does the order cost in total?",
        f"A shop buys {a} {outer}, each with {b} {inner} inside. One of the {inner} costs {c} cents. "
        f"What is the total cost of the {inner}, in cents?",
        f"There are {b} {inner} in every one of {a} {outer}. If {who} pays {c} cents per item, how many cents "
        f"does {who} pay altogether?",
    ))
    items, total = a * b, a * b * c
    code = f"items = {a} * {b}\nprint(items * {c})"
    return problem, code, (f"{a} * {b} = {items} {inner}", f"{items} * {c} = {total} cents"), _typo(code, "items")


def _distance(rng: random.Random, hard: bool) -> Made:
    who = rng.choice(_NAMES)
    km = _n(rng, hard, (1, 5), (3, 42))
    m = rng.randint(105, 985) if hard else rng.randint(1, 9) * 100
    days = _n(rng, hard, (2, 7), (13, 365))
    verb = rng.choice(("runs", "cycles", "walks", "swims"))
    problem = rng.choice((
        f"{who} {verb} {km} km and {m} m every day for {days} days. How many meters is that in total?",
        f"Every day for {days} days, {who} {verb} a route of {km} kilometers {m} meters. What total distance "
        f"does {who} cover, in meters?",
        f"A route is {km} km {m} m long. {who} {verb} it once a day for {days} days. Give the total distance "
        f"in meters.",
    ))
    per_day = km * 1000 + m
    code = f"per_day = {km} * 1000 + {m}\nprint(per_day * {days})"
    return (problem, code, (f"{km} * 1000 + {m} = {per_day} m per day", f"{per_day} * {days} = {per_day * days} m"),
            _typo(code, "per_day"))


def _duration(rng: random.Random, hard: bool) -> Made:
    h = _n(rng, hard, (1, 3), (2, 11))
    mins = _n(rng, hard, (1, 30), (7, 59))
    secs = _n(rng, hard, (0, 0), (3, 59))
    days = _n(rng, hard, (2, 5), (11, 90))
    thing = rng.choice(("A machine", "A server", "A pump", "A printer", "A conveyor belt"))
    clock = f"{h} hours {mins} minutes" + (f" {secs} seconds" if secs else "")
    problem = rng.choice((
        f"{thing} runs for {clock} each day. How many seconds does it run in {days} days?",
        f"For {days} days in a row, {thing.lower()} works {clock} a day. What is its total running time in "
        f"seconds?",
        f"{thing} is switched on for {clock} every day, {days} days in total. Find the total time in seconds.",
    ))
    per_day = h * 3600 + mins * 60 + secs
    code = f"per_day = {h} * 3600 + {mins} * 60 + {secs}\nprint(per_day * {days})"
    return (problem, code, (f"{h} * 3600 + {mins} * 60 + {secs} = {per_day} s per day",
                            f"{per_day} * {days} = {per_day * days} s"), _typo(code, "per_day"))


def _discount(rng: random.Random, hard: bool) -> Made:
    who = rng.choice(_NAMES)
    pct = rng.choice((5, 10, 15, 20, 25, 30, 35, 40, 45, 60, 75) if hard else (10, 20, 25, 50))
    price = _n(rng, hard, (1, 9), (11, 499)) * 20  # a multiple of 20 keeps every listed discount exact
    qty = _n(rng, hard, (1, 3), (3, 64))
    item = rng.choice(("bikes", "chairs", "lamps", "tickets", "jackets", "tablets", "tents"))
    problem = rng.choice((
        f"{item.capitalize()} cost {price} dollars each. {who} buys {qty} of them with a {pct}% discount on the "
        f"total. How many dollars does {who} pay?",
        f"A store takes {pct}% off every purchase. {who} buys {qty} {item} at {price} dollars each. What does "
        f"{who} pay, in dollars?",
        f"{who} gets {pct} percent off an order of {qty} {item} priced at {price} dollars apiece. What is the "
        f"final price in dollars?",
    ))
    total = price * qty
    pay = total * (100 - pct) // 100
    code = f"total = {price} * {qty}\nprint(total * (100 - {pct}) // 100)"
    return (problem, code, (f"{price} * {qty} = {total} dollars", f"{total} * {100 - pct} / 100 = {pay} dollars"),
            _typo(code, "total"))


def _leftover(rng: random.Random, hard: bool) -> Made:
    outer, inner = rng.choice(_GOODS)
    n = _n(rng, hard, (20, 99), (10_000, 999_999))
    k = _n(rng, hard, (3, 9), (12, 97))
    problem = rng.choice((
        f"A factory packs {n} {inner} into {outer} of {k}. How many {inner} are left over after filling as many "
        f"{outer} as possible?",
        f"{n} {inner} are shared into {outer} holding {k} each, and only full {outer} are shipped. How many "
        f"{inner} stay behind?",
        f"If you put {n} {inner} in groups of {k}, how many {inner} remain that do not make a full group?",
    ))
    code = f"print({n} % {k})"
    full = n // k
    return (problem, code, (f"{n} // {k} = {full} full {outer}", f"{n} - {full} * {k} = {n % k}"),
            f"print({n} mod {k})")


def _date(rng: random.Random, year_lo: int, year_hi: int) -> _dt.date:
    return _dt.date(rng.randint(year_lo, year_hi), rng.randint(1, 12), rng.randint(1, 28))


def _days_between(rng: random.Random, hard: bool) -> Made:
    if hard:
        a = _date(rng, 1990, 2030)
        b = _date(rng, 1990, 2030)
    else:
        a = _date(rng, 2024, 2024)
        b = a + _dt.timedelta(days=rng.randint(2, 25))
    a, b = min(a, b), max(a, b)
    if a == b:
        b = a + _dt.timedelta(days=1)

    def say(d: _dt.date) -> str:
        return f"{_MONTHS[d.month - 1]} {d.day}, {d.year}"

    problem = rng.choice((
        f"How many days are there from {say(a)} to {say(b)}?",
        f"A project starts on {say(a)} and ends on {say(b)}. How many days after the start does it end?",
        f"{rng.choice(_NAMES)} planted a tree on {say(a)} and measured it on {say(b)}. How many days passed?",
    ))
    code = (f"from datetime import date\n"
            f"print((date({b.year}, {b.month}, {b.day}) - date({a.year}, {a.month}, {a.day})).days)")
    days = (b - a).days
    broken = code.split("\n", 1)[1]  # the classic slip: the import forgotten
    return problem, code, (f"days from {say(a)} to {say(b)} = {days}",), broken


def _range_sum(rng: random.Random, hard: bool) -> Made:
    lo = _n(rng, hard, (1, 40), (101, 999))
    hi = lo + _n(rng, hard, (3, 12), (150, 5000))
    problem = rng.choice((
        f"What is the sum of all whole numbers from {lo} to {hi}, both included?",
        f"Add up every integer from {lo} through {hi}. What total do you get?",
        f"A counter adds each number from {lo} up to {hi} to a running total. What is the final total?",
    ))
    code = f"print(sum(range({lo}, {hi} + 1)))"
    count = hi - lo + 1
    return (problem, code, (f"{count} numbers, average ({lo} + {hi}) / 2", f"{count} * {lo + hi} / 2 = "
                            f"{count * (lo + hi) // 2}"), f"print(sum(range({lo}, {hi} + 1))")


def _savings(rng: random.Random, hard: bool) -> Made:
    who = rng.choice(_NAMES)
    per = _n(rng, hard, (5, 20), (115, 1950))
    years = _n(rng, hard, (0, 0), (1, 6))
    months = _n(rng, hard, (2, 6), (1, 11))
    spend = _n(rng, hard, (1, 9), (101, 999))
    span = (f"{years} years and {months} months" if years else f"{months} months")
    problem = rng.choice((
        f"{who} saves {per} dollars every month for {span}, then spends {spend} dollars on a trip. How many "
        f"dollars are left?",
        f"For {span}, {who} puts {per} dollars a month into a jar. Afterwards {spend} dollars are taken out. "
        f"How much money is in the jar?",
        f"{who} deposits {per} dollars monthly for {span} and later withdraws {spend} dollars. What is the "
        f"balance in dollars?",
    ))
    n_months = years * 12 + months
    saved = per * n_months
    code = f"months = {years} * 12 + {months}\nprint({per} * months - {spend})"
    return (problem, code, (f"{years} * 12 + {months} = {n_months} months", f"{per} * {n_months} = {saved}",
                            f"{saved} - {spend} = {saved - spend} dollars"), _typo(code, "months"))


_MAKERS: dict[str, Callable[[random.Random, bool], Made]] = {
    "bulk_cost": _bulk_cost, "distance": _distance, "duration": _duration, "discount": _discount,
    "leftover": _leftover, "days_between": _days_between, "range_sum": _range_sum, "savings": _savings,
}


def in_test_split(problem: str) -> bool:
    """The held-out fifth, by a hash of the problem text (independent of seed and size)."""
    return hashlib.sha256(b"words:" + problem.encode()).digest()[0] % 5 == 0


def generate_words(
    n: int,
    *,
    split: str = "train",
    seed: int = 0,
    level: int = 2,
    kinds: tuple[str, ...] | list[str] = WORD_KINDS,
) -> list[TaskItem]:
    """`n` distinct word problems of `split` ('train' or 'test'), deterministic in (`seed`, `level`, `kinds`)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if level not in (1, 2, 3):
        raise ValueError(f"word-problem level must be 1, 2 or 3, not {level}")
    kinds = tuple(kinds)
    unknown = set(kinds) - set(WORD_KINDS)
    if unknown:
        raise ValueError(f"unknown word-problem kind(s) {sorted(unknown)}; known: {', '.join(WORD_KINDS)}")
    rng = random.Random(f"words-{seed}-{level}-{','.join(kinds)}-{split}")

    def draw(kept: int) -> tuple[str, Callable[[int], TaskItem]]:
        kind = kinds[kept % len(kinds)]  # round robin: kinds stay balanced
        hard = level == 3 or (level == 2 and rng.random() >= EASY_SHARE)
        problem, code, steps, broken = _MAKERS[kind](rng, hard)
        return problem, lambda i: TaskItem(f"{kind}-{split}-{i}", problem, run_code(code), code, "\n".join(steps),
                                           kind, 1 if not hard else 3, broken_code=broken)

    return draw_distinct(n, split, draw, in_test_split, f"word problems at level {level}")
