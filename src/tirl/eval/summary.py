"""Scores of an evaluation from its sample records, per benchmark and overall, and the files they go to
(`summary.json`, `problems.jsonl`); the printed table is `tirl.eval.table`.

Per benchmark (P problems, the first n samples of each):
* `avg@n` — mean correctness over all P*n samples (the papers' "accuracy");
* `pass@k` — Chen et al.'s unbiased estimator (`tirl.analysis.scores.pass_at_k`) averaged over problems, for
  k = 1, 2, 4, ... <= n, and n itself;
* `maj@k` — for the same k: the majority answer of the first k samples (`tirl.analysis.scores.maj_at_k`:
  light normal form for votes, unanswered samples do not vote, ties go to the answer reached first)
  is correct, averaged over problems;
* `no_answer_ratio`, and the tool-use statistics of `tirl.analysis.tool_stats.tool_metrics` (`tool/...`,
  `response/...`), which include the code-purpose distribution (`purpose/<name>`: share of executed
  calls per purpose, `tirl.analysis.code_purpose`);
* `tool/calls_per_correct` — code calls per correct sample (the cost of a solved problem in calls);
  NaN when no sample is correct.
* `reward_mean` — the mean score; with reward functions (the trainer's held-out evaluation) the weighted
  reward the run trains on, and `reward/<name>` each function's mean value.

`tool_comparison` puts a run with the tool and one without side by side (`tirl eval --tool both`):
accuracy, share of responses with code, share that wrote a block the cap refused, tool error rate
(failed / executed calls), interpreter share of the response tokens, calls per correct sample.

Overall: the same over the union of all benchmarks' problems (micro average: a 500-problem benchmark
weighs more than a 30-problem one); the per-benchmark rows are what papers report.

Samples the infrastructure failed (`infra_failed` records) are no samples: every score is over the
others (`samples` counts those), they are counted in `infra_failed`, and a problem keeps its valid
samples only: pass@k and maj@k are over the problems with at least k of them, and a problem with none
is left out (`problems` counts the rest). Without such failures nothing changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from tirl.analysis.scores import avg_at_k, maj_at_k, majority_answer, pass_at_k
from tirl.eval.store import infra_failed
from tirl.jsonl import atomic_write, dumps, write_json
from tirl.rewards import component_means

NAN = float("nan")


def ks_for(n: int) -> list[int]:
    """1, 2, 4, ... <= n, and n itself."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks if ks[-1] == n else ks + [n]


def score_rows(rows: Sequence[Sequence[dict[str, Any]]], n: int) -> dict[str, float]:
    """Scores of problems given as lists of their n sample records (sorted by sample index)."""
    from tirl.analysis.tool_stats import tool_metrics

    failed = sum(infra_failed(r) for samples in rows for r in samples)
    rows = [v for v in ([r for r in samples if not infra_failed(r)] for samples in rows) if v]
    flat = [r for samples in rows for r in samples]
    if not rows:
        return {"problems": 0, "samples": 0, "infra_failed": failed}
    out: dict[str, float] = {"problems": len(rows), "samples": len(flat), "infra_failed": failed}
    out[f"avg@{n}"] = avg_at_k([r["correct"] for r in flat])
    for k in ks_for(n):
        have = [s for s in rows if len(s) >= k]
        out[f"pass@{k}"] = (sum(pass_at_k(len(s), sum(r["correct"] for r in s), k) for s in have) / len(have)
                            if have else None)
    for k in ks_for(n):
        have = [s for s in rows if len(s) >= k]
        out[f"maj@{k}"] = (sum(maj_at_k([r["extracted"] for r in s], [r["correct"] for r in s], k) for s in have)
                           / len(have) if have else None)
    out["no_answer_ratio"] = sum(r["grade"] == "no_answer" for r in flat) / len(flat)
    scores = [r["score"] for r in flat if "score" in r]  # records before issue 11 have none
    if scores:
        out["reward_mean"] = sum(scores) / len(scores)
    out.update({f"reward/{name}": v for name, v in component_means(r.get("rewards") for r in flat).items()})
    out.update(tool_metrics(metrics_view(flat)))
    solved = [r for r in flat if r["correct"]]
    out["tool/calls_per_correct"] = (sum(r["num_tool_calls"] for r in solved) / len(solved)) if solved else NAN
    return out


