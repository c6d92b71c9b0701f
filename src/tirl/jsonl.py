"""The files a run writes as JSON: one append-only JSONL log, one atomic write, one settings lock, one
NaN rule. Training's `metrics.jsonl` / `samples.jsonl`, evaluation's `samples.jsonl`, conversion's
`accepted.jsonl` / `rejected.jsonl`, every `summary.json` and every summary a command prints go through
here, so they share one encoding and one crash rule.

* NaN rule: JSON has no NaN or infinity, so a non-finite float (an undefined figure, such as a code
  pass rate when no code ran) is written as `null`, in every file; readers take `null` as undefined.
* Append: each call writes whole lines ending in "\\n" in one write, then flushes and fsyncs. A kill
  can only leave a torn *last* line; `AppendLog` repairs it when the file is opened (kept when it
  parses as a whole record, cut off otherwise) and refuses a bad line anywhere else with file:line.
* `atomic_write`: a temporary file and a rename, so a reader never sees half a file.
* `check_settings`: the settings that decide what a run directory holds are written once; resuming
  with others is refused, naming each differing key, rather than mixing two rules in one directory.

Not covered: concurrent writers to one file (each file has one writer), compression, rotation.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from tirl.config import UserError


class DataError(UserError):
    """A data file or row that cannot be used; the message says where (file:line or file[row]) and why."""


def clean(x: Any) -> Any:
    """The NaN rule: non-finite floats -> None, through dicts, lists and tuples (tuples become lists)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x


def dumps(record: Any) -> str:
    """One record as one JSON line (no newline), NaN rule applied; `allow_nan=False` makes a miss loud."""
    return json.dumps(clean(record), ensure_ascii=False, allow_nan=False)


def atomic_write(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def pretty(obj: Any) -> str:
    """`obj` as indented JSON, NaN rule applied: a summary file or a summary a command prints."""
    return json.dumps(clean(obj), indent=2, ensure_ascii=False, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """A summary or settings file: indented, NaN rule applied, written atomically."""
    atomic_write(path, pretty(obj) + "\n")


def append_rows(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    """Append rows as whole lines in one write, flushed and fsync'ed (no read of the file)."""
    data = "".join(dumps(r) + "\n" for r in rows).encode("utf-8")
    if data:
        _append_bytes(Path(path), data)


def _append_bytes(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_rows(path: str | os.PathLike, problems: list[str] | None = None) -> list[Any]:
    """Every record of a JSONL file. A line that is not JSON raises `DataError` (file:line), or, when a
    `problems` list is given (a reader of a run that may still be writing), is noted there and skipped."""
    path = Path(path)
    rows = []
    # "\n" only: str.splitlines also cuts at U+2028, U+0085 or a form feed, which `dumps` writes raw
    # inside strings (a GSM8K solution holds U+2028)
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if problems is None:
                raise DataError(f"{path}:{n}: not a JSON line; fix or remove that line") from None
            problems.append(f"{path.name}:{n} is not JSON (skipped; a run still writing?)")
    return rows


class AppendLog:
    """An append-only JSONL file: a torn last line is repaired at open, `rows` holds what is there."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows: list[Any] = []
        self.repaired_bytes = 0
        """Bytes cut off a torn last line when the file was opened."""
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # One append is whole lines ending in "\n"; a last line without it was cut mid-write (or
            # just before its newline, when it still parses: a record is one object, and no proper
            # prefix of an object's JSON parses).
            cut = data.rfind(b"\n") + 1
            try:
                json.loads(data[cut:])
            except json.JSONDecodeError:
                self.repaired_bytes = len(data) - cut
                data = data[:cut]
                with open(self.path, "r+b") as f:
                    f.truncate(cut)
                    f.flush()
                    os.fsync(f.fileno())
            else:
                data += b"\n"
                _append_bytes(self.path, b"\n")
        for n, line in enumerate(data.split(b"\n")[:-1], 1):
            if not line.strip():
                continue
            try:
                self.rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise DataError(f"{self.path}:{n}: invalid JSON in the middle of the file (not a torn last "
                                "line); fix or remove that line") from None

    def append(self, *rows: Any) -> None:
        append_rows(self.path, rows)
        self.rows.extend(rows)


def truncate_after_step(path: str | os.PathLike, step: int) -> None:
    """Keep the rows of a per-step JSONL file whose `step` is <= `step` (for a resume from that step's
    checkpoint); lines that do not parse (a torn last line) go too. Rewritten atomically."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for ln in path.read_text(encoding="utf-8").split("\n"):
        if not ln.strip():
            continue
        try:
            if json.loads(ln).get("step", 0) <= step:
                kept.append(ln)
        except json.JSONDecodeError:
            continue
    atomic_write(path, "".join(ln + "\n" for ln in kept))


def check_settings(path: str | os.PathLike, settings: dict[str, Any], hint: str) -> None:
    """Write `settings` to `path` the first time; afterwards refuse (ValueError) when they differ.

    `hint` ends the message with what the user can do (e.g. "use another --run-dir, or the same
    settings to resume it").
    """
    path = Path(path)
    now = clean(settings)
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = [f"{k}: {old.get(k)!r} there, {now.get(k)!r} now"
                for k in sorted(set(old) | set(now)) if old.get(k) != now.get(k)]
        if diff:
            raise ValueError(f"{path.parent} holds a run with other settings ({'; '.join(diff)}, "
                             f"from {path.name}); {hint}")
        return
    atomic_write(path, json.dumps(now, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
