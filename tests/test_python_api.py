"""tirl from Python (`tirl.sft`, `tirl.train`, `tirl.evaluate`): TRL-style reward functions and a Dataset,
the README's snippet as written, the same run directory as the commands, and `import tirl` staying cheap."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_models import tiny_model_dir  # noqa: F401 (fixture)

import tirl
from tirl.config import UserError, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
ROWS = [{"problem": f"What is {a} * {b}?", "answer": str(a * b), "level": a % 3}
        for a, b in [(12, 34), (56, 78), (91, 23), (45, 67)]]
TINY_RUN = {"trainer": {"steps": 2, "prompts_per_step": 2, "eval_size": 4, "save_every": 0},
            "rollout": {"n": 2, "max_new_tokens": 16}}


def constant(prompts, completions, **kwargs):
    """TRL's batched signature; a constant, so its logged mean must be exactly it."""
    return [0.25] * len(completions)


def level_bonus(prompts, completions, level, **kwargs):
    """TRL's batched signature reading a column of the data (`level`) by its name."""
    return [float(x) for x in level]


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_trl_style_weighted_functions_and_a_dataset_log_each_reward_and_train_on_the_sum(
        tmp_path, tiny_model_dir):  # noqa: F811
    from datasets import Dataset

    from tirl.train.rl import RLConfig

    cfg = load_config(RLConfig, CONFIGS / "smoke_grpo.yaml")  # a config object, as a TRL user builds GRPOConfig
    run = tmp_path / "run"
    summary = tirl.train(cfg, run_dir=run, train_dataset=Dataset.from_list(ROWS), eval_dataset=ROWS,
                         reward_funcs=[constant, level_bonus], reward_weights=[2.0, 0.5],
                         model={"path": str(tiny_model_dir)}, **TINY_RUN)
    assert summary["steps"] == 2 and summary["run_dir"] == str(run)
    metrics = _rows(run / "metrics.jsonl")
    assert len(metrics) == 2
    for m in metrics:
        assert m["reward/constant"] == 0.25
        assert m["reward/level_bonus"] in {0.0, 0.5, 1.0, 1.5, 2.0}  # the mean level of the step's problems
        assert m["reward/mean"] == pytest.approx(2.0 * 0.25 + 0.5 * m["reward/level_bonus"])
        assert "reward/correct" not in m  # the grade is not in the reward unless listed
    # the held-out evaluation scores with the same reward
    last = metrics[-1]
    assert last["eval/reward/constant"] == 0.25
    assert last["eval/reward/level_bonus"] == pytest.approx(sum(r["level"] for r in ROWS) / len(ROWS))
    assert last["eval/reward_mean"] == pytest.approx(2.0 * 0.25 + 0.5 * last["eval/reward/level_bonus"])
    # each sample's grade holds every function's value; its score, the weighted sum, is what trained
    level = {f"train-{i}": r["level"] for i, r in enumerate(ROWS)}
    for step in _rows(run / "trajectories.jsonl"):
        for pid, t in zip([p for p in step["problems"] for _ in range(2)], step["trajs"]):
            assert t["grade"]["rewards"] == {"constant": 0.25, "level_bonus": float(level[pid])}
            assert t["grade"]["score"] == pytest.approx(0.5 + 0.5 * level[pid])
    saved = (run / "config.yaml").read_text()  # the run names its data and functions: it can be run again
    assert f"train: {run}/data/train.jsonl" in saved and f"function: {level_bonus.__module__}:level_bonus" in saved


def test_the_readme_python_snippet_runs_as_written(tmp_path):
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use it from Python", 1)[1].split("\n## ", 1)[0]
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "configs").symlink_to(CONFIGS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = [p for p in (tmp_path / "runs").iterdir() if (p / "metrics.jsonl").is_file()]
    assert runs, "the snippet wrote no run"
    for run in runs:
        metrics = _rows(run / "metrics.jsonl")
        names = {k for m in metrics for k in m if k.startswith("reward/")}
        assert {"reward/mean", "reward/correct", "reward/short"} <= names, names


def test_sft_then_evaluate_from_python_write_the_commands_run_directories(tmp_path):
    sft = tirl.sft(str(CONFIGS / "smoke_sft.yaml"), run_dir=tmp_path / "sft", trainer={"steps": 2, "eval_every": 0},
                   **{"data.task.train_size": 32})
    model = tmp_path / "sft" / "model"
    assert sft["train_traces"] > 0 and (model / "config.json").is_file()
    summary = tirl.evaluate(model=str(model), eval_dataset=ROWS, run_dir=tmp_path / "eval", max_tokens=16,
                            rollout={"max_tool_calls": 1})
    assert summary["overall"]["samples"] == len(ROWS) and "eval" in summary["benchmarks"]
    assert (tmp_path / "eval" / "samples.jsonl").is_file() and (tmp_path / "eval" / "summary.json").is_file()


@pytest.mark.parametrize("call,needle", [
    (lambda run: tirl.train(run_dir=run, trainer={"stepz": 2}),
     "unknown key 'trainer.stepz'; did you mean trainer.steps"),
    (lambda run: tirl.train(run_dir=run, reward_funcs=[constant], reward_weights=[1, 2]),
     "2 reward_weights for 1 reward_funcs"),
    (lambda run: tirl.train(run_dir=run, train_dataset=42),
     "must be a file path, a list of dicts or a datasets.Dataset"),
    (lambda run: tirl.train(run_dir=run, reward_funcs=[constant, constant]), "both named 'constant'"),
    (lambda run: tirl.train(run_dir=run, train_dataset=ROWS, reward_funcs=["nomodule_xyz:f"]),
     "importing nomodule_xyz failed"),
    (lambda run: tirl.evaluate(run_dir=run, model="m", tool="sometimes"), "tool must be one of on, off, both"),
])
def test_bad_input_is_one_error_naming_it_and_leaves_no_run_directory(tmp_path, call, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        call(tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_import_tirl_loads_no_torch_and_no_config_machinery():
    code = ("import sys, tirl; "
            "print(sorted(m for m in ('torch', 'transformers', 'omegaconf', 'typing') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
