"""The execution record (`tirl.sandbox.record`) and the determinism judgement behind `reuse`."""

import json

import pytest

from tirl.sandbox import ExecResult, SandboxConfig
from tirl.sandbox.determinism import volatile
from tirl.sandbox.record import (EXEC_FILE, ExecRecord, MissingExecution, RecordedSandbox, ReplaySandbox,
                                 exec_key, exec_settings, open_recorded)

SETTINGS = exec_settings(SandboxConfig())
RANDOM = "import random\nprint(random.random())"


class Counting:
    """Wraps a sandbox (or answers by itself with `answer(code, call number)`), counting what ran."""

    def __init__(self, inner=None, answer=None):
        self.inner, self.answer, self.ran = inner, answer, []

    @property
    def isolation(self):
        return {"level": "full"}

    def run_batch(self, codes, timeout=None):
        if self.inner is not None:
            self.ran += list(codes)
            return self.inner.run_batch(codes)
        out = []
        for c in codes:
            self.ran.append(c)
            out.append(self.answer(c, len(self.ran)))
        return out

    def run(self, code, timeout=None, **extras):
        return self.run_batch([code])[0]

    def close(self):
        pass


def _recorded(tmp_path, inner, mode="reuse", level="full"):
    return RecordedSandbox(inner, ExecRecord(tmp_path / EXEC_FILE), mode, SETTINGS, level)


def test_reuse_answers_a_deterministic_program_from_the_record_and_runs_a_random_one_every_time(tmp_path, sb):
    box = _recorded(tmp_path, Counting(sb))
    det = [box.run_batch(["print(6 * 7)"])[0] for _ in range(4)]
    rnd = [box.run_batch([RANDOM])[0] for _ in range(3)]
    assert [r.stdout for r in det] == ["42\n"] * 4
    assert box.inner.ran.count("print(6 * 7)") == 2  # twice to observe it, then from the record
    assert box.inner.ran.count(RANDOM) == 3 and len({r.stdout for r in rnd}) == 3
    lines = [json.loads(x) for x in (tmp_path / EXEC_FILE).read_text().splitlines()]
    assert [x.get("reused", False) for x in lines if "k" in x] == [False, False, True, True] + [False] * 3
    assert sum("r" in x for x in lines) == 1 + 3  # one stored result for the repeated program


def test_off_runs_everything_and_records_it(tmp_path):
    box = _recorded(tmp_path, Counting(answer=lambda c, i: ExecResult("ok", "1\n")), mode="off")
    for _ in range(3):
        box.run_batch(["print(1)", "print(1)"])
    assert len(box.inner.ran) == 6
    assert len(ExecRecord(tmp_path / EXEC_FILE).executions[exec_key("print(1)", SETTINGS)]) == 6


@pytest.mark.parametrize("answer", [
    lambda c, i: ExecResult("ok", f"{i}\n"),  # clean source, varying output: observation refuses it
    lambda c, i: ExecResult("sandbox_error", message="zygote died"),  # infra failures are never reused
    lambda c, i: ExecResult("timeout", message="wall-clock"),  # nor limits that depend on the load
])
def test_reuse_refuses_what_observation_does_not_vouch_for(tmp_path, answer):
    box = _recorded(tmp_path, Counting(answer=answer))
    for _ in range(4):
        box.run_batch(["print(1)"])
    assert len(box.inner.ran) == 4


def test_reuse_trusts_only_executions_at_the_isolation_level_it_has_now(tmp_path):
    ok = lambda c, i: ExecResult("ok", "1\n")  # noqa: E731
    first = _recorded(tmp_path, Counting(answer=ok), level="partial")
    first.run_batch(["print(1)"] * 2)
    again = _recorded(tmp_path, Counting(answer=ok), level="full")
    again.run_batch(["print(1)"])
    assert len(again.inner.ran) == 1  # the two earlier runs were at another level
    again.run_batch(["print(1)"])
    again.run_batch(["print(1)"])
    assert len(again.inner.ran) == 2


