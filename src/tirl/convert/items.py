"""The input of `tirl convert`: problems with text-only solutions, as `Item`s."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tirl.convert.config import ConvertConfig
from tirl.data.rows import DataError, collect, is_local_source, iter_rows, packaged
from tirl.formats import extract_boxed


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
    stem = Path(packaged(source)).stem if is_local_source(source) else str(source).rstrip("/").split("/")[-1]
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
