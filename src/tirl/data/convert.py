"""`tirl convert`: rewrite text-only solutions into code-integrated SFT traces, then verify them.

    summary = asyncio.run(convert_async(cfg, rewriter, sandbox, run_dir))

For each problem (`problem`, `solution`, `answer`, optional `id`) an LLM is asked (`convert_prompt`) to
move the computation of the solution into code blocks in the chosen tag style. The rewrite is then
verified, which is what makes the data trustworthy; a trace is accepted only if every check passes.

Checks, in order; the first that fails is the rejection `reason` (short code) with a `detail`:
* `truncated` — the LLM hit its token budget.
* `format` — unbalanced or stray tags (the `tirl.data.traces` parser), an empty code block, an
  unclosed `<code>`, no answer after the last code block or more than one `<answer>` (ReTool style),
  or a real output that contains the style's own tags (it would break the trace when re-read).
  Text after the first `</answer>` is dropped, not rejected: the rollout stops there too.
* `no_code` — fewer than `min_code_blocks` code blocks.
* `no_answer` — no `\\boxed{}` after the last code block.
* `code_error` — a block failed (error, timeout, memory, killed) and the trace does not show that
  failure and fix it. It *shows* the failure when its written output after that block looks like an
  error (a traceback or `SomethingError`), and *fixes* it when a later block runs cleanly; then the
  real error text is kept (ReTool's self-correction behaviour is worth teaching).
* `output_mismatch` — the written output disagrees with the real one where the reasoning can depend
  on it. Rule `numbers` (default): every number in the written output of a successful block must
  occur in the real output (equal as a decimal, or equal after rounding the real one to the written
  number of decimals: `3.14` matches `3.14159`); a written error where the code really ran is a
  mismatch too. Text differences (wording, spacing, order) are repaired, since the real output
  replaces the written one. Rule `exact`: whitespace-normalised text must be equal. Rule `none`:
  always replace. A block with no written output gets the real one inserted (nothing to compare).
* `wrong_answer` — the final answer does not match the reference (`tirl.reward.grade_detailed`).

Execution (`exec_mode`): `fresh` (default) runs every block as a separate program, as `tirl.rollout`
and both papers do at RL time, so accepted traces only teach blocks that work there (a block that
uses an earlier block's variables fails with NameError and is rejected as `code_error`); the blocks
of one trace are independent, so they run concurrently. `session` runs them in order in one sandbox
session (globals persist) for users whose RL keeps state; then outputs depend on all earlier blocks.

Outputs are rendered as the rollout renders them (`format_exec_result` with `error_lines`, then capped
at `max_output_chars`), so SFT teaches what RL will show.

Files in the run directory: `accepted.jsonl` (ReTool-SFT rows: `messages` = [system, user problem,
assistant trace], `answer`, `convert` stats; `tirl.data.load_traces` reads them), `rejected.jsonl`
(`id`, `reason`, `detail`, the problem and the raw rewrite), `summary.json` (counts by reason over
both files, and this run's throughput), `settings.json` (the settings that decide acceptance; a
re-run with other ones is refused rather than mixing two rules in one file). Every record is
appended, flushed and fsync'ed. A re-run skips ids present in either file (a torn last line is cut off and its item
redone). Failures that are not the trace's fault (LLM unreachable, sandbox failure) write nothing, are
counted in `summary.json` under `infra_errors`, and are retried by the next run.

Not covered: several rewrites per problem (sampling until one passes), judging whether the code
really does the computation (a trace may print a hard-coded number), multi-turn rewrites that feed
the real output back to the LLM.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable

from tirl.data.convert_prompt import build_rewrite_messages
from tirl.data.rows import DataError, collect, is_local_source, iter_rows
from tirl.data.traces import parse_events, trace_from_row
from tirl.formats import TagStyle, extract_boxed, format_exec_result, get_style, truncate_middle

REASONS = ("truncated", "format", "no_code", "no_answer", "code_error", "output_mismatch", "wrong_answer")
OUTPUT_CHECKS = ("numbers", "exact", "none")
EXEC_MODES = ("fresh", "session")


@dataclass
class ConvertConfig:
    """Everything `tirl convert` needs besides the LLM and the sandbox; every field has a working default."""

    input: str = ""
    """Problems with text-only solutions: .jsonl, .json, .parquet, a saved dataset dir or a hub name."""
    problem_field: str = "problem"
    """Field holding the question."""
    solution_field: str = "solution"
    """Field holding the text-only solution to rewrite."""
    answer_field: str = "answer"
    """Reference answer; when the row has none, the last \\boxed{} of the solution is used."""
    id_field: str = "id"
    """Optional id; rows without one get `{file stem}-{row index}` (stable, so resume works)."""
    split: str = "train"
    """Split of a hub or saved dataset."""
    limit: int | None = None
    """Convert only the first N valid rows (a quick look before a long run)."""
    skip_invalid: bool = False
    """Skip bad input rows (counted) instead of refusing the file with file:line."""
    style: str = "retool"
    """Tag style of the traces (`retool` or `torl`): the style `tirl sft` will train."""
    exec_mode: str = "fresh"
    """`fresh`: each block its own program, as the rollout runs them; `session`: globals persist."""
    output_check: str = "numbers"
    """How written outputs are compared with real ones: `numbers`, `exact` or `none` (module docstring)."""
    min_code_blocks: int = 1
    """A trace with fewer code blocks teaches nothing about tools."""
    exec_timeout_s: float = 10.0
    """Wall-clock limit per block; a slower block is a failure (`code_error`)."""
    max_output_chars: int = 1024
    """Interpreter output kept per block (head and tail), as `tirl.rollout` caps it."""
    error_lines: int = 0
    """Traceback lines kept in an error output; 0 = all, 1 = ToRL's last line only. Match your RL."""
    concurrency: int = 8
    """Items in flight at once (LLM requests + their sandbox runs + grading)."""
    temperature: float = 0.7
    """Sampling temperature of the rewriting LLM; some diversity helps SFT data."""
    max_tokens: int = 4096
    """Token budget of one rewrite; a rewrite that hits it is rejected as `truncated`."""
    seed: int | None = None
    """Sampling seed sent to the LLM (reproducible rewrites on backends that honour it)."""
    prompt_file: str | None = None
    """Optional text file replacing the user prompt (`{problem}`, `{solution}`, `{format}`, `{execution}`, `{answer}`)."""


