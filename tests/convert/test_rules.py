"""`tirl convert --rules`: worked solutions (GSM8K-style calculator annotations, one equation per problem)
become code traces whose every stated result is checked against the real sandbox output, and text twins.

The fixtures are written here in the data sets' shapes (no file from /work/shared is read).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tirl.convert.config import ConvertConfig
from tirl.convert.items import Item
from tirl.convert.llm import NotRewritable
from tirl.convert.pipeline import convert_async
from tirl.convert.rules import (RuleRewriter, calculator_solution, code_trace, equation_solution, program_code,
                                text_twin)
from tirl.convert.verify import output_disagreement
from tirl.data import load_traces
from tirl.formats import RETOOL
from tirl.sandbox import Sandbox, SandboxConfig

ROOT = Path(__file__).resolve().parents[2]
NATALIA = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
           "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")
# id -> (problem, solution, reference, expected outcome)
CALC_CASES = {
    "natalia": ("Natalia sold clips to 48 of her friends in April, and half as many in May. How many in all?",
                NATALIA, "72", "accepted"),
    "money": ("A house costs $80,000 and repairs $50,000. What is the total?",
              "It costs 80,000+50,000=$<<80000+50000=130000>>130,000 in all.\n#### 130000", "130000", "accepted"),
    "noise": ("Three dimes of 0.1 dollar each. How much?", "3 x 0.1 = $<<3*0.1=0.3>>0.3\n#### .3", "0.3",
              "accepted"),
    "dot": ("A tenth of 4?", "She has 4*.1 = <<4*.1=.4>>.4 left.\n#### .4", "0.4", "accepted"),
    "wrong_step": ("48 halved?", "48/2 = <<48/2=25>>25\n#### 25", "25", "output_mismatch"),
    "rounded": ("100 split 3 ways?", "100/3 = <<100/3=33.33>>33.33 each\n#### 33.33", "33.33", "output_mismatch"),
    "wrong_final": ("48 halved?", "48/2 = <<48/2=24>>24\n#### 24", "25", "wrong_answer"),
    "algebra": ("Let x ...", "Let x be the price.\n2x = 10 so x = 5\n#### 5", "5", "no_steps"),
    "units": ("Hours?", "3 hours = <<3 hours=180>>180 minutes\n#### 180", "180", "no_steps"),
    "floor": ("Full boxes of 10 from 560?", "560/10 = <<560//10=56>>56 boxes\n#### 56", "56", "accepted"),
}
EQ_CASES = {
    "two_step": ("Conner has 25000 dollars and spends 1500 a month for 8 months. How much is left?",
                 "25000 - (1500 * 8)", "13000", "accepted"),
    "float": ("Split 7 pies in 2?", "7 / 2", "3.5", "accepted"),
    "noise": ("Eve ran 0.7 mile and walked 0.6 mile. How much farther did she run?", "0.7 - 0.6", "0.1",
              "accepted"),
    "negative": ("?", "((-2 * -15) * 4) * -1", "-120", "accepted"),
    "bad_source": ("?", "56 * 9", "505", "wrong_answer"),  # a wrong answer in the source data
    "not_arithmetic": ("?", "__import__('os').getcwd()", "0", "no_steps"),
    "zero": ("?", "4 / (2 - 2)", "0", "no_steps"),
}


def items(cases) -> list[Item]:
    return [Item(k, p, s, ref) for k, (p, s, ref, _) in cases.items()]


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox(SandboxConfig(timeout_s=5, memory_mb=256, max_concurrency=2))
    yield box
    box.close()


def convert(cases, rules, sandbox, run_dir, **cfg):
    its = items(cases)
    rw = RuleRewriter(its, rules, RETOOL, cfg.get("layout", "step"), cfg.get("number_format", "repr"))
    config = ConvertConfig(rules=rules, concurrency=4, **cfg)
    return asyncio.run(convert_async(config, rw, sandbox, run_dir, items=its, twin=rw.text_twin))


def rows(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())} if path.exists() else {}


# --- reading solutions ----------------------------------------------------------------------------
def test_calculator_annotations_become_calculations_and_text():
    w = calculator_solution(NATALIA, "72")
    assert [(c.expr, c.result) for c in w.calcs] == [("48/2", "24"), ("48+24", "72")]
    assert [line.text for line in w.lines] == ["Natalia sold 48/2 = 24 clips in May.",
                                              "Natalia sold 48+24 = 72 clips altogether in April and May."]
    assert w.answer == "72"  # the `####` line is gone from the text
    assert calculator_solution("a = <<4*.1=.4>>.4 and <<2*500=1,000>>1,000\n#### 1000", "1000").calcs[1].result \
        == "1000"
    assert calculator_solution("a = <<4*.1=.4>>.4\n#### .4", ".4").calcs[0].result == "0.4"
    with pytest.raises(NotRewritable, match="no <<expression=result>>"):
        calculator_solution("Let x be 5.\n#### 5", "5")
    with pytest.raises(NotRewritable, match="not plain arithmetic|not an arithmetic"):
        calculator_solution("<<3 hours=180>>180\n#### 180", "180")


def test_an_equation_is_computed_innermost_first_without_eval():
    w = equation_solution("25000 - (1500 * 8)")
    assert [line.text for line in w.lines] == ["1500 * 8 = 12000", "25000 - 12000 = 13000"]
    assert w.answer == "13000"
    assert equation_solution("(7 / 2) * 2").answer == "7"  # a whole float is written as an integer
    assert equation_solution("1 / 3").answer == "0.333333333333"
    assert equation_solution("0.7 - 0.6").answer == "0.1"  # no float noise in what a solution states
    assert [c.result for c in equation_solution("(0.28 * 100) / 7").calcs] == ["28", "4"]
    assert equation_solution("-2 * -15").lines[0].text == "-2 * -15 = 30"
    assert equation_solution("7 // 2").answer == "3"
    for bad in ("__import__('os')", "2 ** 10", "x + 1", "4 / (2 - 2)", "4 // 0", "7", "[1][0] + 1", "7 % 2"):
        with pytest.raises(NotRewritable):
            equation_solution(bad)


def test_one_program_names_earlier_results_but_keeps_given_numbers():
    w = calculator_solution(NATALIA, "72")
    code = program_code(w.calcs, "48 friends in April", "repr")
    assert code == "s1 = 48 / 2\ns2 = 48 + s1\nprint(s1)\nprint(s2)"  # 48 is given; 24 is step 1's result
    plain = program_code(w.calcs, "48 friends in April", "plain")
    assert 'print(f"{s2:.12g}")' in plain  # a sum of a float step is a float


def test_step_layout_computes_before_it_states_and_the_twin_has_no_code():
    w = calculator_solution(NATALIA, "72")
    trace = code_trace(w, RETOOL, "step", "plain")
    assert trace.startswith(RETOOL.wrap_code('print(f"{48/2:.12g}")') + RETOOL.wrap_output("24")
                            + "Natalia sold 48/2 = 24 clips in May.\n" + RETOOL.wrap_code("print(48+24)"))
    assert trace.endswith(RETOOL.wrap_answer("72"))
    twin = text_twin(w, RETOOL)
    assert "<code>" not in twin and twin.startswith("Natalia sold 48/2 = 24 clips in May.\n")
    with pytest.raises(ValueError, match="layout"):
        code_trace(w, RETOOL, "lines", "repr")


@pytest.mark.parametrize("written,real,bad", [
    ("24", "24.0\n", False),                      # Python's float print of a whole result
    ("0.3", "0.30000000000000004\n", False),      # float noise
    ("24\n72", "24.0\n72\n", False),
    ("33.33", "33.333333333333336\n", True),      # a rounded stated result is not the program's output
    ("25", "24.0\n", True),
    ("24", "24.0\n72\n", True),                   # one number per step, no more
    ("72\n24", "24.0\n72\n", True),               # in order
])
def test_values_rule(written, real, bad):
    assert (output_disagreement(written, real, "values") is not None) == bad


# --- through the pipeline and the real sandbox ----------------------------------------------------
@pytest.mark.parametrize("layout,number_format", [("step", "repr"), ("program", "plain")])
def test_calculator_traces_are_verified_by_the_sandbox(sandbox, tmp_path, layout, number_format):
    summary = convert(CALC_CASES, "calculator", sandbox, tmp_path, layout=layout, number_format=number_format)
    accepted, rejected = rows(tmp_path / "accepted.jsonl"), rows(tmp_path / "rejected.jsonl")
    assert set(accepted) == {k for k, c in CALC_CASES.items() if c[3] == "accepted"}
    assert {k: r["reason"] for k, r in rejected.items()} == {k: c[3] for k, c in CALC_CASES.items()
                                                             if c[3] != "accepted"}
    assert summary["rejected_by_reason"]["no_steps"] == 2 and summary["text_twins"] == len(accepted)
    natalia = accepted["natalia"]["messages"][-1]["content"]
    shown = "24.0" if number_format == "repr" else "24\n72"  # the real output is what the trace shows
    assert RETOOL.wrap_output(shown) in natalia
    noise = accepted["noise"]["messages"][-1]["content"]
    assert RETOOL.wrap_output("0.30000000000000004" if number_format == "repr" else "0.3") in noise
    twins = rows(tmp_path / "accepted_text.jsonl")
    assert set(twins) == set(accepted)
    assert "<code>" not in twins["money"]["messages"][-1]["content"] and twins["money"]["convert"]["text_twin"]
    for name in ("accepted.jsonl", "accepted_text.jsonl"):  # both arms' files load for `tirl sft`
        assert len(load_traces(tmp_path / name)) == len(accepted)


def test_equation_traces_and_a_rerun_adds_nothing(sandbox, tmp_path):
    summary = convert(EQ_CASES, "equation", sandbox, tmp_path)
    accepted, rejected = rows(tmp_path / "accepted.jsonl"), rows(tmp_path / "rejected.jsonl")
    assert set(accepted) == {"two_step", "float", "negative", "noise"}
    assert {k: r["reason"] for k, r in rejected.items()} == {"bad_source": "wrong_answer",
                                                             "not_arithmetic": "no_steps", "zero": "no_steps"}
    assert accepted["two_step"]["convert"]["blocks"] == 2 and summary["acceptance_rate"] == round(4 / 7, 4)
    assert "<interpreter>\n3.5\n</interpreter>" in accepted["float"]["messages"][-1]["content"]
    again = convert(EQ_CASES, "equation", sandbox, tmp_path)
    assert again["this_run"]["skipped_already_done"] == len(EQ_CASES)
    assert len((tmp_path / "accepted_text.jsonl").read_text().splitlines()) == 4
    with pytest.raises(ValueError, match="other settings"):  # a second variant may not join the first's files
        convert(EQ_CASES, "equation", sandbox, tmp_path, layout="program")


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tirl.cli", "convert", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_cli_rules(tmp_path):
    data = tmp_path / "eq.jsonl"
    data.write_text("".join(json.dumps({"id": k, "problem": p, "equation": s, "answer": ref}) + "\n"
                            for k, (p, s, ref, _) in EQ_CASES.items()))
    res = _cli("--rules", "equation", "--solution-field", "equation", "--layout", "program", "--input", str(data),
               "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "accepted_text.jsonl" in res.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["accepted"], summary["text_twins"]) == (4, 4)
    assert "s1 = 1500 * 8" in rows(tmp_path / "run" / "accepted.jsonl")["two_step"]["messages"][-1]["content"]
    both = _cli("--rules", "equation", "--server", "http://127.0.0.1:9", "--input", str(data), cwd=tmp_path)
    assert both.returncode == 2 and "exactly one of" in both.stderr
    missing = _cli("--rules", "equation", "--input", str(data), cwd=tmp_path)  # the field is `equation`
    assert missing.returncode == 2 and "missing field 'solution'" in missing.stderr
