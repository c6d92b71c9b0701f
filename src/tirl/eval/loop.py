"""`evaluate`: k samples per problem through the tool loop, graded, stored, scored.

Each sample goes through `tirl.rollout.rollout` (the same loop, prompt rule and sandbox as RL) and
`tirl.rollout.episodes.grade_trajectory` (the RL grader on the tokens the model sampled, never on
interpreter output; strict unless `lenient`); its record (`make_record`) is appended to the store
after every generation batch; scores are `tirl.eval.summary`'s.

A sample the infrastructure failed (`Trajectory.infra_failed`: a sandbox or generation server that kept
failing) is not wrong: it is recorded with `infra_failed`, left out of every score, counted apart
(`infra_failed` in the summary) and played again by a re-run of the same command. When every sample
failed so, the evaluation fails loudly (`InfraDown`, one line naming the last error).

Simplification: sampled (temperature > 0) runs draw each batch from one seeded generator, so a
resumed run's remaining samples are valid samples but not bit-identical to those an uninterrupted
run would have drawn; greedy runs are identical.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Sequence

from tirl.data import Problem
from tirl.eval.config import EvalConfig
from tirl.eval.store import SampleStore, check_settings, infra_failed
from tirl.formats import make_style
from tirl.resources import stage_peak
from tirl.rollout import encode_prompt, rollout
from tirl.rollout.episodes import grade_all, grade_trajectory
from tirl.sandbox.protocol import SandboxLike


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
    rewards: Any = None,
) -> dict[str, Any]:
    """Sample, grade and score every (benchmark, problem, sample index) not yet in `run_dir`.

    The one evaluation path: `tirl eval`, the trainer's held-out evaluation and `tirl demo` all call
    it. `run_dir=None` keeps the records in memory and writes nothing (the trainer's periodic checks).
    `model_id` names the model or server in `eval_config.json` (a resumed run must match it).
    `rewards` (`tirl.rewards.Rewards`): reward functions that make each record's `score` (and its
    `rewards`, `reward/<name>` in the summary), as in training; None = the grade's +1/-1.
    Returns the summary (also written to `summary.json`); see `tirl.eval.summary.summarise`.
    """
    from tirl.eval.summary import summarise, write_outputs
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
    counted = [store.records[k]["correct"] for k in wanted if k in store]  # done samples only
    started = time.perf_counter()
    prompt_cache: dict[str, list[int]] = {}
    seed = cfg.rollout.seed
    with progress("eval", total, disable=show if show is None else not show) as bar, stage_peak() as mem:
        bar.update(0, advance=total - len(todo), info=_acc(counted))
        for start in range(0, len(todo), cfg.batch_size):
            chunk = todo[start: start + cfg.batch_size]
            prompts = [prompt_cache.setdefault(p.problem, encode_prompt(tokenizer, p.problem, style, cfg.prompt.chat))
                       for _, p, _ in chunk]
            trajs, _ = rollout(generator, prompts, tokenizer, sandbox, style, rcfg,
                               seed=seed + start if seed is not None else None)
            grades = grade_all(trajs, [p.answer for _, p, _ in chunk], style, lenient=cfg.lenient)
            if rewards is not None:
                grades = rewards([p for _, p, _ in chunk], trajs, grades)
            records = [make_record(name, p, i, t, style, cfg.lenient, grade=g)
                       for (name, p, i), t, g in zip(chunk, trajs, grades)]
            store.append(records)
            counted += [r["correct"] for r in records if not r["infra_failed"]]
            bar.update(0, advance=len(chunk), info=_acc(counted))
    failed = [store.records[k] for k in wanted if infra_failed(store.records[k])]
    if failed and len(failed) == len(wanted):
        from tirl.rollout.faults import InfraDown

        raise InfraDown(f"every sample ({len(failed)}) failed in the sandbox or generation server, none was "
                        f"scored; last error: {failed[-1].get('infra_error', '')}")
    summary = summarise(problems, store.records, n)
    summary["elapsed_s"] = round(time.perf_counter() - started, 2)
    summary["memory"] = mem.as_dict()  # peak resident memory while sampling and grading
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
                lenient: bool = False, grade: Any = None) -> dict[str, Any]:
    """The JSONL record of one graded sample (see the module docstring); `grade`: its `Grade`, when
    already computed (`grade_all` over a batch)."""
    g = grade if grade is not None else grade_trajectory(traj, problem.answer, style, lenient=lenient)
    rec = {
        "benchmark": benchmark, "problem_id": problem.id, "sample_index": sample_index,
        "reference": problem.answer, "extracted": g.extracted, "correct": bool(g.correct), "grade": g.reason,
        "score": g.score, "finish_reason": traj.finish_reason, "num_tool_calls": traj.num_calls,
        "tool_calls": [{"code": c.code, "status": c.status, "output": c.output, "span": list(c.span),
                        "duration_s": round(c.duration_s, 4)} for c in traj.tool_calls],
        "tool_cap_hit": traj.tool_cap_hit, "unclosed_code": traj.unclosed_code,
        "infra_failed": traj.infra_failed, **({"infra_error": traj.infra_error} if traj.infra_failed else {}),
        "response_tokens": len(traj.response_ids), "sampled_tokens": int(sum(traj.loss_mask)),
        "response": traj.text,
    }
    if g.rewards is not None:
        rec["rewards"] = g.rewards
    source = getattr(problem, "data_source", None)
    if source:
        rec["data_source"] = source
    return rec
