"""Problems (question + reference answer) for RL and evaluation, and the prompt each one becomes.

    problems = load_problems("data/train.jsonl", answer_field="solution", limit=1000)
    prompt = build_prompt(problems[0], RETOOL, tokenizer)

Sources: a JSONL, JSON (a list of objects, or `{"data": [...]}`) or Parquet file, a directory saved
with `datasets.save_to_disk`, or a Hugging Face dataset name (`datasets.load_dataset`; offline runs
load only what is cached). Field names are mapped by the `*_field` arguments (dotted paths reach nested fields,
e.g. verl's `reward_model.ground_truth`); a problem field holding a chat message list (verl's
`prompt`) gives the content of its last user message. A field left at its default name and absent
from a row is looked for under TRL's and verl's names (`_known_fields`): the problem in `prompt`
(text, or chat messages), the answer in `solution` (its last `\\boxed{}` when it is a worked
solution), `ground_truth` or `reward_model.ground_truth`, the id in `unique_id`.

Every bad row is refused with its place and reason (`data.jsonl:17: missing field 'answer' (fields
present: id, question); name the column with data.answer_field (tirl eval: --answer-field)`);
`skip_invalid=True` skips such rows, logs the count, and lists the reasons
in the returned list's `.skipped`. Numeric answers become strings (`42`, `0.5`; `3.0` stays `3.0`,
the grader compares values). Ids default to `{file stem}-{row index}` and must be unique.

Prompts (`build_prompt`): without a chat template, the style's system prompt (ReTool's tag
instructions; ToRL has none) then the style's user template (`TagStyle.render_prompt`), separated by
a blank line; with one, `apply_chat_template([system, user], add_generation_prompt=True)`, the same
messages `tirl.rollout.encode_prompt` builds.

Not covered: multiple reference answers per problem (a list answer is refused), streaming hub datasets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tirl.data.rows import DataError, Loaded, collect, is_local_source, iter_rows, packaged
from tirl.formats import TagStyle, extract_boxed, plain_prompt, problem_prompt


@dataclass
class Problem:
    """One problem: what the model is asked, and the reference answer the reward grades against."""

    id: str
    problem: str
    answer: str
    extra: dict[str, Any] = field(default_factory=dict)
    """The row's other fields, kept for reports and user filters (difficulty, source, ...)."""

    @property
    def data_source(self) -> str | None:
        """verl's `data_source` column, when the row had one (evaluation scores each source apart)."""
        value = self.extra.get("data_source")
        return str(value) if value is not None else None


def load_problems(
    source: str | os.PathLike,
    *,
    problem_field: str = "problem",
    answer_field: str = "answer",
    id_field: str = "id",
    split: str = "train",
    subset: str | None = None,
    limit: int | None = None,
    skip_invalid: bool = False,
) -> Loaded:
    """Problems from a file or dataset; a `list[Problem]` whose `.skipped` lists skipped rows' reasons.

    Raises `DataError` naming file:line (JSONL) or file[row] (JSON, Parquet, datasets) for every bad
    row unless `skip_invalid`.
    """
    stem = _stem(source)
    seen: dict[str, str] = {}

    def parse(where: str, index: int, row: dict[str, Any]) -> Problem:
        pf, af, idf = _known_fields(row, problem_field, answer_field, id_field)
        problem = _text_field(row, pf, allow_messages=True)
        answer = _answer_field(row, af)
        pid = _problem_id(row, idf, stem, index)
        if pid in seen:
            raise DataError(f"duplicate id {pid!r} (first at {seen[pid]})")
        seen[pid] = where
        used = {pf.split(".")[0], af.split(".")[0], idf.split(".")[0]}
        extra = {k: v for k, v in row.items() if k not in used}
        return Problem(pid, problem, answer, extra)

    rows = iter_rows(source, split=split, subset=subset)
    loaded = collect(rows, parse, source=str(source), skip_invalid=skip_invalid, limit=limit)
    if not loaded:
        skipped = f" ({len(loaded.skipped)} invalid row(s) skipped)" if loaded.skipped else " (the file is empty)"
        raise DataError(f"{source}: no problems{skipped}")
    return loaded


# The columns TRL's and verl's datasets use, read when the default column is absent (in this order).
ANSWER_COLUMNS = ("answer", "solution", "ground_truth", "reward_model.ground_truth")
ID_COLUMNS = ("id", "unique_id")
SET_KEY = {"problem": "data.problem_field (tirl eval: --problem-field)",
           "answer": "data.answer_field (tirl eval: --answer-field)"}