# --- input ---------------------------------------------------------------------------------------
@dataclass
class Item:
    """One problem to convert."""

    id: str
    problem: str
    solution: str
    answer: str
    where: str = ""


def load_items(cfg: ConvertConfig) -> list[Item]:
    """The input rows as `Item`s; `DataError` names file:line (or file[row]) of every bad row."""
    source = cfg.input
    if not source:
        raise DataError("no input given (--input FILE or input=FILE)")
    stem = Path(source).stem if is_local_source(source) else str(source).rstrip("/").split("/")[-1]
    seen: dict[str, str] = {}

    def text(row: dict[str, Any], name: str) -> str:
        value = row.get(name)
        if name not in row:
            raise DataError(f"missing field {name!r} (fields present: {', '.join(map(str, row)) or 'none'})")
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"field {name!r} must be a non-empty string, got {type(value).__name__}")
        return value

    def parse(where: str, index: int, row: dict[str, Any]) -> Item:
        problem, solution = text(row, cfg.problem_field), text(row, cfg.solution_field)
        answer = row.get(cfg.answer_field)
        if answer is None:
            answer = extract_boxed(solution)
            if answer is None:
                raise DataError(f"no field {cfg.answer_field!r} and no \\boxed{{}} answer in the solution")
        elif isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not str(answer).strip():
            raise DataError(f"field {cfg.answer_field!r} must be a non-empty string or number")
        raw_id = row.get(cfg.id_field)
        iid = f"{stem}-{index}" if raw_id is None else str(raw_id)
        if iid in seen:
            raise DataError(f"duplicate id {iid!r} (first at {seen[iid]})")
        seen[iid] = where
        return Item(iid, problem, solution, str(answer).strip(), where)

    rows = iter_rows(source, split=cfg.split)
    return collect(rows, parse, source=str(source), skip_invalid=cfg.skip_invalid, limit=cfg.limit)


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


def output_disagreement(written: str, real: str, rule: str) -> str | None:
    """Why `written` (the trace's output of a successful block) disagrees with `real`, or None."""
    if rule == "none":
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
            why = output_disagreement(w, res.stdout, cfg.output_check)
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
    from tirl.reward import grade_detailed

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


