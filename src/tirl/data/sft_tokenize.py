"""Tokenising an SFT trace with its loss mask: 1 on the model's own tokens, 0 on prompt and interpreter output.

    ex = tokenize_trace(trace, tokenizer, max_length=2048)
    ex["input_ids"], ex["loss_mask"], ex["labels"], ex["attention_mask"]   # lists of length T

Token boundaries. The prompt and every segment are tokenised on their own (no special tokens added)
and concatenated, never the joined text at once. That is what the rollout produces: it encodes the
prompt, the model samples its text up to the stop, the harness appends the interpreter text encoded on
its own (`tirl.rollout.loop._inject`), and the model continues from there. Tokenising the whole string
instead gives other ids at a join: the injected `...</interpreter>\\n\\n` ends in a `\\n\\n` token when
encoded alone but splits into two newlines before the next word in the joined text (measured with the
tiny tokenizer, `tests/data/test_sft_tokenize.py`); a merge may also cross a join, putting the mask
boundary inside a token. Either way SFT would teach id sequences the rollout never produces.

EOS: the tokenizer's `eos_token_id` is appended after the response with mask 1, so the model learns
to stop (ChatML models' eos, `<|im_end|>`, is also their end-of-turn marker).

Prompt: with `style` given, the prompt is rebuilt from the trace's problem with
`tirl.formats.problem_prompt` (the exact prompt RL will use); without, the trace's own prompt messages
(through the chat template when `use_chat_template`, else their contents joined by blank lines) or
its text prompt. A `text` row has none: its text is the whole sequence.

Truncation: a sequence longer than `max_length` is cut at the end (the prompt is kept whole, it is
what later tokens are conditioned on); `num_truncated` says how many tokens were cut, and
`tokenize_traces` logs how many traces were cut. Padding and packing are the collator's job.

Not covered: traces whose prompt alone exceeds `max_length` (refused with `ValueError`).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from tirl.data.traces import Trace
from tirl.formats import TagStyle, problem_prompt, render_messages

log = logging.getLogger("tirl.data")

IGNORE_INDEX = -100  # label value the HF/PyTorch cross-entropy ignores


def trace_prompt(trace: Trace, tokenizer: Any, style: TagStyle | None = None, use_chat_template: bool | None = False) -> str:
    """The prompt text the trace is trained under (see the module docstring): the one prompt rule
    (`tirl.formats.render_messages`) applied to the style's messages, or to the trace's own; none for a
    `text` row (TRL's language-modeling shape), which is trained as written."""
    if trace.prompt_text == "" and not trace.prompt_messages:
        return ""
    if style is not None:
        return problem_prompt(tokenizer, trace.problem, style, use_chat_template)
    if not use_chat_template and trace.prompt_text is not None:
        return trace.prompt_text
    return render_messages(tokenizer, trace.prompt_messages, bool(use_chat_template))


def tokenize_trace(
    trace: Trace,
    tokenizer: Any,
    style: TagStyle | None = None,
    max_length: int | None = None,
    use_chat_template: bool | None = False,
    add_eos: bool = True,
) -> dict[str, Any]:
    """`input_ids`, `loss_mask`, `labels`, `attention_mask` (lists of length T <= max_length) and
    `num_truncated` (tokens cut off the end), `num_prompt_tokens`.

    loss_mask[t] = 1 when token t is the model's own (response text outside interpreter spans, and EOS);
    labels[t] = input_ids[t] there and -100 elsewhere (unshifted: the model shifts).
    """
    prompt = trace_prompt(trace, tokenizer, style, use_chat_template)
    ids = list(tokenizer.encode(prompt, add_special_tokens=False))
    n_prompt = len(ids)
    mask = [0] * n_prompt
    for seg in trace.segments:
        seg_ids = tokenizer.encode(seg.text, add_special_tokens=False)
        ids += seg_ids
        mask += [int(seg.trainable)] * len(seg_ids)
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token_id; pass add_eos=False or set one")
        ids.append(int(tokenizer.eos_token_id))
        mask.append(1)
    cut = 0
    if max_length is not None and len(ids) > max_length:
        if n_prompt >= max_length:
            raise ValueError(f"trace {trace.id} ({trace.source}): the prompt alone is {n_prompt} tokens, "
                             f"max_length is {max_length}")
        cut = len(ids) - max_length
        ids, mask = ids[:max_length], mask[:max_length]
    return {
        "input_ids": ids,
        "loss_mask": mask,
        "labels": [t if m else IGNORE_INDEX for t, m in zip(ids, mask)],
        "attention_mask": [1] * len(ids),
        "num_truncated": cut,
        "num_prompt_tokens": n_prompt,
    }


def tokenize_traces(
    traces: Sequence[Trace],
    tokenizer: Any,
    style: TagStyle | None = None,
    max_length: int | None = None,
    use_chat_template: bool | None = False,
) -> list[dict[str, Any]]:
    """`tokenize_trace` over a list; logs how many traces were truncated and how many tokens that cost."""
    out = [tokenize_trace(t, tokenizer, style, max_length, use_chat_template) for t in traces]
    cut = [ex["num_truncated"] for ex in out if ex["num_truncated"]]
    if cut:
        log.warning("truncated %d of %d traces to max_length=%s (%d tokens cut in all, at most %d in one)",
                    len(cut), len(out), max_length, sum(cut), max(cut))
    return out
