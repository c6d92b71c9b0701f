"""Metrics reach TensorBoard, W&B (offline) and trackio with metrics.jsonl's names and steps.

Each test runs the real command (`tirl sft` / `tirl train`) with one backend enabled, then reads back
what the backend stored through that backend's own reader.
"""

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tirl.train.logger import LogConfig, MetricsLogger, read_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
COMMANDS = {
    "sft": ("sft", str(CONFIGS / "smoke_sft.yaml"), "trainer.steps=4", "trainer.eval_every=2",
            "data.task.train_size=64"),
    "train": ("train", str(CONFIGS / "smoke_grpo.yaml"), "trainer.steps=2"),
}


def _run(command, run_dir, *overrides, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    r = subprocess.run([sys.executable, "-m", "tirl.cli", *COMMANDS[command], *overrides, "--run-dir", str(run_dir)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r


def _expected(run_dir):
    """{name: {step: value}} of metrics.jsonl's numeric figures: what every backend must hold."""
    out: dict[str, dict[int, float]] = {}
    for row in read_metrics(run_dir):
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out.setdefault(k, {})[row["step"]] = float(v)
    assert out
    return out


def _same(got, want):
    assert set(got) == set(want), (sorted(set(want) - set(got)), sorted(set(got) - set(want)))
    for k in want:
        assert sorted(got[k]) == sorted(want[k]), k
        for step, v in want[k].items():
            assert got[k][step] == pytest.approx(v, rel=1e-5, abs=1e-6), (k, step)


def wandb_records(path):
    """Records of a W&B `.wandb` file: a 7-byte file header, then LevelDB-log framed protobuf records.

    wandb 0.2x+ ships no Python reader for its own run file (the Go core writes it), hence these lines.
    """
    from wandb.proto import wandb_internal_pb2
    data = open(path, "rb").read()
    assert data[:4] == b":W&B", data[:7]
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block tail too short for a header: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            yield rec


@pytest.mark.parametrize("command", ["sft", "train"])
def test_tensorboard_gets_the_jsonl_metrics(tmp_path, command):
    pytest.importorskip("tensorboard", reason="tensorboard not installed (pip install 'tirl[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _run(command, tmp_path, "trainer.log.tensorboard=true")
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    got = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    _same(got, _expected(tmp_path))


@pytest.mark.parametrize("command", ["sft", "train"])
def test_wandb_offline_gets_the_jsonl_metrics_and_names(tmp_path, command):
    pytest.importorskip("wandb", reason="wandb not installed (pip install 'tirl[wandb]')")

    _run(command, tmp_path, "trainer.log.wandb=true", "trainer.log.project=proj-x", "trainer.log.run_name=my-run",
         env_extra={"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(tmp_path / "cfg"),
                    "WANDB_CACHE_DIR": str(tmp_path / "cache"), "WANDB_DATA_DIR": str(tmp_path / "data")})
    [run_file] = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    got: dict[str, dict[int, float]] = {}
    run_record = None
    for rec in wandb_records(run_file):
        if rec.WhichOneof("record_type") == "run":
            run_record = rec.run
        if rec.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item}
            for k, v in row.items():
                if not k.startswith("_"):
                    got.setdefault(k, {})[row["_step"]] = v
    assert run_record is not None and run_record.project == "proj-x" and run_record.display_name == "my-run"
    _same(got, _expected(tmp_path))


@pytest.mark.parametrize("command", ["sft", "train"])
def test_trackio_local_store_gets_the_jsonl_metrics(tmp_path, command):
    pytest.importorskip("trackio", reason="trackio not installed (pip install 'tirl[trackio]')")
    store = tmp_path / "trackio-store"
    run = tmp_path / "run"
    _run(command, run, "trainer.log.trackio=true", "trainer.log.project=proj-t",
         env_extra={"TRACKIO_DIR": str(store)})
    # trackio reads TRACKIO_DIR at import: read the store back in a process that sees the same one.
    code = ("import json; from trackio.sqlite_storage import SQLiteStorage as S; "
            "print(json.dumps([S.get_runs('proj-t'), S.get_logs('proj-t', 'run')], default=str))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "TRACKIO_DIR": str(store)})
    assert r.returncode == 0, r.stderr[-2000:]
    runs, logs = json.loads(r.stdout.strip().splitlines()[-1])
    assert runs == ["run"]  # run_name empty: the run directory's name
    got: dict[str, dict[int, float]] = {}
    for row in logs:
        for k, v in row.items():
            if k not in ("step", "timestamp") and not k.startswith("_") and isinstance(v, (int, float)):
                got.setdefault(k, {})[row["step"]] = float(v)
    _same(got, _expected(run))


def test_progress_line_every_n_steps_when_not_a_terminal(tmp_path, capsys):
    logger = MetricsLogger(tmp_path, LogConfig(progress_every=2), label="sft", total_steps=5, interactive=False)
    for step in range(1, 6):
        logger.log(step, {"loss/sft": 1.0 / step, "note": "x"})
    logger.close()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines] == [["sft", "step", "2/5"], ["sft", "step", "4/5"],
                                                    ["sft", "step", "5/5"]]
    assert "loss/sft 0.25" in lines[1]


def test_no_progress_lines_on_a_terminal(tmp_path, capsys):
    logger = MetricsLogger(tmp_path, LogConfig(progress_every=1), total_steps=3, interactive=True)
    logger.log(1, {"loss/sft": 1.0})
    assert capsys.readouterr().out == ""


def test_a_missing_backend_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "trackio", None)  # import trackio now raises ImportError
    with pytest.raises(RuntimeError, match=r"trainer.log.trackio=true .*tirl\[trackio\]"):
        MetricsLogger(tmp_path, LogConfig(trackio=True))
