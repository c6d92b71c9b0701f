"""docs/data-formats.md's examples load as written: every ```jsonl problems``` block through the problem
loader, every ```jsonl sft``` block through the trace loader, each with no field key set."""

import re
from pathlib import Path

import pytest

from tirl.data import load_problems, load_traces
from tirl.eval import split_by_source
from tirl.formats import RETOOL

DOC = Path(__file__).resolve().parents[1] / "docs" / "data-formats.md"
BLOCKS = re.findall(r"^```jsonl (problems|sft)\n(.*?)\n```$", DOC.read_text(), re.S | re.M)  # a fence on its own line


def _examples(kind):
    return [text for k, text in BLOCKS if k == kind]


def test_the_page_has_an_example_of_every_shape():
    assert len(_examples("problems")) == 4 and len(_examples("sft")) == 5


@pytest.mark.parametrize("text", _examples("problems"))
def test_problem_examples_load_as_written(tmp_path, text):
    path = tmp_path / "data.jsonl"
    path.write_text(text + "\n")
    problems = load_problems(path)
    assert [(p.problem, p.answer) for p in problems] == [("What is 123 * 456?", "56088")]
    groups = split_by_source("data", problems)  # verl's rows are scored under their data_source
    assert list(groups) == (["toy"] if "data_source" in text else ["data"])


@pytest.mark.parametrize("text", _examples("sft"))
def test_sft_examples_load_as_written(tmp_path, text):
    path = tmp_path / "sft.jsonl"
    path.write_text(text + "\n")
    (trace,) = load_traces(path, RETOOL)
    assert trace.answer == "56088"
    assert [s.text for s in trace.segments if not s.trainable] == [RETOOL.wrap_output("56088")]
