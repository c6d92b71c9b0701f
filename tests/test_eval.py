"""`tirl eval`: scores against hand-computed values on a scripted run, resume after SIGKILL, benchmark
resolution and its error messages, settings checks, and the command through a subprocess."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eval_scripts import ByProblemGenerator, FakeSandbox, answer, code, resume_scripts
from fixtures_models import tiny_model_dir, tiny_tokenizer  # noqa: F401 - pytest fixtures

from tirl.data import DataError, Problem
from tirl.eval import EvalConfig, SampleStore, evaluate, load_benchmark, load_benchmark_file

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# Four problems x four samples, scripted. Correct counts c = 2, 2, 2, 1.
SCRIPTS = {
    "What is 12 times 34?": [code("print(12*34)") + answer("408"), answer("400"), answer("408"), "I give up."],
    "What is 99 times 99?": [answer("9800"), answer("9800"), answer("9801"), answer("9801")],
    "What is 2 plus 5?": [answer("5"), answer("7"), answer("7"), "no idea"],
    "What is 1 plus 2?": [code("raise ValueError") + code("print(1+2)") + answer("3"), answer("1"), answer("2"),
                          answer("4")],
}
ANSWERS = {"What is 12 times 34?": "408", "What is 99 times 99?": "9801", "What is 2 plus 5?": "7",
           "What is 1 plus 2?": "3"}


def eval_cfg(max_tokens=4096, batch_size=16, **rollout):
    """An EvalConfig from the rollout fields a test cares about (eval's own defaults otherwise)."""
    cfg = EvalConfig(batch_size=batch_size)
    cfg.rollout = dataclasses.replace(cfg.rollout, max_new_tokens=max_tokens, **rollout)
    return cfg


def _scripted_run(tok, run_dir, batch_size=16):
    problems = [Problem(f"p{i}", q, a) for i, (q, a) in enumerate(ANSWERS.items())]
    sandbox = FakeSandbox()
    gen = ByProblemGenerator(tok, SCRIPTS)
    summary = evaluate(gen, tok, sandbox, {"toy": problems}, eval_cfg(n=4, max_tokens=128, batch_size=batch_size),
                       run_dir, model_id="scripted", show=False)
    return summary, sandbox


def test_scores_match_hand_computed_values(tiny_tokenizer, tmp_path):
    summary, sandbox = _scripted_run(tiny_tokenizer, tmp_path / "run", batch_size=5)
    s = summary["benchmarks"]["toy"]
    assert (s["problems"], s["samples"]) == (4, 16)
    # avg@4 = (2 + 2 + 2 + 1) / 16; pass@1 is the same mean.
    assert s["avg@4"] == pytest.approx(7 / 16) and s["pass@1"] == pytest.approx(7 / 16)
    # pass@2 = 1 - C(n-c, 2) / C(4, 2): c=2 -> 1 - 1/6 = 5/6 (three problems), c=1 -> 1 - 3/6 = 1/2.
    assert s["pass@2"] == pytest.approx((3 * 5 / 6 + 1 / 2) / 4)
    assert s["pass@4"] == pytest.approx(1.0)  # every problem has a correct sample
    # maj@1: first samples 408 (right), 9800, 5, 3 (right) -> 2/4.
    # maj@2: {408, 400} tie -> 408 first (right); {9800, 9800}; {5, 7} tie -> 5; {3, 1} tie -> 3 (right) -> 2/4.
    # maj@4: 408 x2 (right); 9800 x2 vs 9801 x2 tie -> 9800 first (wrong); 7 x2 (right); all ties -> 3 (right).
    assert (s["maj@1"], s["maj@2"], s["maj@4"]) == (pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.75))
    assert s["no_answer_ratio"] == pytest.approx(2 / 16)
    # Tool use: 2 of 16 responses wrote code; 3 calls; 2 of 3 executed calls ok; the failed one was fixed.
    assert s["tool/code_ratio"] == pytest.approx(2 / 16) and s["tool/calls_mean"] == pytest.approx(3 / 16)
    assert s["tool/pass_rate"] == pytest.approx(2 / 3) and s["tool/self_correction"] == pytest.approx(1.0)
    assert any(k.startswith("purpose/") for k in s)  # the code-purpose distribution sits beside them
    assert sandbox.codes == ["print(12*34)", "raise ValueError", "print(1+2)"]
    assert summary["overall"]["avg@4"] == pytest.approx(7 / 16)

    records = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 16 and len({(r["problem_id"], r["sample_index"]) for r in records}) == 16
    first = next(r for r in records if r["problem_id"] == "p0" and r["sample_index"] == 0)
    assert first["correct"] and first["extracted"] == "408" and first["num_tool_calls"] == 1
    assert first["tool_calls"][0]["status"] == "ok" and first["tool_calls"][0]["output"].strip() == "408"
    assert "\\boxed{408}" in first["response"]
    rows = {r["problem_id"]: r for r in map(json.loads, (tmp_path / "run" / "problems.jsonl").read_text().splitlines())}
    assert rows["p1"]["majority_answer"] == "9800" and rows["p1"]["majority_correct"] is False
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["benchmarks"]["toy"]["maj@4"] == 0.75


