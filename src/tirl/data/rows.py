"""Reading rows (dicts) from JSONL, JSON, Parquet files or a Hugging Face dataset, each with its location.

Every loader in `tirl.data` reads through `iter_rows`, so every error message names the same kind of
place: `data.jsonl:17` (1-based line) for JSONL, `data.json[3]` / `data.parquet[3]` (0-based row index)
for JSON and Parquet, `hf:org/name[train][3]` for a hub dataset. A line that is not valid JSON, or a row
that is not an object, comes out as a `RowError` in the stream instead of a dict, so that the caller
applies one policy (refuse, or skip and count) to every kind of bad row.

`collect` is that policy: with `skip_invalid=False` it raises one `DataError` listing the first bad
rows and how many there are; with `skip_invalid=True` it drops them, logs the count, and returns a
`Loaded` list whose `.skipped` holds every reason.

A source `tirl:NAME` is a data file shipped in the package (`tirl/data/benchmarks/NAME.jsonl`, e.g.
`tirl:mawps_asdiv_train`), so configs name it without a path into site-packages.

Simplifications: files are read whole (a JSON file must fit in memory; JSONL and Parquet stream).
Not covered: compressed files (`.jsonl.gz`), CSV, remote URLs (a hub dataset name goes through
`datasets.load_dataset`, which handles those).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from tirl.jsonl import DataError  # defined with the JSONL files, raised by every loader; re-exported here

log = logging.getLogger("tirl.data")

T = TypeVar("T")

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
MAX_LISTED_ERRORS = 5  # a file with thousands of bad rows should not produce a thousand-line message


@dataclass(frozen=True)
class RowError:
    """A row that could not even be parsed into a dict."""

    where: str
    reason: str


class Loaded(list):
    """A list of loaded items; `.skipped` lists the reasons of rows skipped with `skip_invalid=True`."""

    skipped: list[str]

    def __init__(self, items=(), skipped: list[str] | None = None):
        super().__init__(items)
        self.skipped = list(skipped or [])


PACKAGED_PREFIX = "tirl:"
PACKAGED_DIR = Path(__file__).resolve().parent / "benchmarks"
"""Data files shipped with tirl (GSM8K test, SVAMP, MAWPS + ASDiv-A train; licences in NOTICE.md there)."""


def packaged(source: str | os.PathLike) -> str | os.PathLike:
    """`tirl:NAME` -> the shipped file `NAME.jsonl` (a DataError naming the shipped ones if absent);
    any other source unchanged."""
    text = str(source)
    if not text.startswith(PACKAGED_PREFIX):
        return source
    path = PACKAGED_DIR / f"{text[len(PACKAGED_PREFIX):]}.jsonl"
    if not path.exists():
        known = ", ".join(PACKAGED_PREFIX + p.stem for p in sorted(PACKAGED_DIR.glob("*.jsonl")))
        raise DataError(f"{text}: no such shipped data file; shipped: {known}")
    return path


def is_local_source(source: str | os.PathLike) -> bool:
    """True when `source` names a local file or directory (existing, or with a data-file suffix), or a
    shipped one (`tirl:NAME`)."""
    p = Path(packaged(source))
    return p.exists() or p.suffix.lower() in FILE_SUFFIXES


def iter_rows(
    source: str | os.PathLike, *, split: str = "train", subset: str | None = None
) -> Iterator[tuple[str, dict[str, Any] | RowError]]:
    """Yield `(where, row)` for every row of `source`; `row` is a dict or a `RowError`.

    `split` and `subset` (the dataset configuration name) apply to hub datasets and saved
    `datasets` directories only.
    """
    source = packaged(source)
    p = Path(source)
    if is_local_source(source):
        if not p.exists():
            raise DataError(f"{source}: no such file")
        if p.is_dir():
            yield from _iter_hf(str(p), split, subset, local=True)
            return
        suffix = p.suffix.lower()
        if suffix == ".jsonl":
            yield from _iter_jsonl(p)
        elif suffix == ".json":
            yield from _iter_json(p)
        elif suffix == ".parquet":
            yield from _iter_parquet(p)
        else:
            raise DataError(f"{source}: unsupported file type {suffix!r}; use .jsonl, .json or .parquet")
        return
    yield from _iter_hf(str(source), split, subset, local=False)


def _iter_jsonl(p: Path) -> Iterator[tuple[str, dict[str, Any] | RowError]]:
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            where = f"{p}:{n}"
            if not line.strip():
                continue  # blank lines (a trailing newline, a separator) are not rows
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield where, RowError(where, f"invalid JSON ({e.msg} at column {e.colno})")
                continue
            yield where, row if isinstance(row, dict) else RowError(where, _not_object(row))


def _iter_json(p: Path) -> Iterator[tuple[str, dict[str, Any] | RowError]]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{p}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{p}: expected a JSON list of objects or {{\"data\": [...]}}, got {type(data).__name__}"
                        + (f" with keys {', '.join(map(str, data))}" if isinstance(data, dict) else ""))
    for i, row in enumerate(data):
        where = f"{p}[{i}]"
        yield where, row if isinstance(row, dict) else RowError(where, _not_object(row))


def _iter_parquet(p: Path) -> Iterator[tuple[str, dict[str, Any] | RowError]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise DataError(f"{p}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    i = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield f"{p}[{i}]", row
            i += 1


def _iter_hf(name: str, split: str, subset: str | None, local: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    ds = load_hf_dataset(name, split=split, subset=subset, local=local)
    for i, row in enumerate(ds):
        yield f"hf:{name}[{split}][{i}]", dict(row)


def load_hf_dataset(name: str, *, split: str, subset: str | None = None, local: bool = False) -> Any:
    """`datasets.load_from_disk` for a saved dataset directory, else `datasets.load_dataset(name, subset)`.

    Any failure becomes a `DataError` saying what was tried (file path, hub name, split, offline mode).
    """
    import datasets

    if local and ((Path(name) / "state.json").exists() or (Path(name) / "dataset_dict.json").exists()):
        ds = datasets.load_from_disk(name)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{name}: no split {split!r}; splits: {', '.join(ds)}")
            ds = ds[split]
        return ds
    try:
        return datasets.load_dataset(name, subset, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many types; all mean "cannot load this"
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or \
            os.environ.get("HF_DATASETS_OFFLINE", "") not in ("", "0")
        tried = (f"a local directory {name!r}" if local else
                 f"no local file {str(Path(name).resolve())!r} exists, so it was tried as a Hugging Face "
                 f"dataset name {name!r}" + (f" (subset {subset!r})" if subset else ""))
        hint = " (offline mode is on: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE; only cached datasets load)" \
            if offline else ""
        raise DataError(f"cannot load {name!r} split {split!r}: {tried}, and that failed{hint}: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def _not_object(value: Any) -> str:
    return f"row is a JSON {type(value).__name__}, expected an object"


def collect(
    rows: Iterator[tuple[str, dict[str, Any] | RowError]],
    parse: Callable[[str, int, dict[str, Any]], T],
    *,
    source: str,
    skip_invalid: bool,
    limit: int | None = None,
) -> Loaded:
    """Apply `parse(where, index, row)` to every row; refuse or skip (and count) bad ones.

    `parse` raises `DataError` (its message without the location) for a bad row. Stops once `limit`
    items are loaded, so bad rows after the limit are never seen.
    """
    items: list[T] = []
    errors: list[str] = []
    for index, (where, row) in enumerate(rows):
        if limit is not None and len(items) >= limit:
            break
        if isinstance(row, RowError):
            errors.append(f"{row.where}: {row.reason}")
            continue
        try:
            items.append(parse(where, index, row))
        except DataError as e:
            errors.append(f"{where}: {e}")
    if errors and not skip_invalid:
        # One line: the first bad row names file and line; the count says whether there are more.
        more = f" (and {len(errors) - 1} more invalid row(s))" if len(errors) > 1 else ""
        raise DataError(f"{errors[0]}{more}; fix the data, or skip invalid rows (tirl eval --skip-invalid; "
                        "tirl train / sft: data.skip_invalid=true)")
    if errors:
        log.warning("skipped %d invalid row(s) of %s; first: %s", len(errors), source, errors[0])
    return Loaded(items, errors)