@pytest.mark.parametrize("code,found", [
    ("print(12 * 34)", None),
    ("from fractions import Fraction\nprint(Fraction(1, 3) + 2)", None),
    ("import sympy\nprint(sympy.factorint(360))", None),
    ("print(1/0", None),  # a syntax error fails the same way every time
    (RANDOM, "import random"),
    ("import numpy as np\nx = np.random", "attribute random"),
    ("from numpy.random import default_rng", "from numpy.random import"),
    ("import time\nprint(time.time())", "import time"),
    ("from datetime import datetime as d\nprint(d.now())", "from datetime import"),
    ("import os\nprint(os.getpid())", "import os"),
    ("import uuid, secrets", "import uuid"),
    ("print(id(object()))", "name id"),
    ("print({'a', 'b'})", "a set"),
    ("print(set('ab'))", "name set"),
    ("exec('import random')", "name exec"),
    ("import sympy\nprint(sympy.randprime(2, 100))", "attribute randprime"),
])
def test_the_static_screen_names_what_can_vary(code, found):
    assert volatile(code) == found


def test_keys_cover_code_inputs_timeout_and_settings():
    base = exec_key("print(1)", SETTINGS)
    assert base == exec_key("print(1)", dict(SETTINGS))
    others = [exec_key("print(2)", SETTINGS), exec_key("print(1)", SETTINGS, timeout=3.0),
              exec_key("print(1)", SETTINGS, inputs={"stdin": "x"}),
              exec_key("print(1)", SETTINGS, inputs={"files": {"a.txt": b"1"}}),
              exec_key("print(1)", exec_settings(SandboxConfig(memory_mb=512))),
              exec_key("print(1)", exec_settings(SandboxConfig(isolation="none")))]
    assert len({base, *others}) == 7
    # Scheduling settings cannot change an outcome: same key.
    assert exec_key("print(1)", exec_settings(SandboxConfig(max_concurrency=7))) == base


def test_replay_serves_each_key_in_recorded_order_and_a_missing_key_names_its_hash(tmp_path):
    box = _recorded(tmp_path, Counting(answer=lambda c, i: ExecResult("ok", f"{i}\n")), mode="off")
    box.run_batch(["print(1)", "print(2)", "print(1)"])
    record = ExecRecord(tmp_path / EXEC_FILE)
    replay = ReplaySandbox(record, SETTINGS)
    assert [r.stdout for r in replay.run_batch(["print(1)", "print(1)", "print(2)", "print(1)"])] == \
        ["1\n", "3\n", "2\n", "3\n"]  # in recorded order, then the last one again
    with pytest.raises(MissingExecution, match=exec_key("print(3)", SETTINGS)) as e:
        replay.run_batch(["print(3)"])
    assert len(str(e.value).splitlines()) == 1


def test_replay_mode_starts_no_sandbox_and_a_missing_record_is_one_line(tmp_path, monkeypatch):
    def no_sandbox(*a, **k):
        raise AssertionError("replay started a sandbox")

    monkeypatch.setattr("tirl.sandbox.isolation.Sandbox", no_sandbox)
    with pytest.raises(Exception, match="needs an execution record"):
        with open_recorded(SandboxConfig(), "replay", tmp_path):
            pass
    _recorded(tmp_path, Counting(answer=lambda c, i: ExecResult("ok", "7\n")), mode="off").run_batch(["print(7)"])
    (tmp_path / "again").mkdir()
    with open_recorded(SandboxConfig(), "replay", tmp_path / "again", record=str(tmp_path / EXEC_FILE)) as box:
        assert box.run_batch(["print(7)"])[0].stdout == "7\n"
        assert box.isolation["level"] == "replay"
    # The replaying run records what it was served, so it can be replayed in turn.
    again = ExecRecord(tmp_path / "again" / EXEC_FILE)
    assert again.result(exec_key("print(7)", SETTINGS), again.log.rows[-1]["o"]).stdout == "7\n"


def test_a_line_torn_mid_write_is_repaired_and_the_record_goes_on(tmp_path):
    box = _recorded(tmp_path, Counting(answer=lambda c, i: ExecResult("ok", "1\n")), mode="off")
    box.run_batch(["print(1)", "print(2)"])
    path = tmp_path / EXEC_FILE
    whole = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'{"k": "0123456789abcdef", "o": "abc')  # a kill in the middle of an append
    record = ExecRecord(path)
    assert record.log.repaired_bytes > 0 and path.read_bytes() == whole
    assert record.position == 3 and len(record.executions) == 2
    RecordedSandbox(Counting(answer=lambda c, i: ExecResult("ok", "3\n")), record, "off", SETTINGS,
                    "full").run_batch(["print(3)"])
    assert ExecRecord(path).position == 5  # a header and the new line, all parseable
