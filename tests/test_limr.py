"""LIMR selection: scores against hand-computed values, epoch filling, and `tirl select limr` on real runs."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tirl.analysis.limr import (LimrError, RewardRow, accuracy_table, complete_epochs, fill_from_next, limr_scores,
                       read_rewards, reward_rows)


def _rows(curves: dict[str, list[list[bool] | None]]) -> list[RewardRow]:
    out = []
    for pid, per_epoch in curves.items():
        for epoch, correct in enumerate(per_epoch):
            if correct is not None:
                out.append(RewardRow(step=epoch + 1, epoch=epoch, problem_id=pid, correct=tuple(correct)))
    return out


def test_scores_match_hand_computation():
    # accuracies: learned [0, .5, 1], always solved [1, 1, 1], never solved [0, 0, 0]
    rows = _rows({"learned": [[False, False], [True, False], [True, True]],
                  "easy": [[True, True], [True, True], [True, True]],
                  "hard": [[False, False], [False, False], [False, False]]})
    scores = {s.problem_id: s for s in limr_scores(accuracy_table(rows, 3))}
    # mean curve [1/3, 1/2, 2/3]; denominator (2/3)^2 + (1/2)^2 + (1/3)^2 = 29/36
    assert scores["learned"].score == pytest.approx(1 - (8 / 36) / (29 / 36))  # 21/29
    assert scores["easy"].score == pytest.approx(0.0)
    assert scores["hard"].score == pytest.approx(0.0)
    assert scores["learned"].accuracy == (0.0, 0.5, 1.0)


def test_samples_of_one_epoch_are_pooled_across_steps():
    rows = [RewardRow(1, 0, "p", (True, False)), RewardRow(2, 0, "p", (False, False)),
            RewardRow(3, 1, "p", (True, True))]
    assert accuracy_table(rows, 2) == {"p": [0.25, 1.0]}


def test_missing_epochs_take_the_next_sampled_value_and_a_missing_tail_drops_the_problem():
    assert fill_from_next([None, 0.5, None, None, 1.0]) == [0.5, 0.5, 1.0, 1.0, 1.0]
    assert fill_from_next([0.0, None]) is None
    rows = _rows({"late": [None, [True, False]], "gone": [[True, True], None], "full": [[False, False], [True, True]]})
    scores = {s.problem_id: s for s in limr_scores(accuracy_table(rows, 2))}
    assert set(scores) == {"late", "full"}  # "gone" has no value left for epoch 1
    assert scores["late"].accuracy == (0.5, 0.5)
    # mean over kept problems only: [0.25, 0.75]; denominator 0.75^2 + 0.25^2 = 0.625
    assert scores["full"].score == pytest.approx(1 - (0.25 ** 2 + 0.25 ** 2) / 0.625)


def test_a_partial_last_epoch_is_not_counted():
    rows = _rows({"a": [[True], [True]], "b": [[False], None]})
    assert complete_epochs(rows, n_problems=2) == 1
    rows += _rows({"b": [None, [True]]})
    assert complete_epochs(rows, n_problems=2) == 2
    assert complete_epochs(rows, n_problems=3) == 1  # a third problem was never reached in epoch 1


def test_all_solved_mean_curve_gives_score_one_not_a_division_error():
    scores = limr_scores(accuracy_table(_rows({"a": [[True], [True]], "b": [[True], [True]]}), 2))
    assert [s.score for s in scores] == [1.0, 1.0]
    assert not any(math.isnan(s.score) for s in scores)


def test_reward_rows_cut_prompt_major_samples_into_groups():
    rows = reward_rows(["p1", "p2"], [True, False, False, False], n=2, step=7, epochs=[0, 1])
    assert rows == [{"step": 7, "epoch": 0, "problem_id": "p1", "correct": [True, False]},
                    {"step": 7, "epoch": 1, "problem_id": "p2", "correct": [False, False]}]


def test_read_rewards_ignores_a_torn_last_line_and_names_a_bad_one(tmp_path):
    good = json.dumps({"step": 1, "epoch": 0, "problem_id": "p", "correct": [True]})
    (tmp_path / "r.jsonl").write_text(good + "\n" + '{"step": 2, "epo')
    assert len(read_rewards(tmp_path / "r.jsonl")) == 1
    (tmp_path / "r.jsonl").write_text('{"step": 1}\n' + good + "\n")
    with pytest.raises(LimrError, match=r"r\.jsonl:1: not a rewards row"):
        read_rewards(tmp_path / "r.jsonl")
    with pytest.raises(LimrError, match="no such file"):
        read_rewards(tmp_path / "absent.jsonl")


# --- end to end: tirl train writes rewards.jsonl, tirl select limr reads it ---------------------------------
def _tirl(*args, cwd):
    return subprocess.run([sys.executable, "-m", "tirl.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


@pytest.fixture(scope="module")
def file_run(tmp_path_factory):
    """A 3-epoch GRPO run on a 4-problem JSONL file with extra fields (kept untouched by selection)."""
    root = tmp_path_factory.mktemp("limr")
    data = root / "train.jsonl"
    rows = [{"uid": f"q{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i), "source": "toy",
             "meta": {"difficulty": i}} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = _tirl("train", "configs/smoke_grpo.yaml", f"data.train={data}", "data.id_field=uid", "data.test=''",
              "trainer.steps=6", "trainer.prompts_per_step=2", "rollout.max_new_tokens=8", "trainer.save_every=0",
              "--run-dir", str(root / "run"), cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-3000:]
    return root, rows


def test_train_writes_one_rewards_row_per_problem_per_step(file_run):
    root, rows = file_run
    got = read_rewards(root / "run" / "rewards.jsonl")
    assert len(got) == 6 * 2
    assert [r.step for r in got] == [s for s in range(1, 7) for _ in range(2)]
    assert all(len(r.correct) == 4 for r in got)  # rollout.n of smoke_grpo
    # 4 problems, 2 a step: epoch e covers steps 2e+1 and 2e+2, each problem once per epoch
    for e in range(3):
        assert sorted(r.problem_id for r in got if r.epoch == e) == ["q0", "q1", "q2", "q3"]


def test_select_limr_writes_the_original_rows_and_every_score(file_run):
    root, rows = file_run
    out = root / "sel" / "selected.jsonl"
    r = _tirl("select", "limr", str(root / "run"), "--out", str(out), "--threshold=-1e9",
              cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert [json.loads(ln) for ln in out.read_text().splitlines()] == rows  # all kept, rows untouched
    scores = [json.loads(ln) for ln in (out.parent / "limr_scores.jsonl").read_text().splitlines()]
    assert sorted(s["problem_id"] for s in scores) == ["q0", "q1", "q2", "q3"]
    assert all(len(s["accuracy"]) == 3 for s in scores)
    assert "kept 4 of 4" in r.stdout


def test_select_limr_refuses_runs_without_rewards_or_complete_epochs(file_run, tmp_path):
    root, _ = file_run
    r = _tirl("select", "limr", str(tmp_path), "--out", str(tmp_path / "x.jsonl"), cwd=tmp_path)
    assert r.returncode == 2 and "no config.yaml" in r.stderr
    assert not (tmp_path / "x.jsonl").exists()
    lines = (root / "run" / "rewards.jsonl").read_text().splitlines()
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.yaml").write_text((root / "run" / "config.yaml").read_text())
    (partial / "rewards.jsonl").write_text(lines[0] + "\n")  # half of epoch 0
    r = _tirl("select", "limr", str(partial), "--out", str(tmp_path / "x.jsonl"), cwd=tmp_path)
    assert r.returncode == 2 and "no complete epoch" in r.stderr


def test_select_limr_counts_the_problems_trained_on_not_the_rows_skip_invalid_dropped(tmp_path):
    # Before: the file's 4 rows were counted, the run trained on the 3 valid ones, so its last epoch
    # never looked complete (2 epochs played, 1 scored).
    from tirl.config import load_config, save_config
    from tirl.train.select_command import select_limr
    from tirl.train.rl import RLConfig

    data = tmp_path / "train.jsonl"
    rows = [{"id": f"q{i}", "problem": f"{i} + {i}?", "answer": str(2 * i)} for i in range(3)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + json.dumps({"id": "bad", "problem": "?"}) + "\n")
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(RLConfig, None, [f"data.train={data}", "data.skip_invalid=true"]), run / "config.yaml")
    curves = {"q0": [[False, False], [True, True]], "q1": [[False, True], [True, True]], "q2": [[True, True]] * 2}
    lines = [RewardRow(e + 1, e, pid, tuple(c)) for pid, cs in curves.items() for e, c in enumerate(cs)]
    (run / "rewards.jsonl").write_text("".join(json.dumps({"step": r.step, "epoch": r.epoch, "problem_id": r.problem_id,
                                                           "correct": list(r.correct)}) + "\n" for r in lines))
    kept, scored = select_limr([run], tmp_path / "sel.jsonl", threshold=-1e9)
    assert (kept, scored) == (3, 3)
    scores = [json.loads(ln) for ln in (tmp_path / "limr_scores.jsonl").read_text().splitlines()]
    assert [s["accuracy"] for s in scores] == [[0.0, 1.0], [0.5, 1.0], [1.0, 1.0]]