# --- the run directory ---------------------------------------------------------------------------
class JsonlLog:
    """An append-only JSONL file: torn last line cut off at open, every append flushed and fsync'ed."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.exists():
            self._read()
        self._f = open(path, "a", encoding="utf-8")

    def _read(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # A write is one line ending in "\n"; a last line without it was cut mid-write (or, if it
            # parses, just before its newline). Cut the torn bytes so the next append starts clean.
            cut = data.rfind(b"\n") + 1
            try:
                json.loads(data[cut:])
            except json.JSONDecodeError:
                data = data[:cut]
                with open(self.path, "r+b") as f:
                    f.truncate(cut)
            else:
                data += b"\n"
                with open(self.path, "ab") as f:
                    f.write(b"\n")
        for n, line in enumerate(data.split(b"\n")[:-1], 1):
            if not line.strip():
                continue
            try:
                self.rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise DataError(f"{self.path}:{n}: invalid JSON in the middle of the file (not a torn last "
                                "line); fix or remove that line") from None

    def append(self, row: dict[str, Any]) -> None:
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.rows.append(row)

    def close(self) -> None:
        self._f.close()


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
async def _run_fresh(sandbox: Any, codes: list[str], timeout: float) -> list[Any]:
    return list(await asyncio.gather(*(sandbox.arun(c, timeout=timeout) for c in codes)))


async def _run_session(sandbox: Any, codes: list[str], timeout: float, slots: asyncio.Semaphore) -> list[Any]:
    async with slots:
        session = sandbox.session()
        try:
            return [await session.arun(c, timeout=timeout) for c in codes]
        finally:
            await asyncio.to_thread(session.close)


def check_settings(run_dir: Path, cfg: ConvertConfig) -> None:
    """Refuse to resume a run directory made with settings that change what is accepted."""
    saved = run_dir / "settings.json"
    keys = ("style", "exec_mode", "output_check", "min_code_blocks", "error_lines", "max_output_chars")
    now = {k: getattr(cfg, k) for k in keys}
    if saved.exists():
        old = json.loads(saved.read_text())
        diff = {k: (old.get(k), v) for k, v in now.items() if old.get(k) != v}
        if diff:
            raise ValueError(f"{run_dir} was converted with other settings {diff} (old, new); use another "
                             "--run-dir or the same settings")
    else:
        saved.write_text(json.dumps(now, indent=2) + "\n")


async def convert_async(cfg: ConvertConfig, rewriter: Any, sandbox: Any, run_dir: str | os.PathLike,
                        items: list[Item] | None = None, on_item: Callable[[str], None] | None = None,
                        model_id: str = "") -> dict[str, Any]:
    """Convert every item not yet done in `run_dir`; returns the summary also written to summary.json.

    `rewriter`: a `tirl.data.convert_llm.Rewriter`; `sandbox`: has `arun(code, timeout=)` (and
    `session()` for `exec_mode="session"`). `on_item(outcome)` is called once per item with
    "accepted", a rejection reason, "infra_error", or "done_before" (skipped on resume), for a progress bar.
    """
    if cfg.exec_mode not in EXEC_MODES:
        raise ValueError(f"exec_mode must be one of {EXEC_MODES}, not {cfg.exec_mode!r}")
    if cfg.output_check not in OUTPUT_CHECKS:
        raise ValueError(f"output_check must be one of {OUTPUT_CHECKS}, not {cfg.output_check!r}")
    style = get_style(cfg.style)
    template = Path(cfg.prompt_file).read_text(encoding="utf-8") if cfg.prompt_file else None
    items = load_items(cfg) if items is None else items
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_settings(run_dir, cfg)
    accepted, rejected = JsonlLog(run_dir / "accepted.jsonl"), JsonlLog(run_dir / "rejected.jsonl")
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
            try:
                text, finish = await rewriter.rewrite(messages, key=it.id)
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
                if row is not None:
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
        accepted.close()
        rejected.close()
        seconds = time.perf_counter() - t0
        finished = len(todo) - sum(infra.values())
        run = {"skipped_already_done": len(items) - len(todo), "processed": finished,
               "infra_errors": dict(infra), "infra_error_examples": infra_examples[:5],
               "seconds": round(seconds, 3), "items_per_s": round(finished / seconds, 3) if seconds > 0 else None}
        summary = summarize(accepted.rows, rejected.rows, len(items), run)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
