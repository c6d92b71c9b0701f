"""The conversion run: rewrite every item not yet done, verify it, append it to `accepted.jsonl` or
`rejected.jsonl`, and write `summary.json` (see `tirl.convert` for the files and the resume rule).

    summary = asyncio.run(convert_async(cfg, rewriter, sandbox, run_dir))
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, Callable

from tirl import jsonl
from tirl.convert.config import EXEC_MODES, OUTPUT_CHECKS, REASONS, ConvertConfig
from tirl.convert.items import Item, load_items
from tirl.convert.llm import NotRewritable
from tirl.convert.prompt import build_rewrite_messages
from tirl.convert.verify import InfraError, Verdict, verify
from tirl.data.rows import DataError
from tirl.data.traces import trace_from_row
from tirl.formats import get_style
from tirl.sandbox.protocol import SandboxLike, SessionCapable


# --- the run directory (append-only logs: `tirl.jsonl`) --------------------------------------------
def summarize(accepted: list[dict], rejected: list[dict], total: int, run: dict[str, Any]) -> dict[str, Any]:
    by_reason = {r: 0 for r in REASONS}
    for row in rejected:
        by_reason[row.get("reason", "?")] = by_reason.get(row.get("reason", "?"), 0) + 1
    done = len(accepted) + len(rejected)
    return {
        "input_items": total, "done": done, "accepted": len(accepted), "rejected": len(rejected),
        "acceptance_rate": round(len(accepted) / done, 4) if done else None,
        "rejected_by_reason": by_reason,
        "errors_fixed_in_accepted": sum(r.get("convert", {}).get("errors_fixed", 0) for r in accepted),
        "code_blocks_in_accepted": sum(r.get("convert", {}).get("blocks", 0) for r in accepted),
        "this_run": run,
    }


# --- the pipeline --------------------------------------------------------------------------------
TWINS_FILE = "accepted_text.jsonl"


def _check_twin(row: dict[str, Any], style: Any, reference: str) -> Verdict | None:
    """Why a text twin cannot stand next to its accepted trace (it must load and be right), or None."""
    from tirl.rewards import grade_detailed

    try:
        trace_from_row(row, style, id=row["id"])
    except DataError as e:
        return Verdict("format", f"the text twin does not load: {e}")
    g = grade_detailed(row["messages"][-1]["content"], reference, style=style)
    if not g.correct:
        return Verdict("wrong_answer", f"text twin: answer {g.extracted!r}, reference {reference!r} ({g.reason})")
    return None


async def _run_fresh(sandbox: SandboxLike, codes: list[str], timeout: float) -> list[Any]:
    return list(await asyncio.gather(*(sandbox.arun(c, timeout=timeout) for c in codes)))


async def _run_session(sandbox: SessionCapable, codes: list[str], timeout: float, slots: asyncio.Semaphore) -> list[Any]:
    async with slots:
        session = sandbox.session()
        try:
            return [await session.arun(c, timeout=timeout) for c in codes]
        finally:
            await asyncio.to_thread(session.close)


def check_settings(run_dir: Path, cfg: ConvertConfig) -> None:
    """Refuse to resume a run directory made with settings that change what is accepted."""
    keys = ("style", "exec_mode", "min_code_blocks", "error_lines", "max_output_chars")
    settings = {k: getattr(cfg, k) for k in keys} | {"output_check": cfg.check}
    if cfg.rules:  # only then: runs made before rules existed still resume
        settings |= {"rules": cfg.rules, "layout": cfg.layout, "number_format": cfg.number_format}
    jsonl.check_settings(run_dir / "settings.json", settings, "use another --run-dir or the same settings")


async def convert_async(cfg: ConvertConfig, rewriter: Any, sandbox: SandboxLike, run_dir: str | os.PathLike,
                        items: list[Item] | None = None, on_item: Callable[[str], None] | None = None,
                        model_id: str = "", twin: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Convert every item not yet done in `run_dir`; returns the summary also written to summary.json.

    `rewriter`: a `tirl.convert.llm.Rewriter`; `sandbox`: has `arun(code, timeout=)` (and
    `session()` for `exec_mode="session"`). `on_item(outcome)` is called once per item with
    "accepted", a rejection reason, "infra_error", or "done_before" (skipped on resume), for a progress bar.
    `twin(id)`: the text-only trace of an item (`RuleRewriter.text_twin`); each accepted item's twin,
    graded like the trace, goes to `accepted_text.jsonl`, so both arms train on the same problems (an
    item whose twin fails is rejected whole).
    """
    if cfg.exec_mode not in EXEC_MODES:
        raise ValueError(f"exec_mode must be one of {EXEC_MODES}, not {cfg.exec_mode!r}")
    if cfg.check not in OUTPUT_CHECKS:
        raise ValueError(f"output_check must be one of {OUTPUT_CHECKS}, not {cfg.output_check!r}")
    style = get_style(cfg.style)
    template = Path(cfg.prompt_file).read_text(encoding="utf-8") if cfg.prompt_file else None
    items = load_items(cfg) if items is None else items
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_settings(run_dir, cfg)
    accepted, rejected = jsonl.AppendLog(run_dir / "accepted.jsonl"), jsonl.AppendLog(run_dir / "rejected.jsonl")
    twins = jsonl.AppendLog(run_dir / TWINS_FILE) if twin is not None else None
    twinned = {str(r.get("id")) for r in twins.rows} if twins is not None else set()
    done = {str(r.get("id")) for r in accepted.rows + rejected.rows}
    todo = [it for it in items if it.id not in done]
    if on_item is not None:
        for _ in range(len(items) - len(todo)):
            on_item("done_before")
    infra: dict[str, int] = {"llm": 0, "sandbox": 0}
    infra_examples: list[str] = []
    sem = asyncio.Semaphore(max(1, cfg.concurrency))
    slots = asyncio.Semaphore(max(1, min(cfg.concurrency, getattr(getattr(sandbox, "config", None), "max_sessions", 8))))

    async def run_blocks(codes: list[str]) -> list[Any]:
        if cfg.exec_mode == "session":
            return await _run_session(sandbox, codes, cfg.exec_timeout_s, slots)
        return await _run_fresh(sandbox, codes, cfg.exec_timeout_s)

    async def one(it: Item) -> None:
        async with sem:
            messages = build_rewrite_messages(it.problem, it.solution, style, cfg.exec_mode, template)
            outcome = "infra_error"
            verdict = None
            text = ""
            try:
                text, finish = await rewriter.rewrite(messages, key=it.id)
            except NotRewritable as e:
                verdict = Verdict("no_steps", str(e))
            except Exception as e:  # noqa: BLE001 - an LLM failure of one item must not stop the others
                infra["llm"] += 1
                infra_examples.append(f"{it.id}: LLM: {type(e).__name__}: {e}"[:300])
            else:
                try:  # only a sandbox failure is caught here; a bug in verification must surface
                    verdict = await verify(text, finish, it.answer, style, cfg, run_blocks)
                except InfraError as e:
                    infra["sandbox"] += 1
                    infra_examples.append(f"{it.id}: sandbox: {e}"[:300])
            if verdict is not None:
                row = None
                if verdict.reason is None:
                    prompt = style.prompt_messages(it.problem)[:-1] + [{"role": "user", "content": it.problem}]
                    row = {"id": it.id, "messages": prompt + [{"role": "assistant", "content": verdict.text}],
                           "answer": it.answer, "convert": {**verdict.stats, "model": model_id}}
                    try:  # what `tirl sft` will read must load: check it with the loader itself
                        trace_from_row(row, style, id=it.id)
                    except DataError as e:
                        verdict, row = Verdict("format", f"the verified trace does not load: {e}"), None
                twin_row = None
                if row is not None and twin is not None:
                    twin_row = {**row, "messages": prompt + [{"role": "assistant", "content": twin(it.id)}],
                                "convert": {"text_twin": True, "model": model_id}}
                    bad = await asyncio.to_thread(_check_twin, twin_row, style, it.answer)
                    if bad is not None:
                        verdict, row = bad, None
                if row is not None:
                    if twins is not None and it.id not in twinned:  # first: no accepted trace lacks its twin
                        twins.append(twin_row)
                    accepted.append(row)
                    outcome = "accepted"
                else:
                    rejected.append({"id": it.id, "reason": verdict.reason, "detail": verdict.detail,
                                     "problem": it.problem, "answer": it.answer, "response": text})
                    outcome = verdict.reason
            if on_item is not None:
                on_item(outcome)

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(one(it) for it in todo))
    finally:
        seconds = time.perf_counter() - t0
        finished = len(todo) - sum(infra.values())
        run = {"skipped_already_done": len(items) - len(todo), "processed": finished,
               "infra_errors": dict(infra), "infra_error_examples": infra_examples[:5],
               "seconds": round(seconds, 3), "items_per_s": round(finished / seconds, 3) if seconds > 0 else None}
        summary = summarize(accepted.rows, rejected.rows, len(items), run)
        if twins is not None:
            summary["text_twins"] = len(twins.rows)
        jsonl.write_json(run_dir / "summary.json", summary)
    return summary