def test_without_the_tool_no_code_runs_and_the_answer_must_be_the_models_own(tiny_tokenizer, tmp_path):
    from tirl.eval import without_tool
    from tirl.eval.summary import tool_comparison
    from tirl.eval.table import render_comparison

    problems = [Problem(f"p{i}", q, a) for i, (q, a) in enumerate(ANSWERS.items())]
    cfg = eval_cfg(n=4, max_tokens=128)
    runs = {}
    for mode, run_cfg in (("on", cfg), ("off", without_tool(cfg))):
        sandbox = FakeSandbox()
        runs[mode] = evaluate(ByProblemGenerator(tiny_tokenizer, SCRIPTS), tiny_tokenizer, sandbox,
                              {"toy": problems}, run_cfg, tmp_path / mode, model_id="scripted", show=False)
        runs[mode + "_codes"] = sandbox.codes
    assert runs["off_codes"] == [] and len(runs["on_codes"]) == 3
    on, off = runs["on"]["benchmarks"]["toy"], runs["off"]["benchmarks"]["toy"]
    # Without the tool both code samples end at their first block, with no answer: 7 -> 5 correct of 16.
    assert on["avg@4"] == pytest.approx(7 / 16) and off["avg@4"] == pytest.approx(5 / 16)
    assert off["tool/cap_hit_ratio"] == pytest.approx(2 / 16) and off["response/finish/tool_cap"] == pytest.approx(2 / 16)
    # With it: 3 calls in all (one failed, then fixed), all in correct samples; 7 correct samples.
    assert on["tool/calls_per_correct"] == pytest.approx(3 / 7) and off["tool/calls_per_correct"] == 0
    assert on["response/interpreter_share"] > 0 and off["response/interpreter_share"] == 0
    c = tool_comparison(runs["on"], runs["off"])
    assert c["benchmarks"]["toy"]["on"]["accuracy"] == pytest.approx(7 / 16)
    assert c["benchmarks"]["toy"]["on"]["tool_error_rate"] == pytest.approx(1 / 3)
    assert math.isnan(c["benchmarks"]["toy"]["off"]["tool_error_rate"])  # nothing ran: undefined, not 0
    assert c["overall"]["off"]["blocked_ratio"] == pytest.approx(2 / 16)
    from rich.console import Console

    console = Console(width=200, record=True)
    render_comparison(c, console=console)
    text = console.export_text()
    assert "tool err%" in text and "33.3" in text and "43.8" in text and "31.2" in text


def test_same_scores_whatever_the_batch_size(tiny_tokenizer, tmp_path):
    a, _ = _scripted_run(tiny_tokenizer, tmp_path / "a", batch_size=1)
    b, _ = _scripted_run(tiny_tokenizer, tmp_path / "b", batch_size=16)
    assert a["benchmarks"] == b["benchmarks"]


