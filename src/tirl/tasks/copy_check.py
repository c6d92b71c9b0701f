"""Does a cold-started model copy the interpreter's output into its answer?

The demo's tool arm can only be right if the model copies the number the interpreter printed into
`\\boxed{}`, digit for digit. A tiny model learns that copy late in SFT and, on some seeds, only
roughly (one digit of six wrong), and RL then has almost nothing to reinforce. This check feeds the
model, for held-out problems, the right program and the interpreter's real output (teacher-forced, as
the rollout would inject it) and reads the answer it writes greedily: the share copied exactly.
"""

from __future__ import annotations

from typing import Any, Sequence

from tirl.formats import TagStyle, format_exec_result, render_output
from tirl.generation.base import GenerationRequest, SamplingParams
from tirl.rollout import prompt_text


def copy_contexts(items: Sequence[Any], tokenizer: Any, style: TagStyle, chat: bool | None = None) -> list[list[int]]:
    """Token ids of prompt + right program + its output + the answer's opening, up to `\\boxed{`,
    tokenised segment by segment the way the rollout builds them (sampled code, injected output, answer)."""
    out = []
    for item in items:
        rendered = render_output(format_exec_result("ok", item.answer + "\n", ""), style)
        segments = [prompt_text(tokenizer, item.problem, style, chat), style.wrap_code(item.code), rendered,
                    style.answer_open + "\\boxed{"]
        out.append([t for s in segments for t in tokenizer.encode(s, add_special_tokens=False)])
    return out


def copy_rate(generator: Any, tokenizer: Any, items: Sequence[Any], style: TagStyle, chat: bool | None = None) -> float:
    """The share of `items` whose greedy answer, after the right program and its real output, is that
    output exactly."""
    if not items:
        return float("nan")
    contexts = copy_contexts(items, tokenizer, style, chat)
    budget = max(len(item.answer) for item in items) + 2
    outs = generator.generate([GenerationRequest(c) for c in contexts],
                              SamplingParams(max_new_tokens=budget, temperature=0.0, stop=("}",)))
    copied = [tokenizer.decode(o.token_ids).split("}")[0].strip() == item.answer for o, item in zip(outs, items)]
    return sum(copied) / len(items)
