"""`tirl.jsonl`: the one append-only log, NaN rule, atomic write and settings lock every run file uses."""

import json
import math

import pytest

from tirl.jsonl import AppendLog, DataError, append_rows, check_settings, read_rows, truncate_after_step, write_json


def test_nan_and_infinity_are_null_everywhere_and_the_files_are_strict_json(tmp_path):
    row = {"a": math.nan, "b": [1.0, -math.inf], "c": {"d": math.inf}, "e": (0.5, math.nan), "f": "nan"}
    append_rows(tmp_path / "log.jsonl", [row])
    write_json(tmp_path / "summary.json", row)
    want = {"a": None, "b": [1.0, None], "c": {"d": None}, "e": [0.5, None], "f": "nan"}
    line = (tmp_path / "log.jsonl").read_text()
    assert "NaN" not in line and "Infinity" not in line
    assert read_rows(tmp_path / "log.jsonl") == [want]
    assert json.loads((tmp_path / "summary.json").read_text()) == want


def test_a_torn_last_line_is_cut_and_the_next_append_starts_clean(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"id": 1}\n{"id": 2, "te')
    log = AppendLog(path)
    assert log.rows == [{"id": 1}] and log.repaired_bytes == len('{"id": 2, "te')
    log.append({"id": 3})
    assert read_rows(path) == [{"id": 1}, {"id": 3}]


def test_a_whole_last_record_missing_only_its_newline_is_kept(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}')
    log = AppendLog(path)
    assert log.rows == [{"id": 1}, {"id": 2}] and log.repaired_bytes == 0
    log.append({"id": 3})
    assert path.read_text() == '{"id": 1}\n{"id": 2}\n{"id": 3}\n'


def test_a_bad_line_in_the_middle_is_refused_with_file_and_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"id": 1}\nnot json\n{"id": 3}\n')
    with pytest.raises(DataError, match=r"log.jsonl:2"):
        AppendLog(path)
    with pytest.raises(DataError, match=r"log.jsonl:2"):
        read_rows(path)
    problems = []
    assert read_rows(path, problems) == [{"id": 1}, {"id": 3}] and problems == ["log.jsonl:2 is not JSON (skipped; "
                                                                                "a run still writing?)"]


def test_truncate_after_step_keeps_earlier_steps_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    truncate_after_step(path, 3)
    assert read_rows(path) == [{"step": 1}, {"step": 2}, {"step": 3}]
    assert not list(tmp_path.glob("*.tmp"))


def test_settings_are_written_once_and_other_settings_are_refused_key_by_key(tmp_path):
    path = tmp_path / "settings.json"
    check_settings(path, {"style": "retool", "n": 2}, "use another --run-dir")
    check_settings(path, {"n": 2, "style": "retool"}, "use another --run-dir")  # same settings: resume
    with pytest.raises(ValueError, match=r"n: 2 there, 4 now.*style: 'retool' there, 'torl' now.*another --run-dir"):
        check_settings(path, {"style": "torl", "n": 4}, "use another --run-dir")
    assert json.loads(path.read_text()) == {"n": 2, "style": "retool"}


def test_metrics_logger_and_report_read_one_encoding(tmp_path):
    from tirl.report.runs import load_run
    from tirl.train.logger import MetricsLogger

    log = MetricsLogger(tmp_path)
    log.log(1, {"tool/pass_rate": math.nan, "reward/mean": 0.5})
    log.log(2, {"tool/pass_rate": 0.25, "reward/mean": math.inf})
    run = load_run(tmp_path, "r")
    assert run.series("tool/pass_rate") == ([2.0], [0.25])
    assert run.series("reward/mean") == ([1.0], [0.5])


def test_text_with_unicode_line_separators_stays_one_record_in_every_reader(tmp_path):
    # GSM8K train 2372's solution holds U+2028; json.dumps(ensure_ascii=False) writes it raw, and
    # str.splitlines cut the record there (the GSM8K recipe's data stage failed on it).
    text = "a\u2028b\u2029c\x85d\x0ce\x1cf"
    rows = [{"step": 1, "text": text}, {"step": 2, "text": text}]
    append_rows(tmp_path / "log.jsonl", rows)
    assert read_rows(tmp_path / "log.jsonl") == rows
    assert AppendLog(tmp_path / "log.jsonl").rows == rows
    truncate_after_step(tmp_path / "log.jsonl", 1)
    assert read_rows(tmp_path / "log.jsonl") == rows[:1]
