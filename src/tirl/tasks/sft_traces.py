"""Cold-start SFT traces for the built-in task, written the way the rollout will see them.

Four kinds, so RL has behaviours to select from (ReTool's cold start teaches the format, not the
answers):

* ``code`` — copy the numbers into one program, run it, copy its output into the answer;
* ``text`` — compute "in the head"; with probability `text_error_rate` the stated result is wrong
  in one digit, as a small model's would be;
* ``fix`` — the first program fails (a ``NameError``), the error comes back, a fixed program runs;
* ``check`` — an estimate in text (wrong like ``text``'s), then the program that checks it; the answer
  is the interpreter's number. This is what makes copying the output reliable: in ``code`` traces the
  output equals the product, so "copy the output" and "estimate the product" fit the same targets, and
  a tiny model learned the copy late and roughly on some seeds (middle digits wrong, the rest right);
  here a wrong estimate sits next to the output and only the copy fits.

Interpreter output is rendered with the same functions the rollout uses (`format_exec_result`,
`render_output`), so SFT teaches exactly the text the model will later receive. Records use the
ReTool-SFT ``messages`` shape that `tirl.data` loads.
"""

from __future__ import annotations

import random
from typing import Any

from tirl.formats import RETOOL, TagStyle, format_exec_result, render_output
from tirl.tasks.arithmetic import TaskItem


def _wrong(answer: str, rng: random.Random) -> str:
    i = rng.randrange(len(answer))
    digits = [d for d in "0123456789" if d != answer[i] and not (i == 0 and d == "0" and len(answer) > 1)]
    return answer[:i] + rng.choice(digits) + answer[i + 1:]


def code_response(item: TaskItem, style: TagStyle) -> str:
    out = render_output(format_exec_result("ok", item.answer + "\n", ""), style)
    return f"{style.wrap_code(item.code)}{out}{style.wrap_answer(item.answer)}"


def fix_response(item: TaskItem, style: TagStyle) -> str:
    broken = item.code.replace("print(", "print(x + ", 1)
    err = format_exec_result("error", "", "NameError: name 'x' is not defined", error_lines=1)
    ok = render_output(format_exec_result("ok", item.answer + "\n", ""), style)
    return (f"{style.wrap_code(broken)}{render_output(err, style)}"
            f"{style.wrap_code(item.code)}{ok}{style.wrap_answer(item.answer)}")


def text_response(item: TaskItem, style: TagStyle, rng: random.Random, error_rate: float) -> str:
    stated = _wrong(item.answer, rng) if rng.random() < error_rate else item.answer
    return f"{item.expression} = {stated}\n{style.wrap_answer(stated)}"


def check_response(item: TaskItem, style: TagStyle, rng: random.Random, error_rate: float) -> str:
    """An estimate in text, then the program that checks it; the answer is the interpreter's number, also
    where the estimate was wrong (so the answer copies the output, never the text next to it)."""
    stated = _wrong(item.answer, rng) if rng.random() < error_rate else item.answer
    out = render_output(format_exec_result("ok", item.answer + "\n", ""), style)
    return f"{item.expression} = {stated}\n{style.wrap_code(item.code)}{out}{style.wrap_answer(item.answer)}"


KINDS = ("code", "text", "fix", "check")


def make_traces(
    items: list[TaskItem],
    *,
    style: TagStyle = RETOOL,
    mix: dict[str, float] | None = None,
    text_error_rate: float = 0.5,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One trace per item, its kind drawn from `mix` (weights over code / text / fix)."""
    mix = mix or {"code": 0.45, "text": 0.45, "fix": 0.10}
    unknown = set(mix) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown trace kind(s) {sorted(unknown)}; known: {', '.join(KINDS)}")
    rng = random.Random(seed)
    kinds, weights = zip(*mix.items())
    out = []
    for item in items:
        kind = rng.choices(kinds, weights)[0]
        if kind == "code":
            response = code_response(item, style)
        elif kind == "fix":
            response = fix_response(item, style)
        elif kind == "check":
            response = check_response(item, style, rng, error_rate=text_error_rate)
        else:
            response = text_response(item, style, rng, text_error_rate)
        out.append({
            "id": item.id,
            "kind": kind,
            "answer": item.answer,
            "messages": [
                {"role": "user", "content": item.problem},
                {"role": "assistant", "content": response},
            ],
        })
    return out