def _known_fields(row: dict[str, Any], problem_field: str, answer_field: str, id_field: str) -> tuple[str, str, str]:
    """The columns to read: the ones named, or, for a name left at its default and absent from the row,
    the first of TRL's / verl's usual columns the row has (`prompt` as text or chat messages, `solution`,
    `ground_truth`, verl's `reward_model.ground_truth`, `unique_id`); none found, the default (whose
    absence the caller reports)."""
    if problem_field == "problem" and "problem" not in row and isinstance(row.get("prompt"), (str, list)):
        problem_field = "prompt"
    if answer_field == "answer":
        answer_field = next((c for c in ANSWER_COLUMNS if _get(row, c) is not _MISSING), "answer")
    return problem_field, answer_field, _id_column(row, id_field)


def _id_column(row: dict[str, Any], id_field: str) -> str:
    if id_field != "id":
        return id_field
    return next((c for c in ID_COLUMNS if _get(row, c) is not _MISSING), "id")


def raw_rows_by_id(source: str | os.PathLike, *, id_field: str = "id", split: str = "train",
                   subset: str | None = None) -> dict[str, dict[str, Any]]:
    """Every parseable row of `source`, untouched, under the id `load_problems` gives its problem, so a
    selection of problems can be written back in the data's own format."""
    stem = _stem(source)
    out: dict[str, dict[str, Any]] = {}
    for index, (_, row) in enumerate(iter_rows(source, split=split, subset=subset)):
        if isinstance(row, dict):
            try:
                out[_problem_id(row, id_field, stem, index)] = row
            except DataError:
                continue  # load_problems refuses or skips it too: it was never trained on
    return out


def _stem(source: str | os.PathLike) -> str:
    return Path(packaged(source)).stem if is_local_source(source) else str(source).rstrip("/").split("/")[-1]


def _problem_id(row: dict[str, Any], id_field: str, stem: str, index: int) -> str:
    id_field = _id_column(row, id_field)
    raw_id = _get(row, id_field)
    return f"{stem}-{index}" if raw_id is _MISSING or raw_id is None else _scalar_str(raw_id, id_field)


# --- fields --------------------------------------------------------------------------------------
_MISSING = object()


def _get(row: dict[str, Any], path: str) -> Any:
    cur: Any = row
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def _present(row: dict[str, Any]) -> str:
    return ", ".join(map(str, row)) or "none"


def _require(row: dict[str, Any], name: str, role: str = "") -> Any:
    value = _get(row, name)
    if value is _MISSING:
        key = f"; name the column with {SET_KEY[role]}" if role in SET_KEY else ""
        raise DataError(f"missing field {name!r} (fields present: {_present(row)}){key}")
    if value is None:
        raise DataError(f"field {name!r} is null")
    return value


def _text_field(row: dict[str, Any], name: str, allow_messages: bool = False) -> str:
    value = _require(row, name, "problem")
    if allow_messages and isinstance(value, list):
        users = [m for m in value if isinstance(m, dict) and m.get("role") == "user"]
        if not users or not isinstance(users[-1].get("content"), str):
            raise DataError(f"field {name!r} is a list but holds no user message with string content")
        value = users[-1]["content"]
    if not isinstance(value, str):
        raise DataError(f"field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"field {name!r} is empty")
    return value


def _scalar_str(value: Any, name: str) -> str:
    # bool is an int subclass; `True` as an answer or id is a data error, not "True"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"field {name!r} must be a string or number, got {type(value).__name__}")
    return str(value)


def _answer_field(row: dict[str, Any], name: str) -> str:
    answer = _scalar_str(_require(row, name, "answer"), name).strip()
    if name == "solution" and "\\boxed" in answer:  # TRL's datasets: a worked solution ending in its answer
        answer = (extract_boxed(answer) or answer).strip()
    if not answer:
        raise DataError(f"field {name!r} is empty")
    return answer


# --- prompts -------------------------------------------------------------------------------------
render_messages_plain = plain_prompt


def build_prompt(
    problem: Problem | str,
    style: TagStyle | str,
    tokenizer: Any = None,
    use_chat_template: bool | None = None,
) -> str:
    """The prompt text for `problem`.

    `use_chat_template=None` uses the tokenizer's chat template when it has one; True requires one;
    False renders the paper template as plain text (system prompt, blank line, user template).
    """
    text = problem.problem if isinstance(problem, Problem) else problem
    return problem_prompt(tokenizer, text, style, use_chat_template)
