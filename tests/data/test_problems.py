"""Problem loading: every source shape, every rejection reason with its place, skip-and-count, prompts."""

import json
import logging

import pytest

from tirl.data import DataError, Problem, build_prompt, load_problems
from tirl.formats import RETOOL, TORL


def write_jsonl(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def test_jsonl_numbers_become_strings_and_ids_default_to_stem_index(tmp_path):
    p = write_jsonl(tmp_path / "aime.jsonl", [
        {"problem": "1+1?", "answer": 2},
        {"problem": "half?", "answer": 0.5, "level": 3},
        {"id": "x7", "problem": "name?", "answer": " Bob "},
    ])
    got = load_problems(p)
    assert got == [
        Problem("aime-0", "1+1?", "2"),
        Problem("aime-1", "half?", "0.5", {"level": 3}),
        Problem("x7", "name?", "Bob"),
    ]
    assert got.skipped == []


def test_json_list_and_data_wrapper_with_field_mapping(tmp_path):
    rows = [{"uid": 10, "question": "q1", "solution": "a1"}, {"uid": 11, "question": "q2", "solution": 5}]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": rows, "version": 2}))
    for name in ("list.json", "wrapped.json"):
        got = load_problems(tmp_path / name, problem_field="question", answer_field="solution", id_field="uid")
        assert [(p.id, p.problem, p.answer) for p in got] == [("10", "q1", "a1"), ("11", "q2", "5")]


def test_nested_fields_and_chat_prompt_as_in_verl_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{
        "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "What is 6*7?"}],
        "reward_model": {"ground_truth": "42", "style": "rule"},
        "data_source": "toy",
    }]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "verl.parquet")
    got = load_problems(tmp_path / "verl.parquet", problem_field="prompt", answer_field="reward_model.ground_truth")
    assert got == [Problem("verl-0", "What is 6*7?", "42", {"data_source": "toy"})]


def test_parquet_written_by_datasets_with_bad_row_index(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([
        {"problem": "p0", "answer": "1"}, {"problem": "p1", "answer": None}, {"problem": "p2", "answer": "3"},
    ])
    path = tmp_path / "train.parquet"
    ds.to_parquet(str(path))
    with pytest.raises(DataError, match=r"train\.parquet\[1\]: field 'answer' is null"):
        load_problems(path)
    got = load_problems(path, skip_invalid=True)
    assert [p.answer for p in got] == ["1", "3"] and len(got.skipped) == 1


def test_saved_datasets_directory_with_split(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"test": datasets.Dataset.from_list([{"problem": "p", "answer": 4}])})
    dd.save_to_disk(str(tmp_path / "saved"))
    assert [p.answer for p in load_problems(tmp_path / "saved", split="test")] == ["4"]
    with pytest.raises(DataError, match="no split 'train'; splits: test"):
        load_problems(tmp_path / "saved")


@pytest.mark.parametrize("line, reason", [
    ({"id": 1, "question": "q"}, "missing field 'problem' (fields present: id, question); name the column with "
                                 "data.problem_field (tirl eval: --problem-field)"),
    ({"problem": "q", "sol": "s"}, "missing field 'answer' (fields present: problem, sol); name the column with "
                                   "data.answer_field (tirl eval: --answer-field)"),
    ({"problem": "q", "answer": None}, "field 'answer' is null"),
    ({"problem": "q", "answer": ""}, "field 'answer' is empty"),
    ({"problem": "q", "answer": [1, 2]}, "field 'answer' must be a string or number, got list"),
    ({"problem": "q", "answer": True}, "field 'answer' must be a string or number, got bool"),
    ({"problem": 7, "answer": "1"}, "field 'problem' must be a string, got int"),
    ({"problem": "  ", "answer": "1"}, "field 'problem' is empty"),
    ({"problem": [{"role": "system", "content": "s"}], "answer": "1"},
     "field 'problem' is a list but holds no user message"),
    ({"problem": "q", "answer": "1", "id": {"a": 1}}, "field 'id' must be a string or number, got dict"),
    ('{"problem": "q", "answer": ', "invalid JSON"),
    ("[1, 2]", "row is a JSON list, expected an object"),
])
def test_each_rejection_names_file_line_and_reason(tmp_path, line, reason):
    p = write_jsonl(tmp_path / "data.jsonl", [{"problem": "ok", "answer": "1"}, "", line])
    with pytest.raises(DataError) as e:
        load_problems(p)
    assert f"data.jsonl:3: {reason}" in str(e.value)  # line 3: blank lines count as lines


def test_duplicate_ids_are_refused(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "problem": "q", "answer": 1}] * 2)
    with pytest.raises(DataError, match=r"d\.jsonl:2: duplicate id 'a' \(first at .*d\.jsonl:1\)"):
        load_problems(p)