COMPARED = (("accuracy", "avg@{n}"), ("code_ratio", "tool/code_ratio"), ("blocked_ratio", "tool/cap_hit_ratio"),
            ("tool_error_rate", None), ("interpreter_share", "response/interpreter_share"),
            ("calls_per_correct", "tool/calls_per_correct"))
"""The side-by-side figures: name -> summary key (`tool_error_rate` is 1 - `tool/pass_rate`)."""


def _compared(scores: dict[str, Any], n: int) -> dict[str, float]:
    out = {}
    for name, key in COMPARED:
        if key is None:
            out[name] = 1.0 - scores.get("tool/pass_rate", NAN)  # NaN stays NaN: nothing ran
        else:
            out[name] = scores.get(key.format(n=n), NAN)
    return out


def tool_comparison(with_tool: dict[str, Any], without_tool: dict[str, Any]) -> dict[str, Any]:
    """{"n", "benchmarks": {name: {"on": figures, "off": figures}}, "overall": {...}} from two summaries
    of the same problems and n (`summarise`'s), one evaluated with the tool and one without."""
    n = with_tool["n"]
    rows = {name: {"on": _compared(s, n), "off": _compared(without_tool["benchmarks"][name], n)}
            for name, s in with_tool["benchmarks"].items()}
    overall = {"on": _compared(with_tool["overall"], n), "off": _compared(without_tool["overall"], n)}
    return {"n": n, "benchmarks": rows, "overall": overall}


def metrics_view(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records as the trajectory-shaped dicts `tirl.analysis.tool_stats.tool_metrics` reads (lengths, not ids)."""
    out = []
    for r in records:
        n, s = int(r["response_tokens"]), int(r["sampled_tokens"])
        out.append({"response_ids": range(n), "loss_mask": [1] * s + [0] * (n - s),
                    "finish_reason": r["finish_reason"], "tool_calls": r["tool_calls"],
                    "tool_cap_hit": r["tool_cap_hit"], "unclosed_code": r["unclosed_code"], "text": r["response"]})
    return out


def _rows(problems: Sequence[Any], records: dict, name: str, n: int) -> list[list[dict[str, Any]]]:
    rows = []
    for p in problems:
        samples = [records.get((name, p.id, i)) for i in range(n)]
        if any(s is None for s in samples):
            raise ValueError(f"{name}/{p.id}: {sum(s is None for s in samples)} of {n} samples missing")
        rows.append(samples)
    return rows


def summarise(problems: dict[str, Sequence[Any]], records: dict, n: int) -> dict[str, Any]:
    """{"n", "benchmarks": {name: scores}, "overall": scores} (see the module docstring)."""
    per = {name: _rows(ps, records, name, n) for name, ps in problems.items()}
    summary: dict[str, Any] = {"n": n, "benchmarks": {name: score_rows(rows, n) for name, rows in per.items()}}
    summary["overall"] = score_rows([r for rows in per.values() for r in rows], n)
    return summary


def problem_rows(problems: dict[str, Sequence[Any]], records: dict, n: int) -> list[dict[str, Any]]:
    """One row per problem: reference, correct count, pass@1, the majority answer and whether it is right
    (over the samples the infrastructure did not fail: `n` counts them, `infra_failed` the others)."""
    out = []
    for name, ps in problems.items():
        for p, every in zip(ps, _rows(ps, records, name, n)):
            samples = [s for s in every if not infra_failed(s)]
            answers = [s["extracted"] for s in samples]
            vote, first = majority_answer(answers)
            out.append({"benchmark": name, "problem_id": p.id, "reference": p.answer, "n": len(samples),
                        "infra_failed": len(every) - len(samples), "correct": sum(s["correct"] for s in samples),
                        "pass@1": sum(s["correct"] for s in samples) / len(samples) if samples else None,
                        "majority_answer": vote, "majority_correct": bool(first >= 0 and samples[first]["correct"]),
                        "answers": answers})
    return out


def write_outputs(run: Path, summary: dict[str, Any], problems: dict, records: dict, n: int) -> None:
    """`summary.json` and `problems.jsonl`, each written to a temporary file and renamed."""
    write_json(run / "summary.json", summary)
    atomic_write(run / "problems.jsonl", "".join(dumps(r) + "\n" for r in problem_rows(problems, records, n)))
