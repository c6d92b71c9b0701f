"""The recipe's report: every evaluation in one table, paired intervals on the same problems, stage times."""

import json
from pathlib import Path

import pytest

from tirl.recipe_report import build, markdown, write_report

IDS = [f"svamp-{i}" for i in range(40)]


def _eval(d: Path, correct: list[int], code_ratio: float | None = None, elapsed: float = 60.0, n: int = 1):
    d.mkdir(parents=True, exist_ok=True)
    (d / "problems.jsonl").write_text("".join(
        json.dumps({"benchmark": "svamp", "problem_id": i, "correct": c, "n": n}) + "\n" for i, c in zip(IDS, correct)))
    overall = {"problems": len(correct), f"avg@{n}": sum(correct) / len(correct) / n, "tool/code_ratio": code_ratio,
               "tool/calls_mean": 1.0 if code_ratio else 0.0, "tool/pass_rate": 0.9 if code_ratio else None,
               "response/interpreter_share": 0.2 if code_ratio else 0.0, "response/length_mean": 80.0}
    (d / "summary.json").write_text(json.dumps({"n": n, "overall": overall, "elapsed_s": elapsed}))


@pytest.fixture
def run(tmp_path):
    ev = tmp_path / "eval"
    _eval(ev / "base", [0] * 40, 0.1)
    _eval(ev / "code_sft" / "tool_on", [1] * 10 + [0] * 30, 1.0)
    _eval(ev / "code_sft" / "tool_off", [1] * 4 + [0] * 36)
    _eval(ev / "text_sft", [1] * 5 + [0] * 35)
    _eval(ev / "code_rl" / "tool_on", [1] * 20 + [0] * 20, 1.0)
    _eval(ev / "code_rl" / "tool_off", [1] * 6 + [0] * 34)
    _eval(ev / "text_rl", [1] * 8 + [0] * 32)
    for name, wall in (("code_sft", 600), ("code_rl", 900)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"wall_s": wall}))
    return tmp_path


def test_the_report_compares_the_arms_on_the_same_problems(run):
    results = write_report(run, "svamp")
    greedy = results["scorings"]["greedy"]
    assert greedy["rows"]["code_rl/on"]["accuracy"] == 0.5 and greedy["rows"]["text_rl/off"]["accuracy"] == 0.2
    arms = greedy["comparisons"]["tool arm vs text arm, after RL"]
    assert arms["diff"] == pytest.approx(0.3) and arms["excludes_zero"] and arms["n"] == 40
    assert greedy["comparisons"]["tool arm vs text arm, after SFT"]["diff"] == pytest.approx(5 / 40)
    interpreter = greedy["comparisons"]["the interpreter itself (tool arm after RL, tool on vs off)"]
    assert interpreter["diff"] == pytest.approx(14 / 40)
    assert greedy["rows"]["code_rl/on"]["tool_error_rate"] == pytest.approx(0.1)
    assert "sampled" not in results["scorings"]  # only what ran is reported
    # each stage's time: what the stages recorded (the runner's own timing wins when it has one)
    assert results["stage_times_s"]["code_rl"] == 900 and results["stage_times_s"]["eval/code_rl"] == 120
    text = (run / "report.md").read_text()
    assert "| tool arm vs text arm, after RL | +30.0 [" in text and "| total |" in text
    assert json.loads((run / "results.json").read_text()) == json.loads(json.dumps(results))


def test_a_missing_model_drops_its_comparisons_and_a_problem_mismatch_is_refused(run):
    import shutil

    shutil.rmtree(run / "eval" / "text_rl")
    greedy = build(run, "svamp")["scorings"]["greedy"]
    assert "tool arm vs text arm, after RL" not in greedy["comparisons"] and "text_rl/off" not in greedy["rows"]
    assert "RL on the tool arm (SFT + RL vs SFT)" in greedy["comparisons"]
    _eval(run / "eval" / "base", [0] * 39, 0.1)  # one problem fewer
    with pytest.raises(ValueError, match="different problems"):
        build(run, "svamp")
    with pytest.raises(RuntimeError, match="run the eval stage first"):
        build(run / "nowhere", "svamp")
    assert markdown({"benchmark": "svamp", "scorings": {}, "stage_times_s": {}}).startswith("# Recipe results")
