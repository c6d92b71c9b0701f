"""Evaluation on math benchmarks: k samples per problem through the tool loop, graded, scored, resumable.

    problems = {"math500": load_benchmark("math500", data_dir="data")}
    summary = evaluate(generator, tokenizer, sandbox, problems, EvalConfig(n=4), "runs/eval")

Benchmarks by name (`BENCHMARKS`): `aime24`, `aime25`, `math500` resolve to `<data_dir>/<name>.jsonl`
(or `.parquet`, `.json`) when a data directory is given, else to a dataset-hub id loaded through
`datasets` (offline, only a cached copy loads; the error says every place that was tried). Any JSONL,
JSON or Parquet file with problem and answer fields works too (`load_benchmark_file`).

This is the one evaluation path: `tirl eval`, the trainer's held-out evaluation (`run_dir=None`: in
memory, nothing written) and `tirl demo` all call `evaluate`, so their figures come from the same code
(which is why this module sits below `tirl.train` in the layers). Settings are `EvalConfig`: the same
`prompt` and `rollout` sections as `tirl train`. Each sample goes through `tirl.rollout.rollout` (the
same loop, prompt rule and sandbox as RL) and `grade_trajectory` (the RL grader on the tokens the model
sampled, never on interpreter output; strict unless `lenient`). Scores are in `eval_scores.py`.

Files in the run directory:
* `samples.jsonl` — one record per finished sample: benchmark, problem id, sample index, the
  response, extracted answer, correct, grade reason, finish reason, tool calls (code, status, output,
  token span), token counts. Appended, flushed and fsync'ed after every generation batch.
* `eval_config.json` — the settings that decide the samples (model, sampling, style, ...).
* `problems.jsonl`, `summary.json` — rewritten at the end from `samples.jsonl`.

Resume: a re-run with the same `--run-dir` reads `samples.jsonl`, skips every (benchmark, problem
id, sample index) already there and runs only the rest, so a finished sample is never lost or
duplicated. A torn last line (a kill mid-write) is cut off before appending. A run directory holding
samples made with other settings is refused (the message names the differing setting); raising `n`
is allowed (the new sample indices are added).
Simplification: sampled (temperature > 0) runs draw each batch from one seeded generator, so a
resumed run's remaining samples are valid samples but not bit-identical to those an uninterrupted
run would have drawn; greedy runs are identical.

Records keep token counts, not token ids (32 samples x 500 problems x 16k tokens would be gigabytes);
the tool metrics need only counts and call spans. Not covered: per-sample generation backend modes
(the OpenAI backend's counts are in the summary), multiple reference answers.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from tirl import jsonl
from tirl.data import DataError, Problem, load_problems
from tirl.formats import PromptConfig, TagStyle, make_style
from tirl.rollout import RolloutConfig, check_prompt_and_rollout, encode_prompt, rollout
from tirl.rollout.episodes import code_ran, grade_trajectory  # noqa: F401 (code_ran re-exported)
from tirl.sandbox.protocol import SandboxLike


@dataclass(frozen=True)
class Benchmark:
    """Where a named benchmark lives on the dataset hub, and its field names there."""

    hub_id: str
    split: str
    subset: str | None = None
    problem_field: str = "problem"
    answer_field: str = "answer"
    id_field: str = "id"


# Hub ids as published when this was written; a local file (--data-dir / --data) always wins.
BENCHMARKS: dict[str, Benchmark] = {
    "aime24": Benchmark("HuggingFaceH4/aime_2024", "train"),
    "aime25": Benchmark("math-ai/aime25", "test"),
    "math500": Benchmark("HuggingFaceH4/MATH-500", "test", id_field="unique_id"),
}
LOCAL_SUFFIXES = (".jsonl", ".parquet", ".json")


def _eval_rollout() -> RolloutConfig:
    return RolloutConfig(n=1, max_new_tokens=4096, max_tool_calls=8, max_output_chars=256, temperature=0.0, seed=0)


@dataclass
class EvalConfig:
    """How samples are drawn and graded: the same `prompt` and `rollout` sections as `tirl train`.

    Defaults: one greedy sample (`rollout.n=1`, `rollout.temperature=0`), 4,096 response tokens, 8
    tool calls; ReTool reports n=32, T=1.0, top-p 0.7 (configs/eval_retool.yaml). With `--model DIR`
    the prompt and tool-loop settings saved with the model (`tirl.json`) replace these defaults.
    """

    prompt: PromptConfig = field(default_factory=PromptConfig)
    rollout: RolloutConfig = field(default_factory=_eval_rollout)
    """`rollout.n` is k of avg@k / pass@k / maj@k; `rollout.seed` seeds each batch (None = unseeded)."""
    batch_size: int = 16
    """Samples generated together per rollout call (and the unit of fsync'ed progress)."""
    lenient: bool = False
    """Fall back to the last number when no \\boxed{} is found (off: the papers' strict extraction)."""
    limit: Optional[int] = None
    """Only the first N problems of each benchmark (quick runs)."""
    skip_invalid: bool = False
    """Skip malformed data rows (their count is printed) instead of refusing the file."""

    @property
    def n(self) -> int:
        return self.rollout.n

    def identity(self) -> dict[str, Any]:
        """Settings that decide what a sample is; a resumed run must match them (n and limit may change)."""
        from tirl.config import flatten

        d = flatten(dataclasses.asdict(self))  # dotted keys: a refusal names `rollout.temperature`
        for k in ("limit", "batch_size", "skip_invalid", "rollout.n"):
            d.pop(k)
        return d

    def validate(self) -> None:
        if self.rollout.n < 1:
            raise ValueError(f"rollout.n must be >= 1, got {self.rollout.n}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        check_prompt_and_rollout(self.prompt, self.rollout)


# --- benchmarks ----------------------------------------------------------------------------------
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
        if found is None:
            raise DataError(f"benchmark {name!r}: no file {' or '.join(map(str, tried))}; put the benchmark "
                            f"there, or drop --data-dir to load the hub dataset {spec.hub_id!r}")
        return load_benchmark_file(found, limit=limit, skip_invalid=skip_invalid)
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
    """One benchmark per verl `data_source` (`name/source`) when a file mixes several, else `{name: all}`;
    the overall row still covers them all."""
    sources = sorted({p.data_source for p in problems if getattr(p, "data_source", None)})
    if len(sources) <= 1:
        return {name: list(problems)}
    out = {f"{name}/{src}": [p for p in problems if p.data_source == src] for src in sources}
    rest = [p for p in problems if not p.data_source]
    if rest:
        out[name] = rest
    return out


# --- the record store (resume) -------------------------------------------------------------------
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
            self.records.setdefault(key, rec)  # a duplicate cannot be written by us; keep the first

    def __contains__(self, key: tuple[str, str, int]) -> bool:
        return key in self.records

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        fresh = [r for r in records if (r["benchmark"], r["problem_id"], r["sample_index"]) not in self.records]
        if self.path is not None:
            jsonl.append_rows(self.path, fresh)
        for r in fresh:
            self.records[(r["benchmark"], r["problem_id"], r["sample_index"])] = r


def check_settings(run_dir: Path, settings: dict[str, Any]) -> None:
    """Write `eval_config.json`, or refuse when the run directory's samples were made differently."""
    jsonl.check_settings(run_dir / "eval_config.json", settings,
                         "use another --run-dir, or the same settings to resume it")


# --- the loop ------------------------------------------------------------------------------------
def evaluate(
    generator: Any,
    tokenizer: Any,
    sandbox: SandboxLike,
    benchmarks: dict[str, Sequence[Problem]],
    cfg: EvalConfig,
    run_dir: str | os.PathLike | None,
    *,
    model_id: str = "",
    show: bool | None = None,
) -> dict[str, Any]:
    """Sample, grade and score every (benchmark, problem, sample index) not yet in `run_dir`.

    The one evaluation path: `tirl eval`, the trainer's held-out evaluation and `tirl demo` all call
    it. `run_dir=None` keeps the records in memory and writes nothing (the trainer's periodic checks).
    `model_id` names the model or server in `eval_config.json` (a resumed run must match it).
    Returns the summary (also written to `summary.json`); see `tirl.eval_scores.summarise`.
    """
    from tirl.eval_scores import summarise, write_outputs
    from tirl.progress import progress
    from tirl.sandbox.isolation import summarise as summarise_isolation

    cfg.validate()
    n = cfg.rollout.n
    run = Path(run_dir) if run_dir is not None else None
    if run is not None:
        run.mkdir(parents=True, exist_ok=True)
        check_settings(run, {"model": model_id, **cfg.identity()})
    store = SampleStore(run / "samples.jsonl" if run is not None else None)
    style = make_style(cfg.prompt)
    rcfg = dataclasses.replace(cfg.rollout, n=1)
    problems = {name: list(ps)[: cfg.limit] if cfg.limit else list(ps) for name, ps in benchmarks.items()}
    todo = [(name, p, i) for name, ps in problems.items() for p in ps for i in range(n)
            if (name, p.id, i) not in store]
    total = sum(len(ps) for ps in problems.values()) * n
    wanted = {(name, p.id, i) for name, ps in problems.items() for p in ps for i in range(n)}
    counted = [store.records[k]["correct"] for k in wanted if k in store]
    started = time.perf_counter()
    prompt_cache: dict[str, list[int]] = {}
    seed = cfg.rollout.seed
    with progress("eval", total, disable=show if show is None else not show) as bar:
        bar.update(0, advance=total - len(todo), info=_acc(counted))
        for start in range(0, len(todo), cfg.batch_size):
            chunk = todo[start: start + cfg.batch_size]
            prompts = [prompt_cache.setdefault(p.problem, encode_prompt(tokenizer, p.problem, style, cfg.prompt.chat))
                       for _, p, _ in chunk]
            trajs, _ = rollout(generator, prompts, tokenizer, sandbox, style, rcfg,
                               seed=seed + start if seed is not None else None)
            records = [make_record(name, p, i, t, style, cfg.lenient) for (name, p, i), t in zip(chunk, trajs)]
            store.append(records)
            counted += [r["correct"] for r in records]
            bar.update(0, advance=len(chunk), info=_acc(counted))
    summary = summarise(problems, store.records, n)
    summary["elapsed_s"] = round(time.perf_counter() - started, 2)
    summary["resumed_samples"] = total - len(todo)
    summary["settings"] = {"model": model_id, **dataclasses.asdict(cfg)}
    summary["sandbox"] = summarise_isolation(getattr(sandbox, "isolation", None))
    if hasattr(generator, "modes"):
        summary["backend_modes"] = dict(generator.modes)
    if run is not None:
        write_outputs(run, summary, problems, store.records, n)
    return summary


def _acc(correct: list[bool]) -> str:
    return f"acc {sum(correct) / len(correct):.3f} ({len(correct)})" if correct else ""


def make_record(benchmark: str, problem: Problem, sample_index: int, traj: Any, style: Any = None,
                lenient: bool = False) -> dict[str, Any]:
    """The JSONL record of one graded sample (see the module docstring)."""
    g = grade_trajectory(traj, problem.answer, style, lenient=lenient)
    rec = {
        "benchmark": benchmark, "problem_id": problem.id, "sample_index": sample_index,
        "reference": problem.answer, "extracted": g.extracted, "correct": bool(g.correct), "grade": g.reason,
        "score": g.score, "finish_reason": traj.finish_reason, "num_tool_calls": traj.num_calls,
        "tool_calls": [{"code": c.code, "status": c.status, "output": c.output, "span": list(c.span),
                        "duration_s": round(c.duration_s, 4)} for c in traj.tool_calls],
        "tool_cap_hit": traj.tool_cap_hit, "unclosed_code": traj.unclosed_code,
        "response_tokens": len(traj.response_ids), "sampled_tokens": int(sum(traj.loss_mask)),
        "response": traj.text,
    }
    source = getattr(problem, "data_source", None)
    if source:
        rec["data_source"] = source
    return rec
