"""The recipe's last stage: one table of every model on the test benchmark, the differences that answer
ReTool's question with paired 95% intervals, and each stage's time (`report.md`, `results.json`).

Reads what the eval stage wrote (`eval/<model>[_sampled]/`, `tool_on/` and `tool_off/` for the tool
arm's models) and each stage's own `summary.json`; computes nothing that a stage did not record, except
the intervals (`tirl.analysis.paired`: per-problem scores, so the same problems on both sides).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tirl.analysis.paired import paired_by_id
from tirl.jsonl import atomic_write, read_rows, write_json

MODELS = (("base", "base model", "on"), ("code_sft", "tool arm, SFT", "both"),
          ("text_sft", "text arm, SFT", "off"), ("code_rl", "tool arm, SFT + RL", "both"),
          ("text_rl", "text arm, SFT + RL", "off"))
"""(eval directory, label, how it was evaluated): the tool arm with and without the interpreter."""

COMPARISONS = (
    ("tool arm vs text arm, after RL", ("code_rl", "on"), ("text_rl", "off")),
    ("tool arm vs text arm, after SFT", ("code_sft", "on"), ("text_sft", "off")),
    ("RL on the tool arm (SFT + RL vs SFT)", ("code_rl", "on"), ("code_sft", "on")),
    ("RL on the text arm (SFT + RL vs SFT)", ("text_rl", "off"), ("text_sft", "off")),
    ("the interpreter itself (tool arm after RL, tool on vs off)", ("code_rl", "on"), ("code_rl", "off")),
    ("tool arm after RL vs the base model", ("code_rl", "on"), ("base", "on")),
)
"""(what it answers, model a, model b): a - b on the same problems."""

STAGE_DIRS = ("code_sft", "text_sft", "code_rl", "text_rl")
TIMES_FILE = "stage_times.json"


def _eval_dir(run_dir: Path, name: str, how: str, mode: str, suffix: str) -> Path:
    d = run_dir / "eval" / f"{name}{suffix}"
    return d / f"tool_{mode}" if how == "both" else d


def _modes(how: str) -> tuple[str, ...]:
    return ("on", "off") if how == "both" else (how,)


def per_problem(eval_dir: Path) -> dict[str, float]:
    """{benchmark/problem id: share of its samples correct} from an evaluation's problems.jsonl."""
    rows = read_rows(eval_dir / "problems.jsonl")
    return {f"{r['benchmark']}/{r['problem_id']}": r["correct"] / r["n"] for r in rows}


def model_row(eval_dir: Path) -> dict[str, Any]:
    """The figures one evaluation recorded: accuracy and the tool-use statistics."""
    s = json.loads((eval_dir / "summary.json").read_text())
    o, n = s["overall"], s["n"]
    pass_rate = o.get("tool/pass_rate")
    return {"problems": o["problems"], "n": n, "accuracy": o[f"avg@{n}"],
            "code_ratio": o.get("tool/code_ratio"), "calls_mean": o.get("tool/calls_mean"),
            "calls_per_solved": o.get("tool/calls_per_correct"),
            "tool_error_rate": None if pass_rate is None else 1 - pass_rate,
            "interpreter_share": o.get("response/interpreter_share"),
            "length_mean": o.get("response/length_mean"), "no_answer": o.get("no_answer_ratio"),
            "elapsed_s": s.get("elapsed_s")}


def stage_times(run_dir: Path) -> dict[str, float]:
    """Seconds per stage: what the runner timed (`stage_times.json`), else what each stage recorded."""
    path = run_dir / TIMES_FILE
    times = json.loads(path.read_text()) if path.exists() else {}
    for name in STAGE_DIRS:
        summary = run_dir / name / "summary.json"
        if name not in times and summary.exists():
            times[name] = json.loads(summary.read_text()).get("wall_s")
    for eval_dir in sorted((run_dir / "eval").glob("*/")):
        key = f"eval/{eval_dir.name}"
        if key not in times:
            parts = [eval_dir] if (eval_dir / "summary.json").exists() else sorted(eval_dir.glob("tool_*/"))
            spent = [json.loads((p / "summary.json").read_text()).get("elapsed_s") for p in parts
                     if (p / "summary.json").exists()]
            if spent and None not in spent:
                times[key] = sum(spent)
    return {k: v for k, v in times.items() if v is not None}


