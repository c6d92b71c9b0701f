"""`samples.jsonl` of an evaluation run, keyed for resume, and the settings its samples were made with.

Resume: a re-run with the same `--run-dir` reads `samples.jsonl`, skips every (benchmark, problem
id, sample index) already there and runs only the rest, so a finished sample is never lost or
duplicated. A torn last line (a kill mid-write) is cut off before appending. A run directory holding
samples made with other settings is refused (the message names the differing setting). A sample the
infrastructure failed (`infra_failed` in its record) is kept in the file but is not done: a re-run
plays it again, and its new record takes its place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from tirl import jsonl
from tirl.data import DataError


class SampleStore:
    """`samples.jsonl`: records keyed by (benchmark, problem id, sample index); a `tirl.jsonl.AppendLog`.
    With `path=None` the records live in memory only (the trainer's held-out evaluation)."""

    def __init__(self, path: str | os.PathLike | None):
        self.log = jsonl.AppendLog(path) if path is not None else None
        self.path = self.log.path if self.log is not None else None
        self.repaired_bytes = self.log.repaired_bytes if self.log is not None else 0
        self.records: dict[tuple[str, str, int], dict[str, Any]] = {}
        for n, rec in enumerate(self.log.rows if self.log is not None else [], 1):
            try:
                key = (str(rec["benchmark"]), str(rec["problem_id"]), int(rec["sample_index"]))
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{self.path}: record {n}: not a sample record ({e}); "
                                "move the file away to start this evaluation afresh") from e
            if key not in self:  # the first finished record, else the last failed one
                self.records[key] = rec

    def __contains__(self, key: tuple[str, str, int]) -> bool:
        """Whether the sample is done (a record the infrastructure did not fail)."""
        return key in self.records and not infra_failed(self.records[key])

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        fresh = [r for r in records if (r["benchmark"], r["problem_id"], r["sample_index"]) not in self]
        if self.path is not None:
            jsonl.append_rows(self.path, fresh)
        for r in fresh:
            self.records[(r["benchmark"], r["problem_id"], r["sample_index"])] = r


def infra_failed(record: dict[str, Any]) -> bool:
    """The record of a sample the infrastructure failed (records written before the flag existed: no)."""
    return bool(record.get("infra_failed", False))


def check_settings(run_dir: Path, settings: dict[str, Any]) -> None:
    """Write `eval_config.json`, or refuse when the run directory's samples were made differently."""
    jsonl.check_settings(run_dir / "eval_config.json", settings,
                         "use another --run-dir, or the same settings to resume it")
