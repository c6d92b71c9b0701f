"""Execution record and `tirl replay`: a recorded run plays again bit-identical, with no model and no
sandbox; `rollout.exec_cache=replay` re-runs training from the record; tampering is reported."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_models import tiny_model_dir, tiny_tokenizer  # noqa: F401 (fixtures)
from scripted_generator import ScriptedGenerator
from tirl.config import load_config
from tirl.formats import RETOOL
from tirl.generation.recorded import RecordedGenerator, ids_digest
from tirl.rollout import RolloutConfig, rollout
from tirl.sandbox import ExecResult, SandboxConfig
from tirl.sandbox.record import EXEC_FILE, ExecRecord, MissingExecution, RecordedSandbox, ReplaySandbox, exec_settings
from tirl.train.replay import replay_step
from tirl.train.rl import RLConfig, train_rl
from tirl.train.step_record import STEP_FILE, mask_from_runs, mask_runs, recorded_responses, step_row, tool_calls_row

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = exec_settings(SandboxConfig())


def _code(src):
    return RETOOL.wrap_code(src)


# What the scripted "policy" writes, by sample index: a deterministic program, a random one (the same
# code in every group, a different output each time), a failing one (exec_penalty makes the group's
# rewards differ), and no code at all.
ANSWERS = {
    0: f"Let me compute.\n{_code('print(12 * 34)')}",
    1: f"Guess.\n{_code('import random' + chr(10) + 'print(random.randint(1, 10**9))')}",
    2: f"Try.\n{_code('print(1 / 0)')}",
    3: "No code.\n",
}


def _stream(tokenizer):
    def stream(key):
        s = key[-1] % 4
        return tokenizer.encode(ANSWERS[s], add_special_tokens=False) + \
            tokenizer.encode(f"So it is {s}.\n{RETOOL.wrap_answer(str(s))}", add_special_tokens=False)
    return stream


def _train(run_dir, *overrides):
    cfg = load_config(RLConfig, ROOT / "configs" / "smoke_grpo.yaml",
                      ["trainer.steps=2", "trainer.eval_size=2", "rollout.max_new_tokens=160",
                       "algorithm.exec_penalty=0.5", *overrides])
    with pytest.MonkeyPatch.context() as mp:  # the tiny random model writes no code: a scripted policy does
        mp.setattr("tirl.generation.hf.HFGenerator",
                   lambda model, tokenizer, **kw: ScriptedGenerator(_stream(tokenizer), tokenizer))
        train_rl(cfg, run_dir)
    return [json.loads(x) for x in (Path(run_dir) / STEP_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    run = tmp_path_factory.mktemp("recorded") / "run"
    return run, _train(run)


def _tirl(*args):
    return subprocess.run([sys.executable, "-m", "tirl.cli", *args], capture_output=True, text=True, timeout=600)


def _copy(run, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("checkpoints"))
    return dst


def test_a_recorded_run_replays_bit_identical(recorded):
    run, steps = recorded
    calls = [c for t in steps[0]["trajs"] for c in t["calls"]]
    assert {c[0] for c in calls} == {"ok", "error"} and len(calls) == 6  # code ran: the replay has work
    assert len({t["adv"] for t in steps[0]["trajs"]}) > 1
    r = _tirl("replay", str(run), "--step", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines() == ["step 1: identical (8 trajectories: tokens, masks, tool calls, "
                                             "grades, advantages)"]
    assert replay_step(run, 2)[0]


def test_the_random_program_ran_every_time_and_replays_its_own_outputs(recorded):
    run, steps = recorded
    outs = []
    for step in steps:
        start, end = step["exec"]
        record = ExecRecord(run / EXEC_FILE)
        outs += [record.result(x["k"], x["o"]).stdout for x in record.log.rows[start:end] if "k" in x]
    # 2 groups x 4 samples x 2 steps of training, each with one random call; held-out evaluation is greedy
    randoms = [o for o in outs if o.strip().isdigit() and o.strip() != "408"]
    assert len(randoms) >= 4 and len(set(randoms)) == len(randoms)


def test_a_tampered_grade_is_reported_with_its_trajectory_and_field(recorded, tmp_path):
    run = _copy(recorded[0], tmp_path)
    rows = [json.loads(x) for x in (run / STEP_FILE).read_text().splitlines()]
    rows[0]["trajs"][3]["grade"]["score"] = 1.0
    (run / STEP_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = _tirl("replay", str(run), "--step", "1")
    assert r.returncode == 1, r.stderr
    assert r.stdout.strip().splitlines() == [
        "step 1: differs at trajectory 3: grade (score: recorded 1.0, replayed -1.0)"]
    assert replay_step(run, 2)[0]  # the other step is untouched


def test_a_tampered_execution_output_changes_the_replayed_tokens(recorded, tmp_path):
    run = _copy(recorded[0], tmp_path)
    lines = (run / EXEC_FILE).read_text().splitlines()
    first = next(i for i, x in enumerate(lines) if '"stdout": "408\\n"' in x)
    lines[first] = lines[first].replace('"stdout": "408\\n"', '"stdout": "409\\n"')
    (run / EXEC_FILE).write_text("\n".join(lines) + "\n")
    identical, line = replay_step(run, 1)
    assert not identical and line.startswith("step 1: differs at trajectory 0: response_ids"), line


def test_a_torn_last_step_line_is_cut_and_earlier_steps_replay(recorded, tmp_path):
    run = _copy(recorded[0], tmp_path)
    with open(run / STEP_FILE, "a") as f:
        f.write('{"step": 3, "exec": [40, 4')  # killed mid-write
    assert replay_step(run, 2)[0]
    r = _tirl("replay", str(run), "--step", "3")
    assert r.returncode == 2
    assert r.stderr.strip() == f"tirl replay: {run / STEP_FILE} holds no step 3 (recorded: 1..2)"


def test_replay_mode_trains_again_from_the_record_with_no_sandbox(recorded, tmp_path, monkeypatch):
    run, steps = recorded

    def no_sandbox(*a, **k):
        raise AssertionError("exec_cache=replay started a sandbox")

    monkeypatch.setattr("tirl.sandbox.isolation.Sandbox", no_sandbox)
    again = _train(tmp_path / "again", "rollout.exec_cache=replay", f"rollout.exec_record={run / EXEC_FILE}")
    assert [s["trajs"] for s in again] == [s["trajs"] for s in steps]  # random outputs included
    assert replay_step(tmp_path / "again", 2)[0]  # the replaying run recorded what it was served
    with pytest.raises(MissingExecution, match=r"no recorded execution for code [0-9a-f]{16}"):
        _train(tmp_path / "other", "rollout.exec_cache=replay", f"rollout.exec_record={run / EXEC_FILE}",
               "sandbox.timeout_s=6")  # another limit: other keys


def test_reuse_mode_answers_the_deterministic_program_from_the_record_and_still_replays(tmp_path):
    _train(tmp_path / "run", "rollout.exec_cache=reuse")
    lines = [json.loads(x) for x in (tmp_path / "run" / EXEC_FILE).read_text().splitlines()]
    record = ExecRecord(tmp_path / "run" / EXEC_FILE)
    out = {x["k"]: (lambda r: r.stdout or r.stderr.splitlines()[-1])(record.result(x["k"], x["o"]))
           for x in lines if "k" in x}
    reused = {out[x["k"]] for x in lines if x.get("reused")}
    ran = [out[x["k"]] for x in lines if "k" in x and not x.get("reused")]
    # The product and the division by zero: observed twice each, then answered from the record.
    assert reused == {"408\n", "ZeroDivisionError: division by zero"}
    assert ran.count("408\n") == 2 and ran.count("ZeroDivisionError: division by zero") == 2
    assert sum(1 for o in ran if o.strip().isdigit() and o != "408\n") >= 4  # the random one always ran
    assert replay_step(tmp_path / "run", 2)[0]


def test_eval_refuses_the_training_only_exec_cache(tiny_model_dir, tmp_path):  # noqa: F811
    r = _tirl("eval", "--model", str(tiny_model_dir), "rollout.exec_cache=reuse", "--run-dir", str(tmp_path / "e"))
    assert r.returncode == 2 and "tirl train settings" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_exec_cache_is_checked_before_anything_is_written(tmp_path):
    for override, needle in [("rollout.exec_cache=always", "rollout.exec_cache must be one of off, reuse, replay"),
                             ("rollout.exec_record=x.jsonl", "set both or neither")]:
        r = _tirl("train", str(ROOT / "configs" / "smoke_grpo.yaml"), override, "--run-dir", str(tmp_path / "r"))
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "r").exists()


class _Answers:
    """Answers each program by itself (no sandbox): a long output for `print('9' * 500)`."""

    isolation = {"level": "full"}

    def run_batch(self, codes, timeout=None):
        return [ExecResult("ok", "9" * 500 + "\n" if "500" in c else f"{len(c)}\n") for c in codes]


@pytest.mark.parametrize("budget", [200, 40, 14, 10])
def test_rollout_edge_cases_play_back_token_for_token(tiny_tokenizer, tmp_path, budget):
    """Empty code, the tool-call cap, an output cut by the budget and a budget that runs out exactly as
    a block closes (an empty interpreter span at the end) come out the same from the record."""
    tok = tiny_tokenizer
    texts = [f"A {_code('print(2)')}B {_code('print(3)')}C {_code('print(4)')}",  # the third is over the cap
             f"E {_code('')}F {RETOOL.wrap_answer('1')}",
             f"L {_code(chr(10).join(['print(' + chr(39) + '9' + chr(39) + ' * 500)']))}more text after"]
    gen = ScriptedGenerator(lambda key: tok.encode(texts[key[2]], add_special_tokens=False), tok)
    cfg = RolloutConfig(max_new_tokens=budget, max_tool_calls=2, max_output_chars=0)
    box = RecordedSandbox(_Answers(), ExecRecord(tmp_path / EXEC_FILE), "off", SETTINGS, "full")
    prompts = ["Q1:", "Q2:", "Q3:"]
    trajs = rollout(gen, prompts, tok, box, RETOOL, cfg).trajectories
    row = {"n": 1, "prompts": [ids_digest(t.prompt_ids) for t in trajs],
           "trajs": [{"ids": t.response_ids, "mask": mask_runs(t.loss_mask), "finish": t.finish_reason,
                      "calls": tool_calls_row(t)} for t in trajs]}
    replay = ReplaySandbox(ExecRecord(tmp_path / EXEC_FILE), SETTINGS)
    again = rollout(RecordedGenerator(recorded_responses(row), tok), prompts, tok, replay, RETOOL, cfg).trajectories
    for t, a in zip(trajs, again):
        assert (a.response_ids, a.loss_mask, a.finish_reason, tool_calls_row(a)) == \
            (t.response_ids, t.loss_mask, t.finish_reason, tool_calls_row(t))
    if budget == 200:
        assert [len(t.tool_calls) for t in trajs] == [3, 1, 1] and trajs[0].tool_calls[2].status == "capped"
    if budget == 14:  # the first block closes on the budget's last token: its output gets no room
        assert tool_calls_row(trajs[0]) == [["ok", 14, 14]]


def test_mask_runs_round_trip():
    for mask in ([], [1], [0], [1, 1, 0, 0, 0, 1], [0, 0, 1], [1, 0, 1, 0]):
        assert mask_from_runs(mask_runs(mask)) == mask
    assert mask_runs([1, 1, 0, 0, 0, 1]) == [2, 3, 1] and mask_runs([0, 1]) == [0, 1, 1]


def test_step_row_keeps_advantages_only_when_there_is_one_per_trajectory(tiny_tokenizer):
    import torch

    from tirl.rewards import Grade
    from tirl.rollout import Trajectory

    class P:
        id = "p0"

    trajs = [Trajectory([1, 2], [3, 4], [1, 1], [0.0, 0.0]) for _ in range(2)]
    grades = [Grade(1.0, True, "1", "1", "match")] * 2
    per_row = step_row(1, [P], trajs, grades, torch.tensor([0.5, -0.5]), (0, 0))["trajs"]
    per_token = step_row(1, [P], trajs, grades, torch.zeros(2, 3), (0, 0))["trajs"]  # PPO's GAE
    assert [t["adv"] for t in per_row] == [0.5, -0.5] and [t["adv"] for t in per_token] == [None, None]
