"""Benchmarks by name (`BENCHMARKS`): `aime24`, `aime25`, `math500` resolve to `<data_dir>/<name>.jsonl`
(or `.parquet`, `.json`) when a data directory is given, else to a dataset-hub id loaded through
`datasets` (offline, only a cached copy loads; the error says every place that was tried). `gsm8k`
(GSM8K's 1,319 test problems) and `svamp` (SVAMP's 1,000) ship with tirl (`tirl:gsm8k_test`,
`tirl:svamp`; licences in `tirl/data/benchmarks/NOTICE.md`): a `<data_dir>/<name>.jsonl` replaces
them, nothing else is needed. Their answers are numbers, graded by value (`tirl.rewards.stated_number`:
`$1,234.00` is 1234). Any JSONL, JSON or Parquet file with problem and answer fields works too
(`load_benchmark_file`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tirl.data import DataError, Problem, load_problems
from tirl.data.rows import packaged


@dataclass(frozen=True)
class Benchmark:
    """Where a named benchmark lives (shipped with tirl, or on the dataset hub), and its field names there."""

    hub_id: str = ""
    split: str = "test"
    subset: str | None = None
    problem_field: str = "problem"
    answer_field: str = "answer"
    id_field: str = "id"
    shipped: str = ""
    """`tirl:NAME`, a data file in the package (`tirl.data.rows.packaged`); then no hub id is needed."""


# Hub ids as published when this was written; a local file (--data-dir / --data) always wins.
BENCHMARKS: dict[str, Benchmark] = {
    "aime24": Benchmark("HuggingFaceH4/aime_2024", "train"),
    "aime25": Benchmark("math-ai/aime25", "test"),
    "math500": Benchmark("HuggingFaceH4/MATH-500", "test", id_field="unique_id"),
    "gsm8k": Benchmark(shipped="tirl:gsm8k_test"),
    "svamp": Benchmark(shipped="tirl:svamp"),
}
LOCAL_SUFFIXES = (".jsonl", ".parquet", ".json")


def load_benchmark(name: str, data_dir: str | os.PathLike | None = None, limit: int | None = None,
                   skip_invalid: bool = False) -> list[Problem]:
    """Problems of a named benchmark: `<data_dir>/<name>.{jsonl,parquet,json}` or its hub id."""
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)} "
                        "(or pass a file with --data FILE)")
    spec = BENCHMARKS[name]
    if data_dir is not None:
        tried = [Path(data_dir) / f"{name}{s}" for s in LOCAL_SUFFIXES]
        found = next((p for p in tried if p.exists()), None)
        if found is None and spec.shipped:
            found = Path(packaged(spec.shipped))
        if found is None:
            raise DataError(f"benchmark {name!r}: no file {' or '.join(map(str, tried))}; put the benchmark "
                            f"there, or drop --data-dir to load the hub dataset {spec.hub_id!r}")
        return load_benchmark_file(found, limit=limit, skip_invalid=skip_invalid)
    if spec.shipped:
        return load_benchmark_file(spec.shipped, limit=limit, skip_invalid=skip_invalid)
    try:
        return list(load_problems(spec.hub_id, split=spec.split, subset=spec.subset, limit=limit,
                                  problem_field=spec.problem_field, answer_field=spec.answer_field,
                                  id_field=spec.id_field))
    except DataError as e:
        raise DataError(f"benchmark {name!r}: no --data-dir given, so the hub dataset {spec.hub_id!r} "
                        f"(split {spec.split!r}) was tried: {e}. Pass --data-dir DIR holding {name}.jsonl "
                        f"(fields id, problem, answer), or --data FILE.") from e


def load_benchmark_file(path: str | os.PathLike, limit: int | None = None, **fields: Any) -> list[Problem]:
    """Problems from any JSONL / JSON / Parquet file (field names as in `tirl.data.load_problems`); a
    list whose `.skipped` holds the reasons of rows skipped with `skip_invalid=True`."""
    return load_problems(path, limit=limit, **fields)


def split_by_source(name: str, problems: Sequence[Problem]) -> dict[str, list[Problem]]:
    """One benchmark per verl `data_source` (`name/source`) when a file mixes several; a file of one
    source is named by it (verl's `test.parquet` of `aime24` rows is `aime24`), else `{name: all}`. The
    overall row still covers them all."""
    sources = sorted({p.data_source for p in problems if getattr(p, "data_source", None)})
    if len(sources) == 1 and all(p.data_source for p in problems):
        return {sources[0]: list(problems)}
    if len(sources) <= 1:
        return {name: list(problems)}
    out = {f"{name}/{src}": [p for p in problems if p.data_source == src] for src in sources}
    rest = [p for p in problems if not p.data_source]
    if rest:
        out[name] = rest
    return out
