"""Cold-start SFT traces for the word-problem task, with interpreter output from the real sandbox.

Three kinds, as for the arithmetic task (`tirl.tasks.sft_traces`), written for a pretrained chat model:

* ``code`` — one sentence, the program, its output, the answer stated and boxed;
* ``text`` — the worked steps in text; with probability `text_error_rate` the final result has one
  wrong digit, as a small model's mental arithmetic would;
* ``fix``  — a first program with a realistic mistake (misspelled name, missing import, syntax slip),
  the sandbox's actual traceback, a one-line diagnosis, the fixed program, its output, the answer.

Every program in a trace is executed by `run_batch` (a `tirl.sandbox.Sandbox`'s) and its result is
rendered with the rollout's own functions (`format_exec_result`, `render_output` with the same output
cap), so SFT shows exactly the text the model will receive during RL, tracebacks included. A program
whose result disagrees with the item's answer is a bug here and raises.

The mix decides how much the cold-start model relies on the tool: a text-leaning mix (the default)
leaves a model that can call the interpreter but usually does not, so RL has a choice to reinforce.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

from tirl.formats import RETOOL, TagStyle, format_exec_result, render_output, truncate_middle
from tirl.tasks.arithmetic import TaskItem
from tirl.tasks.sft_traces import _wrong

TRACE_KINDS = ("code", "text", "fix")
_LEADS = ("Let me compute this with Python.", "I will use code for the exact arithmetic.",
          "Python makes this exact.", "Let me write a short program.")
_FIX_LEADS = ("The code failed. Let me fix it.", "That raised an error; here is the corrected code.",
              "There is a mistake in the code. Fixing it:")


def render_result(res: Any, style: TagStyle, max_output_chars: int = 256, error_lines: int = 0) -> str:
    """The interpreter text the rollout would inject for sandbox result `res` (same cap, same format)."""
    message = format_exec_result(res.status, res.stdout, res.stderr, error_lines)
    return render_output(truncate_middle(message.rstrip("\n"), max_output_chars), style, max_chars=max_output_chars)


def _text(item: TaskItem, style: TagStyle, rng: random.Random, error_rate: float) -> str:
    steps = item.expression
    stated = item.answer
    if rng.random() < error_rate:
        stated = _wrong(item.answer, rng)
        head, sep, tail = steps.rpartition(item.answer)  # the last step states the result
        steps = f"{head}{stated}{tail}" if sep else steps
    return f"Step by step:\n{steps}\n{style.wrap_answer(stated)}"


def make_word_traces(
    items: Sequence[TaskItem],
    run_batch: Callable[[list[str]], list[Any]],
    *,
    style: TagStyle = RETOOL,
    mix: dict[str, float] | None = None,
    text_error_rate: float = 0.5,
    seed: int = 0,
    max_output_chars: int = 256,
    error_lines: int = 0,
) -> list[dict[str, Any]]:
    """One ReTool-SFT ``messages`` record per item, its kind drawn from `mix` (weights over code/text/fix)."""
    mix = mix or {"code": 0.3, "text": 0.6, "fix": 0.1}
    unknown = set(mix) - set(TRACE_KINDS)
    if unknown:
        raise ValueError(f"unknown trace kind(s) {sorted(unknown)}; known: {', '.join(TRACE_KINDS)}")
    rng = random.Random(seed)
    names, weights = zip(*mix.items())
    kinds = [rng.choices(names, weights)[0] for _ in items]
    programs = [it.code for it in items] + [it.broken_code for it, k in zip(items, kinds) if k == "fix"]
    results = run_batch(programs) if programs else []
    good, broken = results[: len(items)], iter(results[len(items):])
    out = []
    for item, kind, res in zip(items, kinds, good):
        if res.status != "ok" or res.stdout.strip() != item.answer:
            raise RuntimeError(f"{item.id}: its program gave {res.status} {res.stdout!r}{res.stderr[-200:]!r}, "
                               f"expected {item.answer!r}")
        answer = f"{style.wrap_code(item.code)}{render_result(res, style, max_output_chars, error_lines)}" \
                 f"The answer is {item.answer}.\n{style.wrap_answer(item.answer)}"
        if kind == "code":
            response = f"{rng.choice(_LEADS)}\n{answer}"
        elif kind == "fix":
            bad = next(broken)
            if bad.status == "ok":
                raise RuntimeError(f"{item.id}: its broken program ran without error: {item.broken_code!r}")
            response = (f"{rng.choice(_LEADS)}\n{style.wrap_code(item.broken_code)}"
                        f"{render_result(bad, style, max_output_chars, error_lines)}{rng.choice(_FIX_LEADS)}\n{answer}")
        else:
            response = _text(item, style, rng, text_error_rate)
        out.append({"id": item.id, "kind": kind, "answer": item.answer, "messages": [
            {"role": "user", "content": item.problem}, {"role": "assistant", "content": response}]})
    return out
