"""Verifying one rewrite: format, code blocks run for real, written outputs against real ones, the
final answer graded. The checks and their order are those of `tirl.convert`'s docstring; the first that
fails is the rejection reason.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

from tirl.convert.config import ConvertConfig
from tirl.data.rows import DataError
from tirl.data.traces import parse_events
from tirl.formats import TagStyle, extract_boxed, format_exec_result, truncate_middle


# --- comparing written and real output -----------------------------------------------------------
_NUMBER = re.compile(r"(?:(?<![\w.)\]])-)?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?")
_ERROR = re.compile(r"Traceback \(most recent call last\)|\b[A-Z]\w*(?:Error|Exception)\b")


def numbers(text: str) -> list[Decimal]:
    out = []
    for m in _NUMBER.findall(text):
        try:
            out.append(Decimal(m.replace(",", "")))
        except InvalidOperation:
            continue
    return out


def looks_like_error(text: str) -> bool:
    return bool(_ERROR.search(text))


def _matches(written: Decimal, real: list[Decimal]) -> bool:
    places = -written.as_tuple().exponent if written.as_tuple().exponent < 0 else 0
    q = Decimal(1).scaleb(-places)
    for r in real:
        if r == written:
            return True
        try:
            if r.quantize(q) == written:  # the writer rounded a long real value
                return True
        except InvalidOperation:
            continue
    return False


def _same_value(written: Decimal, real: Decimal) -> bool:
    # Float noise only (0.1 * 3 prints 0.30000000000000004): a relative 1e-9 is far below any rounding
    # a solution writes (cents, thirds), so a rounded or wrong stated result is still a mismatch.
    return abs(written - real) <= Decimal("1e-9") * max(Decimal(1), abs(real))


def output_disagreement(written: str, real: str, rule: str) -> str | None:
    """Why `written` (the trace's output of a successful block) disagrees with `real`, or None."""
    if rule == "none":
        return None
    if rule == "values":
        w, r = numbers(written), numbers(real)
        if len(w) != len(r) or not all(_same_value(a, b) for a, b in zip(w, r)):
            return f"stated {written[:80]!r} != real {real[:80]!r}"
        return None
    if rule == "exact":
        same = " ".join(written.split()) == " ".join(real.split())
        return None if same else f"written {written[:80]!r} != real {real[:80]!r}"
    if looks_like_error(written) and not looks_like_error(real):
        return f"written output shows an error but the code ran: real {real[:80]!r}"
    real_nums = numbers(real)
    for w in numbers(written):
        if not _matches(w, real_nums):
            return f"written number {w} is not in the real output {real[:120]!r}"
    return None


# --- verification --------------------------------------------------------------------------------
class InfraError(RuntimeError):
    """Not the trace's fault (sandbox failure): nothing is recorded, the next run retries the item."""


@dataclass
class Verdict:
    reason: str | None
    """None when accepted, else one of `REASONS`."""
    detail: str = ""
    text: str = ""
    """The verified assistant text (real outputs in place) when accepted."""
    stats: dict[str, Any] = field(default_factory=dict)


RunBlocks = Callable[[list[str]], Any]  # async: codes -> list[ExecResult], in order


def _check_shape(text: str, style: TagStyle, cfg: ConvertConfig) -> tuple[list[tuple], Verdict | None]:
    """Parse the rewrite into events; a Verdict when its format already fails."""
    try:
        events = parse_events(text, style, style)
    except DataError as e:
        return [], Verdict("format", str(e))
    opener = style.code_open.split("\n", 1)[0]
    codes = [i for i, e in enumerate(events) if e[0] == "code"]
    for k, i in enumerate(codes, 1):
        if not events[i][1].strip():
            return events, Verdict("format", f"code block {k} is empty")
    for e in events:
        if e[0] == "text" and not opener.startswith("```") and opener in e[1]:
            return events, Verdict("format", f"unclosed {opener!r}")
    if len(codes) < cfg.min_code_blocks:
        return events, Verdict("no_code", f"{len(codes)} code block(s), at least {cfg.min_code_blocks} needed")
    tail = "".join(e[1] for e in events[(codes[-1] + 1 if codes else 0):] if e[0] == "text")
    before = "".join(e[1] for e in events[: codes[-1] if codes else 0] if e[0] == "text")
    if style.answer_open and style.answer_open.strip() in before:
        return events, Verdict("format", f"{style.answer_open.strip()!r} before the last code block")
    if extract_boxed(tail) is None:
        return events, Verdict("no_answer", "no \\boxed{} answer after the last code block")
    if style.answer_open:
        if tail.count(style.answer_open.strip()) != 1 or tail.count(style.answer_close.strip()) != 1:
            return events, Verdict("format", f"expected one {style.answer_open.strip()}...{style.answer_close.strip()} "
                                             "after the last code block")
    return events, None


def _shown_output(res: Any, cfg: ConvertConfig) -> str:
    text = format_exec_result(res.status, res.stdout, res.stderr, cfg.error_lines)
    return truncate_middle(text.rstrip("\n"), cfg.max_output_chars)


async def verify(text: str, finish: str, reference: str, style: TagStyle, cfg: ConvertConfig,
                 run_blocks: RunBlocks) -> Verdict:
    """All checks of the module docstring on one rewrite. Raises `InfraError` on a sandbox failure."""
    if finish == "length":
        return Verdict("truncated", f"the rewrite hit max_tokens={cfg.max_tokens}")
    trimmed = False
    if style.answer_close and style.answer_close.strip() in text:
        close = style.answer_close.strip()
        cut = text.index(close) + len(close)
        trimmed = bool(text[cut:].strip())
        text = text[:cut]
    events, bad = _check_shape(text.strip(), style, cfg)
    if bad is not None:
        return bad
    codes = [e[1] for e in events if e[0] == "code"]
    written = []  # written output of each block, or None
    for i, e in enumerate(events):
        if e[0] == "code":
            nxt = events[i + 1] if i + 1 < len(events) else None
            written.append(nxt[1] if nxt is not None and nxt[0] == "output" else None)
    results = await run_blocks(codes)
    if any(r.status == "sandbox_error" for r in results):
        raise InfraError(next(r.message or r.stderr for r in results if r.status == "sandbox_error"))
    stats = {"blocks": len(codes), "outputs_added": 0, "outputs_replaced": 0, "errors_fixed": 0,
             "trimmed_after_answer": trimmed}
    shown = []
    out_tags = [t for t in (style.output_suffix.strip(), style.stop, style.answer_open.strip()) if t]
    for k, (res, w) in enumerate(zip(results, written), 1):
        real = _shown_output(res, cfg)
        if any(t in real for t in out_tags):
            return Verdict("format", f"real output of block {k} contains a tag of the style")
        if res.status != "ok":
            last = (res.stderr.strip().splitlines() or [res.message or res.status])[-1][:160]
            if w is None or not looks_like_error(w):
                return Verdict("code_error", f"block {k} failed ({res.status}: {last}) and the trace "
                                             "does not show the error")
            if not any(r.status == "ok" for r in results[k:]):
                return Verdict("code_error", f"block {k} failed ({res.status}: {last}) and no later block fixes it")
            stats["errors_fixed"] += 1
        elif w is None:
            stats["outputs_added"] += 1
        else:
            why = output_disagreement(w, res.stdout, cfg.check)
            if why is not None:
                return Verdict("output_mismatch", f"block {k}: {why}")
            stats["outputs_replaced"] += int(w.strip() != real.strip())
        shown.append(real)
    final = _render(events, shown, style)
    grade = await asyncio.to_thread(_grade, final, reference)
    if not grade.correct:
        return Verdict("wrong_answer", f"answer {grade.extracted!r}, reference {reference!r} ({grade.reason})",
                       stats=stats)
    return Verdict(None, text=final, stats=stats)


def _grade(text: str, reference: str) -> Any:
    from tirl.rewards import grade_detailed

    return grade_detailed(text, reference)


def _render(events: list[tuple], shown: list[str], style: TagStyle) -> str:
    """The trace with real outputs, whitespace as `tirl.data.traces` renders it (so it re-reads the same)."""
    parts: list[str] = []
    outs = iter(shown)
    for i, e in enumerate(events):
        if e[0] == "text":
            parts.append(e[1].lstrip() if i and events[i - 1][0] in ("code", "output") else e[1])
        elif e[0] == "code":
            parts.append(e[2] if e[2] is not None else style.wrap_code(e[1]))
            parts.append(style.wrap_output(next(outs)))
    return "".join(parts).strip()