def build(run_dir: str | Path, benchmark: str) -> dict[str, Any]:
    """results.json's content: rows per scoring (greedy, and sampled when it ran), comparisons, times."""
    run_dir = Path(run_dir)
    if not (run_dir / "eval").is_dir():
        raise RuntimeError(f"no evaluations in {run_dir / 'eval'}: run the eval stage first")
    results: dict[str, Any] = {"benchmark": benchmark, "scorings": {}, "stage_times_s": stage_times(run_dir)}
    for suffix, scoring in (("", "greedy"), ("_sampled", "sampled")):
        dirs = {(name, mode): _eval_dir(run_dir, name, how, mode, suffix)
                for name, _, how in MODELS for mode in _modes(how)}
        done = {key: d for key, d in dirs.items() if (d / "summary.json").exists()}
        if not done:
            continue
        rows = {f"{name}/{mode}": model_row(d) for (name, mode), d in done.items()}
        scores = {key: per_problem(d) for key, d in done.items()}
        compared = {}
        for what, a, b in COMPARISONS:
            if a in scores and b in scores:
                p = paired_by_id(scores[a], scores[b])
                compared[what] = {"a": "/".join(a), "b": "/".join(b), "diff": p.diff, "lo": p.lo, "hi": p.hi,
                                  "n": p.n, "excludes_zero": p.excludes_zero}
        results["scorings"][scoring] = {"rows": rows, "comparisons": compared}
    return results


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown(results: dict[str, Any]) -> str:
    """report.md: a table per scoring, the paired differences, the stage times."""
    labels = {name: label for name, label, _ in MODELS}
    out = [f"# Recipe results on {results['benchmark']}", ""]
    for scoring, sc in results["scorings"].items():
        first = next(iter(sc["rows"].values()))
        out += [f"## {scoring} (avg@{first['n']}, {first['problems']} problems)", "",
                "| model | interpreter | accuracy % | uses code % | calls | calls per solved | tool errors % | "
                "interpreter share of tokens % | tokens |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for key, r in sc["rows"].items():
            name, mode = key.split("/")
            out.append(f"| {labels[name]} | {mode} | **{_pct(r['accuracy'])}** | {_pct(r['code_ratio'])} | "
                       f"{_num(r['calls_mean'])} | {_num(r['calls_per_solved'])} | {_pct(r['tool_error_rate'])} | "
                       f"{_pct(r['interpreter_share'])} | {_num(r['length_mean'])} |")
        out += ["", "| difference (a - b, same problems) | points [paired 95% interval] | excludes 0 |",
                "| --- | --- | --- |"]
        for what, c in sc["comparisons"].items():
            span = f"{100 * c['diff']:+.1f} [{100 * c['lo']:+.1f}, {100 * c['hi']:+.1f}]"
            out.append(f"| {what} | {span} | {'yes' if c['excludes_zero'] else 'no'} |")
        out.append("")
    times = results["stage_times_s"]
    if times:
        out += ["## Time per stage", "", "| stage | minutes |", "| --- | --- |"]
        out += [f"| {k} | {v / 60:.1f} |" for k, v in times.items()]
        out += [f"| total | {sum(times.values()) / 60:.1f} |", ""]
    return "\n".join(out)


def write_report(run_dir: str | Path, benchmark: str) -> dict[str, Any]:
    run_dir = Path(run_dir)
    results = build(run_dir, benchmark)
    write_json(run_dir / "results.json", results)
    atomic_write(run_dir / "report.md", markdown(results) + "\n")
    return results