def test_skip_invalid_counts_and_logs_and_never_drops_silently(tmp_path, caplog):
    lines = [{"problem": f"q{i}", "answer": i} for i in range(5)]
    lines[1] = {"problem": "q1"}
    lines[3] = "{broken"
    p = write_jsonl(tmp_path / "mix.jsonl", lines)
    with pytest.raises(DataError) as e:
        load_problems(p)
    # one line: the first bad row's file:line and reason, how many more, and the way out
    assert str(e.value) == (f"{p}:2: missing field 'answer' (fields present: problem); name the column with "
                            "data.answer_field (tirl eval: --answer-field) (and 1 more invalid row(s)); "
                            "fix the data, or skip invalid rows (tirl eval --skip-invalid; tirl train / sft: data.skip_invalid=true)")
    with caplog.at_level(logging.WARNING, logger="tirl.data"):
        got = load_problems(p, skip_invalid=True)
    assert [x.problem for x in got] == ["q0", "q2", "q4"]
    assert len(got.skipped) == 2 and got.skipped[0].startswith(f"{p}:2: missing field 'answer'")
    assert "skipped 2 invalid row(s)" in caplog.text


def test_many_errors_are_summarised(tmp_path):
    p = write_jsonl(tmp_path / "bad.jsonl", [{"x": i} for i in range(12)])
    msg = str(pytest.raises(DataError, load_problems, p).value)
    assert msg.startswith(f"{p}:1: missing field") and "(and 11 more invalid row(s))" in msg and "\n" not in msg


def test_limit_stops_reading(tmp_path):
    p = write_jsonl(tmp_path / "l.jsonl", [{"problem": "a", "answer": 1}, {"problem": "b", "answer": 2}, "junk"])
    assert [x.problem for x in load_problems(p, limit=2)] == ["a", "b"]  # the junk line is never reached


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        load_problems(tmp_path / "nope.jsonl")
    (tmp_path / "obj.json").write_text('{"rows": []}')
    with pytest.raises(DataError, match="expected a JSON list of objects.*with keys rows"):
        load_problems(tmp_path / "obj.json")
    (tmp_path / "broken.json").write_text('[\n{"problem": "a",\n')
    with pytest.raises(DataError, match=r"broken\.json:3: invalid JSON"):
        load_problems(tmp_path / "broken.json")
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_problems(tmp_path / "x.parquet")


def test_missing_hub_dataset_offline_says_what_was_tried(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        load_problems("no-such-org-tirl/no-such-dataset", split="test")
    msg = str(e.value)
    assert "'no-such-org-tirl/no-such-dataset'" in msg and "split 'test'" in msg
    assert "no local file" in msg and "Hugging Face dataset name" in msg and "offline" in msg


class _ChatTok:
    chat_template = "x"

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_build_prompt_plain_and_chat():
    prob = Problem("p", "What is 2+2?", "4")
    assert build_prompt(prob, RETOOL) == RETOOL.system_prompt + "\n\nWhat is 2+2?"
    torl = build_prompt(prob, TORL)
    assert torl == TORL.render_prompt("What is 2+2?") and torl.endswith("Assistant:") and "\\boxed{}" in torl
    chat = build_prompt(prob, "retool", _ChatTok())  # a chat template is used when present
    assert chat == f"<system>{RETOOL.system_prompt}<user>What is 2+2?<assistant>"
    assert build_prompt(prob, TORL, _ChatTok()).startswith("<user>The user asks")  # ToRL has no system prompt
    assert build_prompt(prob, RETOOL, _ChatTok(), use_chat_template=False) == build_prompt(prob, RETOOL)
    with pytest.raises(ValueError, match="no chat template"):
        build_prompt(prob, RETOOL, None, use_chat_template=True)


def test_shipped_data_by_name():
    """`tirl:NAME` reads a data file shipped in the package, wherever it is installed."""
    problems = load_problems("tirl:mawps_asdiv_train", limit=3)
    assert [p.id for p in problems] == ["mawps-asdiv-a-0", "mawps-asdiv-a-1", "mawps-asdiv-a-2"]
    assert problems[0].extra["equation"] == "56 * 9" and problems[0].answer == "504"
    with pytest.raises(DataError, match="tirl:nope: no such shipped data file; shipped: tirl:gsm8k_test"):
        load_problems("tirl:nope")


@pytest.mark.parametrize("row,expected", [
    ({"unique_id": "u/1", "problem": "6*7?", "solution": "We multiply: $6 \\cdot 7 = \\boxed{42}$."},
     ("u/1", "6*7?", "42")),  # TRL / MATH: a worked solution, its boxed answer; MATH-500's unique_id
    ({"id": 9, "prompt": "6*7?", "solution": "42"}, ("9", "6*7?", "42")),  # TRL's standard prompt, a bare solution
    ({"prompt": [{"role": "user", "content": "6*7?"}], "ground_truth": 42}, ("data-0", "6*7?", "42")),
    ({"prompt": [{"role": "user", "content": "6*7?"}], "reward_model": {"ground_truth": "42"}},
     ("data-0", "6*7?", "42")),  # verl
])
def test_trl_and_verl_answer_and_id_columns_need_no_field_mapping(tmp_path, row, expected):
    (p,) = load_problems(write_jsonl(tmp_path / "data.jsonl", [row]))
    assert (p.id, p.problem, p.answer) == expected


def test_a_named_field_wins_over_the_known_columns(tmp_path):
    row = {"id": "a", "unique_id": "b", "problem": "q", "answer": "1", "solution": "2", "final": "3"}
    (p,) = load_problems(write_jsonl(tmp_path / "data.jsonl", [row]))
    assert (p.id, p.answer) == ("a", "1")
    (p,) = load_problems(write_jsonl(tmp_path / "data.jsonl", [row]), answer_field="final", id_field="unique_id")
    assert (p.id, p.answer) == ("b", "3")
