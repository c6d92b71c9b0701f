"""The execution record: every answer a run's sandbox gave, in `RUN_DIR/executions.jsonl`, and the two
sandboxes that serve from it (`rollout.exec_cache`).

Key: `exec_key(code, settings, timeout, inputs)`, 16 hex digits of a SHA-256 over the code, what else it
was given (`run`'s `stdin` / `files` / ... extras), the per-call timeout and the sandbox settings that
can change an outcome (`exec_settings`: limits, isolation asked for, preloads, environment; not the
concurrency or uid block). The isolation level the sandbox actually reached is not in the key: it is
written once per opened sandbox in a header line, so a replay on a machine with none still finds the
keys, while `reuse` only trusts executions made at the level it has now.

Lines (compact, append-only, through `tirl.jsonl.AppendLog`: fsync'ed, a torn last line repaired):
    {"sandbox": {"level": "full", "settings": {...}}}          a sandbox opened with these settings
    {"k": KEY, "o": OUTCOME, "r": {status, stdout, ..., duration_s}}   first time KEY gave OUTCOME
    {"k": KEY, "o": OUTCOME}                                    KEY gave a known OUTCOME again
    {"k": KEY, "o": OUTCOME, "reused": true}                    answered from the record, not run
OUTCOME is 8 hex digits over the result without its timings (duration, CPU, RSS), so a program that
prints the same thing a thousand times stores its result once and costs ~40 bytes per later call.
Every answer is one line, in the order given: `replay` serves a key's outcomes in that order.

Modes (`open_recorded`):
- `off` (default): every program runs; every answer is recorded.
- `reuse`: a program judged deterministic (`tirl.sandbox.determinism`: a static screen of its source,
  and at least two recorded executions at this isolation level with one `ok`/`error` outcome) is
  answered from the record; everything else runs and is recorded. Sandbox failures, timeouts and
  memory kills are recorded but never reused.
- `replay`: no sandbox is started; each program gets its key's recorded outcomes in recorded order
  (the last one again once they run out); a key never recorded stops the run with `MissingExecution`,
  one line naming the code's hash. The replaying run records what it was served in its own
  `executions.jsonl` (as reused), so it can be replayed in turn.

Not covered: stateful sessions (`Sandbox.session`; the rollout runs each block as a fresh program, and
a session's block would need the earlier blocks in its key); a batch on which the inner sandbox raised
instead of answering (the rollout turns that into error results itself; nothing is recorded, so a
replay of that step reports the missing execution); concurrent writers from several processes.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

from tirl.config import UserError
from tirl.jsonl import AppendLog

from .config import ExecResult, SandboxConfig
from .determinism import volatile

EXEC_FILE = "executions.jsonl"
EXEC_CACHE_MODES = ("off", "reuse", "replay")
REUSABLE = ("ok", "error")
"""Outcomes decided by the program alone; a timeout or an OOM kill also depends on the machine's load."""
TIMINGS = ("duration_s", "cpu_s", "max_rss_mb")
NOT_OUTCOME_SETTINGS = ("max_concurrency", "uid_base", "max_sessions")
"""Sandbox settings that schedule calls but cannot change what a call prints."""
_DEFAULTS = {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
             for f in dataclasses.fields(ExecResult)
             if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}


class MissingExecution(UserError):
    """`replay` was asked for a program the record never ran (the run has diverged from the record)."""


