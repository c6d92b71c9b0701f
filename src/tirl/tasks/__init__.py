"""Built-in tasks: seeded problem generators with reference answers, and their SFT traces.

Two tasks, chosen by `data.task`: ``arithmetic`` (bare exact arithmetic, for tiny models built from
scratch: `tirl demo`) and ``words`` (multi-step word problems in real language, for small pretrained
models: `configs/smollm2_retool.yaml`). The dispatch is the two dicts below.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from tirl.tasks.arithmetic import KINDS, TaskItem, generate
from tirl.tasks.sft_traces import make_traces
from tirl.tasks.words import WORD_KINDS, generate_words

TASKS = {"arithmetic": KINDS, "words": WORD_KINDS}
"""Task name -> its kinds."""
DEFAULT_KINDS = {"arithmetic": ("mul",), "words": WORD_KINDS}


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown built-in task {task!r}; known: {', '.join(TASKS)}")


def generate_task(task: str, n: int, *, split: str, seed: int, level: int,
                  kinds: Sequence[str] = (), answer_digits: int = 0) -> list[TaskItem]:
    """`n` problems of a built-in task; empty `kinds` = the task's default kinds; `answer_digits` (arithmetic
    only) keeps the problems whose answer has that many digits."""
    check_task(task)
    kinds = tuple(kinds) or DEFAULT_KINDS[task]
    if task == "words":
        if answer_digits:
            raise ValueError("task.answer_digits applies to the arithmetic task only: set task.answer_digits=0 for words")
        return generate_words(n, split=split, seed=seed, level=level, kinds=kinds)
    return generate(n, split=split, seed=seed, level=level, kinds=kinds, answer_digits=answer_digits)


def balance_answer_lengths(items: list[TaskItem], n: int, seed: int) -> list[TaskItem]:
    """`n` of `items` with every answer length (in characters) about equally common, in a seeded order.

    3-digit products have 5 digits 17% of the time: a tiny model that learns to copy the interpreter's
    output from what it sees most often reads it at the 6-digit offset, and on some seeds writes the
    previous digit again in 5-digit answers (seed 2: 22 of its 29 5-digit held-out answers wrong, 21 of
    them that way; 1 of 171 6-digit ones). Lengths take turns; a length that runs out leaves the rest."""
    by_length: dict[int, list[TaskItem]] = {}
    for item in items:
        by_length.setdefault(len(item.answer), []).append(item)
    queues = [by_length[k] for k in sorted(by_length)]
    out: list[TaskItem] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    random.Random(seed).shuffle(out)
    return out


def task_traces(task: str, items: list[TaskItem], *, style: Any, mix: dict[str, float],
                text_error_rate: float, seed: int, max_output_chars: int = 256) -> list[dict[str, Any]]:
    """SFT trace records for a built-in task's items; word traces run their programs in the real sandbox."""
    check_task(task)
    if task == "arithmetic":
        return make_traces(items, style=style, mix=mix, text_error_rate=text_error_rate, seed=seed)
    from tirl.sandbox import Sandbox
    from tirl.tasks.word_traces import make_word_traces

    with Sandbox() as sandbox:
        return make_word_traces(items, sandbox.run_batch, style=style, mix=mix, text_error_rate=text_error_rate,
                                seed=seed, max_output_chars=max_output_chars)


__all__ = ["KINDS", "TASKS", "WORD_KINDS", "TaskItem", "balance_answer_lengths", "generate", "generate_task", "generate_words",
           "make_traces", "task_traces"]