def test_resume_after_sigkill_loses_and_duplicates_nothing(tiny_model_dir, tmp_path):  # noqa: F811
    rows, _ = resume_scripts(6)
    problems = _write_jsonl(tmp_path / "tiny.jsonl", rows)
    run = tmp_path / "run"
    samples = run / "samples.jsonl"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{TESTS}"}
    cmd = [sys.executable, str(TESTS / "eval_scripts.py"), str(tiny_model_dir), str(problems), str(run)]
    proc = subprocess.Popen(cmd + ["0.4"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if samples.exists() and len(samples.read_text().splitlines()) >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"finished before the kill: {proc.stdout.read().decode()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    before = samples.read_text()
    n_before = len(before.splitlines())
    assert 4 <= n_before < 12
    with open(samples, "a") as f:  # as if the kill had landed in the middle of a write
        f.write('{"benchmark": "tiny", "problem_id": "q')

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    after = samples.read_text()
    assert after.startswith(before), "finished records were rewritten"
    records = [json.loads(x) for x in after.splitlines()]
    keys = [(r["problem_id"], r["sample_index"]) for r in records]
    assert len(keys) == 12 and set(keys) == {(f"q{k}", i) for k in range(1, 7) for i in range(2)}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_samples"] == n_before
    assert summary["benchmarks"]["tiny"]["avg@2"] == pytest.approx(0.5)  # odd k right, even k wrong
    assert summary["benchmarks"]["tiny"]["tool/code_ratio"] == pytest.approx(0.5)


def test_store_cuts_a_torn_last_line_and_refuses_a_corrupt_middle(tmp_path):
    path = tmp_path / "samples.jsonl"
    good = json.dumps({"benchmark": "b", "problem_id": "x", "sample_index": 0, "correct": True})
    path.write_text(good + "\n" + '{"benchmark": "b", "prob')
    store = SampleStore(path)
    assert ("b", "x", 0) in store and store.repaired_bytes > 0
    assert path.read_text() == good + "\n"
    store.append([{"benchmark": "b", "problem_id": "x", "sample_index": 0, "correct": False},  # already there
                  {"benchmark": "b", "problem_id": "y", "sample_index": 0, "correct": False}])
    assert len(path.read_text().splitlines()) == 2
    path.write_text("not json\n" + good + "\n")
    with pytest.raises(DataError, match="samples.jsonl:1"):
        SampleStore(path)


def test_resume_with_other_settings_is_refused_and_more_samples_are_added(tiny_tokenizer, tmp_path):
    rows, scripts = resume_scripts(2)
    problems = load_benchmark_file(_write_jsonl(tmp_path / "two.jsonl", rows))
    run = tmp_path / "run"

    def go(**kw):
        return evaluate(ByProblemGenerator(tiny_tokenizer, scripts), tiny_tokenizer, FakeSandbox(), {"two": problems},
                        eval_cfg(max_tokens=64, **kw), run, model_id="scripted", show=False)

    go(n=1)
    with pytest.raises(ValueError, match="rollout.temperature: 0.0 there, 0.7 now"):
        go(n=1, temperature=0.7)
    s = go(n=2)
    assert s["resumed_samples"] == 2 and s["benchmarks"]["two"]["samples"] == 4


def test_benchmarks_resolve_to_data_dir_files(tmp_path):
    _write_jsonl(tmp_path / "aime24.jsonl", [{"id": "2024-I-1", "problem": "Find x.", "answer": "204"},
                                           {"id": "2024-I-2", "problem": "Find y.", "answer": "25"}])
    problems = load_benchmark("aime24", tmp_path)
    assert [(p.id, p.answer) for p in problems] == [("2024-I-1", "204"), ("2024-I-2", "25")]
    assert len(load_benchmark("aime24", tmp_path, limit=1)) == 1


def test_gsm8k_and_svamp_ship_with_tirl_and_a_data_dir_file_replaces_them(tmp_path):
    from tirl.data.rows import PACKAGED_DIR
    from tirl.rewards import stated_number

    gsm8k, svamp = load_benchmark("gsm8k"), load_benchmark("svamp")
    assert (len(gsm8k), len(svamp)) == (1319, 1000)
    assert (gsm8k[0].id, gsm8k[0].answer) == ("gsm8k-test-0", "18") and "ducks" in gsm8k[0].problem
    assert all(stated_number(p.answer) is not None for p in gsm8k + svamp)  # graded by value
    assert len(load_benchmark("svamp", tmp_path)) == 1000  # a data dir without svamp.jsonl: the shipped one
    _write_jsonl(tmp_path / "svamp.jsonl", [{"id": "s1", "problem": "2 + 2?", "answer": "4"}])
    assert [p.id for p in load_benchmark("svamp", tmp_path)] == ["s1"]
    notice = (PACKAGED_DIR / "NOTICE.md").read_text()
    assert "Copyright (c) 2021 OpenAI" in notice and "Copyright (c) 2021 Arkil Patel" in notice
    assert sum(f.stat().st_size for f in PACKAGED_DIR.iterdir()) < 3_000_000  # the wheel stays small


def test_missing_benchmarks_say_where_they_looked(tmp_path):
    with pytest.raises(DataError) as e:
        load_benchmark("math500", tmp_path)
    assert str(tmp_path / "math500.jsonl") in str(e.value) and "HuggingFaceH4/MATH-500" in str(e.value)
    with pytest.raises(DataError) as e:  # no --data-dir: the hub, offline in tests
        load_benchmark("aime25")
    assert "math-ai/aime25" in str(e.value) and "offline" in str(e.value) and "--data-dir" in str(e.value)
    with pytest.raises(DataError, match="unknown benchmark 'gsm9k'; known: aime24, aime25, math500"):
        load_benchmark("gsm9k")


def _tirl(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tirl.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_cli_eval_smoke_and_resume(tiny_model_dir, tmp_path):  # noqa: F811
    rows, _ = resume_scripts(3)
    data = _write_jsonl(tmp_path / "mini.jsonl", rows)
    args = ["eval", "--model", str(tiny_model_dir), "--data", str(data), "--n", "2", "--temperature", "1.0",
            "--max-tokens", "12", "--threads", "1", "--run-dir", str(tmp_path / "run")]
    r = _tirl(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "avg@2" in r.stdout and "mini" in r.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["benchmarks"]["mini"]["samples"] == 6 and summary["settings"]["rollout"]["n"] == 2
    assert len((tmp_path / "run" / "samples.jsonl").read_text().splitlines()) == 6
    again = _tirl(*args)
    assert again.returncode == 0 and "6 samples resumed" in again.stdout
    assert len((tmp_path / "run" / "samples.jsonl").read_text().splitlines()) == 6


def test_cli_eval_with_and_without_the_tool(tiny_model_dir, tmp_path):  # noqa: F811
    rows, _ = resume_scripts(2)
    data = _write_jsonl(tmp_path / "mini.jsonl", rows)
    r = _tirl("eval", "--model", str(tiny_model_dir), "--data", str(data), "--max-tokens", "8", "--threads", "1",
              "--tool", "both", "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "with and without the tool" in r.stdout and "comparison.json" in r.stdout
    off = json.loads((tmp_path / "run" / "tool_off" / "summary.json").read_text())
    assert off["settings"]["rollout"]["max_tool_calls"] == 0 and off["settings"]["rollout"]["on_tool_cap"] == "stop"
    on = json.loads((tmp_path / "run" / "tool_on" / "summary.json").read_text())
    assert on["settings"]["rollout"]["max_tool_calls"] == 8
    comparison = json.loads((tmp_path / "run" / "comparison.json").read_text())
    assert set(comparison["benchmarks"]["mini"]) == {"on", "off"} and "interpreter_share" in comparison["overall"]["on"]
    bad = _tirl("eval", "--model", str(tiny_model_dir), "--data", str(data), "--tool", "off", "--max-tool-calls", "2",
                "--run-dir", str(tmp_path / "run2"))
    assert bad.returncode == 2 and "drop --max-tool-calls" in bad.stderr


def test_cli_eval_errors_are_clear(tiny_model_dir, tmp_path):  # noqa: F811
    r = _tirl("eval", "--model", str(tiny_model_dir), "--benchmark", "aime24", "--data-dir", str(tmp_path),
              "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and "aime24.jsonl" in r.stderr and len(r.stderr.splitlines()) == 1
    r = _tirl("eval", "--data", "x.jsonl", "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and "exactly one of --model" in r.stderr


def test_cli_eval_takes_a_config_then_overrides_then_flags(tiny_model_dir, tmp_path):  # noqa: F811
    rows, _ = resume_scripts(2)
    data = _write_jsonl(tmp_path / "mini.jsonl", rows)
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("rollout:\n  n: 3\n  temperature: 1.0\n  max_new_tokens: 8\n  top_p: 0.7\n")
    r = _tirl("eval", str(cfg), "rollout.top_p=0.9", "--n", "2", "--model", str(tiny_model_dir), "--data", str(data),
              "--threads", "1", "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    settings = json.loads((tmp_path / "run" / "summary.json").read_text())["settings"]["rollout"]
    # file: temperature and max_new_tokens; override: top_p; flag: n
    assert (settings["n"], settings["temperature"], settings["max_new_tokens"], settings["top_p"]) == (2, 1.0, 8, 0.9)
    r = _tirl("eval", str(cfg), "tempature=1", "--model", str(tiny_model_dir), "--data", str(data),
              "--run-dir", str(tmp_path / "run2"))
    assert r.returncode == 2 and "unknown key 'tempature'" in r.stderr


def test_cli_eval_prompts_a_model_as_it_was_trained(tiny_model_dir, tmp_path):  # noqa: F811
    """Issue 11's headline bug: eval added the ReTool system prompt to a model trained without one."""
    import shutil

    from tirl.formats import PromptConfig
    from tirl.trained_settings import settings_of, write_settings

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    write_settings(model, settings_of(PromptConfig(style="retool", system_prompt="")))
    rows, _ = resume_scripts(1)
    data = _write_jsonl(tmp_path / "mini.jsonl", rows)
    base = ["eval", "--model", str(model), "--data", str(data), "--max-tokens", "4", "--threads", "1"]
    r = _tirl(*base, "--run-dir", str(tmp_path / "saved"))
    assert r.returncode == 0, r.stderr[-2000:]
    settings = json.loads((tmp_path / "saved" / "summary.json").read_text())["settings"]
    assert settings["prompt"]["system_prompt"] == ""  # before: the ReTool system prompt, always
    # an explicit override still wins over the saved settings
    r = _tirl(*base, "prompt.system_prompt=Think.", "--run-dir", str(tmp_path / "override"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "override" / "summary.json").read_text())["settings"]["prompt"]["system_prompt"] \
        == "Think."


def test_cli_eval_refuses_an_empty_file_and_warns_on_greedy_repeats(tiny_model_dir, tmp_path):  # noqa: F811
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = _tirl("eval", "--model", str(tiny_model_dir), "--data", str(empty), "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and r.stderr.strip() == f"tirl eval: {empty}: no problems (the file is empty)"
    assert not (tmp_path / "run").exists()
    rows, _ = resume_scripts(1)
    data = _write_jsonl(tmp_path / "mini.jsonl", rows)
    r = _tirl("eval", "--model", str(tiny_model_dir), "--data", str(data), "--n", "2", "--max-tokens", "2",
              "--threads", "1", "--run-dir", str(tmp_path / "run2"))
    assert r.returncode == 0 and "rollout.n=2 with temperature 0 (greedy) repeats one answer" in r.stderr


def test_verl_parquet_rows_load_without_field_mapping(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"data_source": "aime", "prompt": [{"role": "user", "content": "What is 2+2?"}],
             "reward_model": {"style": "rule", "ground_truth": "4"}, "ability": "math"},
            {"data_source": "math", "prompt": [{"role": "user", "content": "What is 3+3?"}],
             "reward_model": {"style": "rule", "ground_truth": "6"}, "ability": "math"}]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    problems = load_benchmark_file(path)
    assert [(p.problem, p.answer, p.data_source) for p in problems] == [
        ("What is 2+2?", "4", "aime"), ("What is 3+3?", "6", "math")]


def test_eval_names_a_one_source_verl_file_by_its_data_source_and_keeps_unique_ids(tmp_path):
    """`tirl eval --data test.parquet` of verl rows scores them under their data_source, not the file name;
    MATH-500's `unique_id` is the id in every file shape; two files landing on one name are refused."""
    import argparse

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tirl.data import DataError
    from tirl.eval.command import load_all

    rows = [{"data_source": "aime24", "unique_id": f"aime/{i}", "prompt": [{"role": "user", "content": f"{i}+1?"}],
             "reward_model": {"ground_truth": str(i + 1)}} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test.parquet")
    (tmp_path / "test.json").write_text(json.dumps(rows))
    args = argparse.Namespace(benchmark="", data=[str(tmp_path / "test.parquet")], data_dir=None, limit=None,
                              skip_invalid=False, problem_field="problem", answer_field="answer", id_field="id")
    got = load_all(args)
    assert list(got) == ["aime24"] and [p.id for p in got["aime24"]] == ["aime/0", "aime/1", "aime/2"]
    args.data.append(str(tmp_path / "test.json"))
    with pytest.raises(DataError, match="two benchmarks named 'aime24'"):
        load_all(args)