def exec_settings(cfg: SandboxConfig) -> dict[str, Any]:
    """The settings that go into every key: `cfg` without those that only schedule calls."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_OUTCOME_SETTINGS}


def exec_key(code: str, settings: dict[str, Any], timeout: float | None = None,
             inputs: dict[str, Any] | None = None) -> str:
    payload = {"code": code, "settings": settings, "timeout": None if timeout is None else float(timeout),
               "inputs": _canonical(inputs or {})}
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _canonical(x: Any) -> Any:
    if isinstance(x, (bytes, bytearray)):
        return "b64:" + base64.b64encode(bytes(x)).decode("ascii")
    if isinstance(x, dict):
        return {str(k): _canonical(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_canonical(v) for v in x]
    return x


def compact(res: ExecResult) -> dict[str, Any]:
    """`res` as a dict without the fields left at their defaults (most of them, for most calls), its
    timings to 0.1 ms."""
    return {k: round(v, 4) if k in TIMINGS and isinstance(v, float) else v for k, v in res.to_dict().items()
            if k not in _DEFAULTS or v != _DEFAULTS[k]}


def outcome_id(result: dict[str, Any]) -> str:
    """8 hex digits over a (compact) result without its timings."""
    outcome = {k: v for k, v in result.items() if k not in TIMINGS}
    text = json.dumps(outcome, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


class ExecRecord:
    """A run's `executions.jsonl`, opened (torn last line repaired) and indexed by key."""

    def __init__(self, path: str | os.PathLike):
        self.log = AppendLog(path)
        self.path = self.log.path
        self.results: dict[tuple[str, str], dict[str, Any]] = {}
        """(key, outcome) -> the compact result first recorded for it."""
        self.executions: dict[str, list[tuple[str, str]]] = {}
        """key -> (outcome, isolation level) of each time it was really run."""
        self._level = "unknown"
        for n, row in enumerate(self.log.rows, 1):
            self._index(row, n)

    @property
    def position(self) -> int:
        """Lines in the file: a training step notes it when it starts and when it is recorded, so a
        replay of that step serves exactly the answers it got (`ReplaySandbox(record, start, end)`)."""
        return len(self.log.rows)

    def _index(self, row: Any, line: int = 0) -> None:
        if not isinstance(row, dict) or not ("sandbox" in row or ("k" in row and "o" in row)):
            raise UserError(f"{self.path}:{line}: not an execution record line")
        if "sandbox" in row:
            self._level = row["sandbox"].get("level", "unknown")
            return
        if "r" in row:
            self.results.setdefault((row["k"], row["o"]), row["r"])
        if not row.get("reused"):
            self.executions.setdefault(row["k"], []).append((row["o"], self._level))

    def opened(self, level: str, settings: dict[str, Any]) -> None:
        self._append([{"sandbox": {"level": level, "settings": settings}}])

    def add(self, entries: Sequence[tuple[str, ExecResult, bool]]) -> None:
        """Record (key, result, reused) answers, in order, as one fsync'ed append."""
        rows, new = [], set()
        for key, res, reused in entries:
            full = compact(res)
            oid = outcome_id(full)
            row: dict[str, Any] = {"k": key, "o": oid}
            if (key, oid) not in self.results and (key, oid) not in new:
                row["r"] = full
                new.add((key, oid))
            if reused:
                row["reused"] = True
            rows.append(row)
        self._append(rows)

    def _append(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.log.append(*rows)
            for row in rows:
                self._index(row)

    def result(self, key: str, oid: str) -> ExecResult:
        if (key, oid) not in self.results:
            raise UserError(f"{self.path}: outcome {oid} of code {key} is referred to but never stored (a "
                            "damaged or edited record)")
        return ExecResult.from_dict(self.results[(key, oid)])

    def reusable(self, key: str, level: str) -> ExecResult | None:
        """The recorded result when `key` ran at least twice at `level`, always with the same `ok` or
        `error` outcome (the observed half of the judgement; the caller screens the source)."""
        seen = [oid for oid, lv in self.executions.get(key, ()) if lv == level]
        if len(seen) < 2 or len(set(seen)) > 1:
            return None
        res = self.result(key, seen[0])
        return res if res.status in REUSABLE else None


class RecordedSandbox:
    """`SandboxLike` over a real sandbox: `off` runs everything, `reuse` answers deterministic programs
    from the record; both record every answer. Safe from several threads (continuous batching)."""

    def __init__(self, inner: Any, record: ExecRecord, mode: str, settings: dict[str, Any], level: str):
        if mode not in ("off", "reuse"):
            raise ValueError(f"RecordedSandbox runs code: mode must be off or reuse, not {mode!r}")
        self.inner, self.record, self.mode, self.settings, self.level = inner, record, mode, settings, level
        self._lock = threading.Lock()
        self._screened: dict[str, bool] = {}
        with self._lock:
            record.opened(level, settings)

    @property
    def isolation(self) -> dict:
        return self.inner.isolation

    @property
    def position(self) -> int:
        with self._lock:
            return self.record.position

    def run_batch(self, codes: Sequence[str], timeout: float | None = None) -> list[ExecResult]:
        keys = [exec_key(c, self.settings, timeout) for c in codes]
        with self._lock:
            answers = [self._from_record(k, c) for k, c in zip(keys, codes)]
        todo = [i for i, a in enumerate(answers) if a is None]
        if todo:
            ran = self.inner.run_batch([codes[i] for i in todo], **({} if timeout is None else {"timeout": timeout}))
            for i, res in zip(todo, ran):
                answers[i] = res
        return self._keep(keys, answers, set(todo))

    def run(self, code: str, timeout: float | None = None, **extras: Any) -> ExecResult:
        key = exec_key(code, self.settings, timeout, extras)
        with self._lock:
            res = self._from_record(key, code)
        ran = res is None
        if ran:
            res = self.inner.run(code, timeout, **extras)
        return self._keep([key], [res], {0} if ran else set())[0]

    async def arun(self, code: str, timeout: float | None = None, **extras: Any) -> ExecResult:
        key = exec_key(code, self.settings, timeout, extras)
        with self._lock:
            res = self._from_record(key, code)
        ran = res is None
        if ran:
            res = await self.inner.arun(code, timeout, **extras)
        return self._keep([key], [res], {0} if ran else set())[0]

    def _from_record(self, key: str, code: str) -> ExecResult | None:
        if self.mode != "reuse":
            return None
        if key not in self._screened:
            self._screened[key] = volatile(code) is None
        return self.record.reusable(key, self.level) if self._screened[key] else None

    def _keep(self, keys: list[str], answers: list, ran: set[int]) -> list[ExecResult]:
        with self._lock:
            self.record.add([(k, a, i not in ran) for i, (k, a) in enumerate(zip(keys, answers))])
        return answers

    def close(self) -> None:
        self.inner.close()


class ReplaySandbox:
    """`SandboxLike` with no sandbox behind it: each key gets its recorded outcomes, in the order the
    record's lines [start, end) hold them, then the last one again. With a `sink` (the replaying run's
    own record) every answer is recorded there too, as reused, so that run can be replayed in turn."""

    def __init__(self, record: ExecRecord, settings: dict[str, Any], start: int = 0, end: int | None = None,
                 sink: ExecRecord | None = None):
        self.record, self.settings, self.sink = record, settings, sink
        self._queues: dict[str, list[str]] = {}
        for row in record.log.rows[start:end]:
            if "k" in row:
                self._queues.setdefault(row["k"], []).append(row["o"])
        self._served: dict[str, int] = {}
        self._lock = threading.Lock()
        if sink is not None:
            sink.opened("replay", settings)

    @property
    def isolation(self) -> dict:
        return {"level": "replay", "missing": {}, "limits": {}}

    @property
    def position(self) -> int:
        with self._lock:
            return self.sink.position if self.sink is not None else 0

    def _serve(self, keys: list[str]) -> list[ExecResult]:
        with self._lock:
            out = []
            for key in keys:
                queue = self._queues.get(key)
                if not queue:
                    raise MissingExecution(f"no recorded execution for code {key} in {self.record.path} (the "
                                           "run has left the record: other code, inputs or sandbox settings)")
                i = self._served.get(key, 0)
                self._served[key] = i + 1
                out.append(self.record.result(key, queue[min(i, len(queue) - 1)]))
            if self.sink is not None:
                self.sink.add([(k, res, True) for k, res in zip(keys, out)])
            return out

    def run_batch(self, codes: Sequence[str], timeout: float | None = None) -> list[ExecResult]:
        return self._serve([exec_key(c, self.settings, timeout) for c in codes])

    def run(self, code: str, timeout: float | None = None, **extras: Any) -> ExecResult:
        return self._serve([exec_key(code, self.settings, timeout, extras)])[0]

    async def arun(self, code: str, timeout: float | None = None, **extras: Any) -> ExecResult:
        return self.run(code, timeout, **extras)

    def close(self) -> None:
        """Nothing to stop."""


@contextlib.contextmanager
def open_recorded(cfg: SandboxConfig, mode: str, run_dir: str | os.PathLike, record: str = "",
                  purpose: str = "training") -> Iterator[RecordedSandbox | ReplaySandbox]:
    """The sandbox a run uses under `rollout.exec_cache=mode`: a started one wrapped in a
    `RecordedSandbox` recording to `run_dir`, or (`replay`) a `ReplaySandbox` over `record` (default:
    `run_dir`'s own record) with nothing started."""
    from .isolation import open_sandbox

    if mode not in EXEC_CACHE_MODES:
        raise UserError(f"rollout.exec_cache must be one of {', '.join(EXEC_CACHE_MODES)}, not {mode!r}")
    settings = exec_settings(cfg)
    if mode == "replay":
        path = Path(record) if record else Path(run_dir) / EXEC_FILE
        if not path.is_file():
            raise UserError(f"rollout.exec_cache=replay needs an execution record; {path} does not exist "
                            "(set rollout.exec_record=RUN_DIR/executions.jsonl of the recorded run)")
        own = Path(run_dir) / EXEC_FILE
        source = ExecRecord(path)
        sink = source if own.exists() and own.resolve() == path.resolve() else ExecRecord(own)
        yield ReplaySandbox(source, settings, sink=sink)
        return
    with open_sandbox(cfg, purpose) as sandbox:
        yield RecordedSandbox(sandbox, ExecRecord(Path(run_dir) / EXEC_FILE), mode, settings,
                              sandbox.isolation.get("level", "unknown"))
