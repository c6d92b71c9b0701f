"""`tirl recipe CONFIG --run-dir DIR`: the ReTool comparison on real word problems, one command.

`configs/svamp_recipe.yaml` (train on MAWPS + ASDiv-A, test on SVAMP, SVAMP's own protocol) and
`configs/gsm8k_recipe.yaml` (GSM8K's train and test splits) run these stages, each in a sub-directory:

1. ``data/``   `tirl convert --rules` over the training set: code traces whose every stated result the
               sandbox reproduced, and their text-only twins (`tirl.convert.rules`); then a held-out
               slice of the *training* problems for tuning (`dev_fraction`, chosen by a hash of the
               id, so it never depends on order or seed): ``dev.jsonl`` (problems), ``dev_code.jsonl``
               / ``dev_text.jsonl`` (their traces); the rest: ``train.jsonl`` (problems, for RL) and
               ``sft_code.jsonl`` / ``sft_text.jsonl`` (their traces, for SFT). The two arms' traces
               cover the same problems.
2. ``code_sft/``, ``text_sft/``  `tirl sft` from the same base model on each arm's traces, same steps
               and learning rate (the stage configs differ in the traces file only).
3. ``code_rl/``, ``text_rl/``    `tirl train`: GRPO with the interpreter from code_sft, the same GRPO
               (problems, steps, samples, learning rate) without it from text_sft; held-out evaluation
               on the dev problems.
4. ``eval/``   the test benchmark, seen here for the first time: the tool arm with and without the tool
               (`tirl eval --tool both`, `comparison.json` side by side), the text arm without it.
5. ``report.md``, ``results.json``  every model in one table with its tool use, the differences that
               answer the recipe's question with paired 95% intervals, each stage's time
               (`tirl.recipe_report`; cheap, re-written on every run).

Stages 2-4 are ordinary tirl commands in a child process, printed before they run (anyone can re-run
one by hand); the stage configs name the paths of a `runs/<recipe>` run directory and the runner
overrides them with `--run-dir`'s. A stage whose `summary.json` (eval: `comparison.json` or
`summary.json`) exists is skipped, so re-running the same command continues after a failure; `stages`
picks some (`stages=[data]` writes only the data).

Not covered: several seeds (the intervals are over test problems, not over training seeds), an HTML page
(`tirl report DIR/code_rl DIR/text_rl` makes one).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from tirl.convert.config import ConvertConfig
from tirl.jsonl import atomic_write, dumps, read_rows, write_json

STAGES = ("data", "sft", "rl", "eval", "report")
EVAL_MODELS = ("base", "code_sft", "text_sft", "code_rl", "text_rl")


def _svamp_convert() -> ConvertConfig:
    return ConvertConfig(input="tirl:mawps_asdiv_train", solution_field="equation", rules="equation",
                         concurrency=16)


@dataclass
class RecipeConfig:
    convert: ConvertConfig = field(default_factory=_svamp_convert)
    """The training set and its rule-based conversion (`tirl convert`'s settings; `rules` must be set)."""
    dev_fraction: float = 0.1
    """Share of the training problems held out for tuning (by a hash of the id); never the test set."""
    code_sft: str = "configs/svamp_retool_sft.yaml"
    text_sft: str = "configs/svamp_text_sft.yaml"
    code_rl: str = "configs/svamp_retool.yaml"
    text_rl: str = "configs/svamp_text.yaml"
    """The four training stages' configs (`tirl sft` / `tirl train`); data and model paths are set here."""
    overrides: list[str] = field(default_factory=list)
    """key=value for all four training stages (e.g. `trainer.device=cuda`)."""
    sft_overrides: list[str] = field(default_factory=list)
    """key=value for the two SFT stages only (e.g. `trainer.steps=2` in a smoke run)."""
    rl_overrides: list[str] = field(default_factory=list)
    """key=value for the two RL stages only (e.g. `rollout.n=2`)."""
    rl_one_step_share: float | None = None
    """Share of one-step problems (one calculation in the reference solution) among both RL arms'
    training problems: every other problem, and enough one-step ones (chosen by a hash of the id) to make
    this share, in ``data/rl_train_<share>.jsonl``. None: all of ``train.jsonl``, the data's own mix. Why
    try it: GRPO from the tool arm's SFT model on MAWPS + ASDiv-A (two thirds one-step) taught it to answer
    after its first call, losing two-step problems on the dev slice (58 -> 51%, fp32 greedy). Not a fix:
    with a third one-step, one seed gained (58 -> 61%) and another lost (58 -> 52%), the same way
    (docs/results/realdata.md)."""
    benchmark: str = "svamp"
    """The test benchmark (`tirl eval --benchmark`), used by the last stage only."""
    eval_flags: list[str] = field(default_factory=lambda: ["--max-tokens", "256"])
    """More `tirl eval` flags for the last stage (`--limit 100`, `--precision bf16`, ...)."""
    sampled_flags: list[str] = field(default_factory=list)
    """When set, every model is scored a second time with these flags added (e.g. `--n 4 --temperature
    1.0` for avg@4); empty = greedy only."""
    eval_models: list[str] = field(default_factory=lambda: list(EVAL_MODELS))
    """Which models the eval stage scores, in this order (base, code_sft, text_sft, code_rl, text_rl): e.g.
    `eval_models=[code_rl,text_rl]` scores the two arms' final policies on a whole test set first and the
    rest on a later run; the report shows what has been scored."""
    stages: list[str] = field(default_factory=lambda: list(STAGES))

    def validate(self) -> None:
        if not self.convert.rules:
            raise ValueError("convert.rules must be set (calculator or equation): the recipe converts by rules")
        if not 0 < self.dev_fraction < 1:
            raise ValueError(f"dev_fraction must be in (0, 1), got {self.dev_fraction}")
        if self.rl_one_step_share is not None and not 0 <= self.rl_one_step_share < 1:
            raise ValueError(f"rl_one_step_share must be in [0, 1) or null, got {self.rl_one_step_share}")
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; known: {', '.join(STAGES)}")
        unknown = set(self.eval_models) - set(EVAL_MODELS)
        if unknown:
            raise ValueError(f"unknown eval_models {sorted(unknown)}; known: {', '.join(EVAL_MODELS)}")


def in_dev(problem_id: str, fraction: float) -> bool:
    """Whether a training problem is in the held-out slice: a hash of its id, independent of order."""
    return _unit_hash("tirl-dev", problem_id) < fraction


def _unit_hash(salt: str, problem_id: str) -> float:
    digest = hashlib.sha256(f"{salt}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


# --- stage 1: data --------------------------------------------------------------------------------
def prepare_data(cfg: RecipeConfig, data_dir: Path, on_item: Callable[[str], None] | None = None) -> dict:
    """Convert the training set by rules (resumable, `data_dir/convert`) and write the split files."""
    from tirl.convert.items import load_items
    from tirl.convert.pipeline import TWINS_FILE, convert_async
    from tirl.convert.rules import RuleRewriter
    from tirl.formats import get_style
    from tirl.sandbox import Sandbox, SandboxConfig

    items = load_items(cfg.convert)
    rewriter = RuleRewriter(items, cfg.convert.rules, get_style(cfg.convert.style), cfg.convert.layout,
                            cfg.convert.number_format)
    with Sandbox(SandboxConfig(timeout_s=cfg.convert.exec_timeout_s)) as sandbox:
        converted = asyncio.run(convert_async(cfg.convert, rewriter, sandbox, data_dir / "convert", items=items,
                                              on_item=on_item, model_id="recipe", twin=rewriter.text_twin))
    dev = {it.id for it in items if in_dev(it.id, cfg.dev_fraction)}
    code = read_rows(data_dir / "convert" / "accepted.jsonl")
    text = read_rows(data_dir / "convert" / TWINS_FILE)
    steps = {it.id: _steps(rewriter, it.id) for it in items}
    files = {
        "train.jsonl": [_problem(it, steps[it.id]) for it in items if it.id not in dev],
        "dev.jsonl": [_problem(it, steps[it.id]) for it in items if it.id in dev],
        "sft_code.jsonl": [r for r in code if r["id"] not in dev],
        "sft_text.jsonl": [r for r in text if r["id"] not in dev],
        "dev_code.jsonl": [r for r in code if r["id"] in dev],
        "dev_text.jsonl": [r for r in text if r["id"] in dev],
    }
    for name, rows in files.items():
        atomic_write(data_dir / name, "".join(dumps(r) + "\n" for r in rows))
    summary = {"convert": {k: converted[k] for k in ("input_items", "accepted", "acceptance_rate",
                                                     "rejected_by_reason")},
               "rows": {name: len(rows) for name, rows in files.items()}, "dev_fraction": cfg.dev_fraction}
    write_json(data_dir / "summary.json", summary)
    return summary


def _problem(it: Any, steps: int | None) -> dict[str, Any]:
    return {"id": it.id, "problem": it.problem, "answer": it.answer, "steps": steps}


def _steps(rewriter: Any, problem_id: str) -> int | None:
    """Calculations in the reference solution; None where the rules cannot read it."""
    from tirl.convert.llm import NotRewritable

    try:
        return len(rewriter.worked(problem_id).calcs)
    except NotRewritable:
        return None


def write_rl_problems(cfg: RecipeConfig, data: Path) -> tuple[int, int]:
    """The RL problems of `rl_one_step_share` (see the field): (one-step, other) problems written."""
    rows = read_rows(data / "train.jsonl")
    if any("steps" not in r for r in rows):
        raise RuntimeError(f"{data / 'train.jsonl'} has no step counts (an older tirl wrote it): delete "
                           f"{data / 'summary.json'} and run the data stage again")
    share = cfg.rl_one_step_share
    one = sorted((r["id"] for r in rows if r["steps"] == 1), key=lambda i: _unit_hash("tirl-mix", i))
    other = sum(r["steps"] != 1 for r in rows)
    chosen = set(one[:min(len(one), round(other * share / (1 - share)))])
    atomic_write(rl_problems(cfg, data), "".join(dumps(r) + "\n" for r in rows if r["steps"] != 1 or r["id"] in chosen))
    return len(chosen), other


def rl_problems(cfg: RecipeConfig, data: Path) -> Path:
    if cfg.rl_one_step_share is None:
        return data / "train.jsonl"
    return data / f"rl_train_{cfg.rl_one_step_share:g}.jsonl"


# --- stages 2-4: tirl commands ----------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    stage: str
    out: Path
    """Its run directory; the step is done when `done` exists there."""
    argv: list[str]
    done: str = "summary.json"


def training_steps(cfg: RecipeConfig, run_dir: Path) -> list[Step]:
    """The two SFT and two RL commands, data and model paths pointing into `run_dir`."""
    data = run_dir / "data"
    steps = []
    for arm, sft_cfg in (("code", cfg.code_sft), ("text", cfg.text_sft)):
        steps.append(Step("sft", run_dir / f"{arm}_sft", ["sft", sft_cfg, f"data.train={data}/sft_{arm}.jsonl",
                                                          f"data.eval={data}/dev_{arm}.jsonl", *cfg.overrides,
                                                          *cfg.sft_overrides]))
    for arm, rl_cfg in (("code", cfg.code_rl), ("text", cfg.text_rl)):
        steps.append(Step("rl", run_dir / f"{arm}_rl", ["train", rl_cfg, f"model.path={run_dir}/{arm}_sft/model",
                                                        f"data.train={rl_problems(cfg, data)}",
                                                        f"data.test={data}/dev.jsonl", *cfg.overrides,
                                                        *cfg.rl_overrides]))
    return steps


def eval_steps(cfg: RecipeConfig, run_dir: Path) -> list[Step]:
    """The test benchmark for `cfg.eval_models` in their order (all: the base model, both SFT models and
    each RL arm's final policy; a model's run need only exist when it is chosen): tool arm models with
    and without the interpreter (`--tool both`), text arm models without it. With
    `sampled_flags`, each model once more with them (e.g. avg@4) in `eval/<model>_sampled`."""
    models = {"base": (lambda: _base_model(run_dir), "on"),
              "code_sft": (lambda: _sft_model(run_dir / "code_sft"), "both"),
              "text_sft": (lambda: _sft_model(run_dir / "text_sft"), "off"),
              "code_rl": (lambda: _final_policy(run_dir / "code_rl"), "both"),
              "text_rl": (lambda: _final_policy(run_dir / "text_rl"), "off")}
    steps = []
    for name in cfg.eval_models:
        model_of, tool = models[name]
        model = model_of()
        prompt = [_base_prompt_file(run_dir)] if name == "base" else []
        done = "comparison.json" if tool == "both" else "summary.json"
        flags = [("", cfg.eval_flags)] + ([("_sampled", cfg.eval_flags + cfg.sampled_flags)] if cfg.sampled_flags else [])
        for suffix, more in flags:
            steps.append(Step("eval", run_dir / "eval" / f"{name}{suffix}",
                              ["eval", *prompt, "--model", model, "--benchmark", cfg.benchmark, "--tool", tool, *more],
                              done))
    return steps


def _final_policy(rl_dir: Path) -> str:
    summary = rl_dir / "summary.json"
    if not summary.exists():
        raise RuntimeError(f"no finished RL run in {rl_dir}: run the rl stage first")
    return str(Path(json.loads(summary.read_text())["checkpoint"]) / "policy")


def _sft_model(sft_dir: Path) -> str:
    if not (sft_dir / "summary.json").exists():
        raise RuntimeError(f"no finished SFT run in {sft_dir}: run the sft stage first")
    return str(sft_dir / "model")


def _base_model(run_dir: Path) -> str:
    """The model both SFT stages started from (their saved config)."""
    from omegaconf import OmegaConf

    _sft_model(run_dir / "code_sft")
    return str(OmegaConf.load(run_dir / "code_sft" / "config.yaml").model.path)


def _base_prompt_file(run_dir: Path) -> str:
    """An eval config holding the prompt the arms were trained with, so the base model is asked the same way."""
    from tirl.trained_settings import FILE

    prompt = json.loads((run_dir / "code_sft" / "model" / FILE).read_text())["prompt"]
    path = run_dir / "eval" / "base_prompt.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"prompt": prompt}, indent=1) + "\n")  # JSON is YAML
    return str(path)


def run_recipe(cfg: RecipeConfig, run_dir: str | Path, call: Callable[[list[str]], int] | None = None,
               say: Callable[[str], None] = print) -> dict:
    """Every chosen stage in order; `call(argv)` runs one tirl command (default: `python -m tirl.cli`)."""
    cfg.validate()
    run_dir = Path(run_dir)
    call = call or _tirl
    done: dict[str, Any] = {}
    if "data" in cfg.stages and (run_dir / "data" / "summary.json").exists():
        say(f"== data: {run_dir / 'data'} is done, skipped")
    elif "data" in cfg.stages:
        say(f"== data: {cfg.convert.input} -> {run_dir / 'data'}")
        with timed(run_dir, "data"):
            done["data"] = prepare_data(cfg, run_dir / "data")
    for stage in ("sft", "rl", "eval"):
        if stage not in cfg.stages:
            continue
        if stage == "rl" and cfg.rl_one_step_share is not None:
            one, other = write_rl_problems(cfg, run_dir / "data")
            say(f"== rl problems: {other} with several steps or unread, {one} one-step -> "
                f"{rl_problems(cfg, run_dir / 'data')}")
        steps = eval_steps(cfg, run_dir) if stage == "eval" else training_steps(cfg, run_dir)
        for step in (s for s in steps if s.stage == stage):
            if (step.out / step.done).exists():
                say(f"== {stage}: {step.out} is done, skipped")
                continue
            argv = [*step.argv, "--run-dir", str(step.out)]
            say(f"== {stage}: tirl {' '.join(argv)}")
            with timed(run_dir, step.out.name if stage != "eval" else f"eval/{step.out.name}"):
                if call(argv) != 0:
                    raise RuntimeError(f"stage {stage} failed: tirl {' '.join(argv)}")
            done[str(step.out)] = "ran"
    if "report" in cfg.stages:
        from tirl.recipe_report import markdown, write_report

        say(f"== report: {run_dir / 'report.md'}")
        say(markdown(write_report(run_dir, cfg.benchmark)))
    return done


@contextmanager
def timed(run_dir: Path, name: str) -> Iterator[None]:
    """Adds a finished stage's wall time to `stage_times.json` (a failed one is not recorded)."""
    from tirl.recipe_report import TIMES_FILE

    t = time.perf_counter()
    yield
    path = run_dir / TIMES_FILE
    times = json.loads(path.read_text()) if path.exists() else {}
    times[name] = round(time.perf_counter() - t, 1)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, times)


def _tirl(argv: list[str]) -> int:
    return subprocess.run([sys.executable, "-m", "tirl.cli", *argv]).returncode


# --- the command ------------------------------------------------------------------------------------
def add_arguments(parser: Any) -> None:
    from tirl.config import add_config_arguments

    parser.description = (
        "The ReTool comparison on real word problems: rule-based code traces and text twins from the "
        "training set (verified in the sandbox), a held-out dev slice, SFT and GRPO with and without the "
        "interpreter, then the test benchmark with and without the tool. configs/svamp_recipe.yaml, "
        "configs/gsm8k_recipe.yaml. Re-run to continue.")
    add_config_arguments(parser, example="stages=[data] dev_fraction=0.05")
    parser.add_argument("--run-dir", default="runs/recipe", help="where every stage goes (default: runs/recipe)")


def run(args: Any) -> int:
    from tirl.commands import guarded

    return guarded("recipe", lambda: _run(args))


def _run(args: Any) -> int:
    from tirl.commands import UserError, command_config

    cfg = command_config(RecipeConfig, args)
    try:
        cfg.validate()
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        run_recipe(cfg, args.run_dir)
    except RuntimeError as e:
        raise UserError(str(e)) from None
    return 0
