"""How runs report sandbox isolation, and training's refusal of a partial sandbox without opt-in."""
import pytest

from tirl.sandbox import SandboxConfig, SandboxUnavailable
from tirl.sandbox.isolation import describe, open_sandbox, summarise

PARTIAL = dict(seccomp=False, preload=[], max_concurrency=1, max_sessions=0)  # no syscall filter: partial


def test_training_refuses_partial_without_opt_in():
    with pytest.raises(SandboxUnavailable, match=r"training refuses .*seccomp.*sandbox\.isolation=auto"):
        open_sandbox(SandboxConfig(isolation="strict", **PARTIAL), "training", log=lambda m: None)


def test_auto_runs_partial_and_says_so_loudly():
    lines = []
    with open_sandbox(SandboxConfig(isolation="auto", **PARTIAL), "training", log=lines.append) as sb:
        assert sb.run("print(1)").ok
        rec = summarise(sb.isolation)
    assert rec["level"] == "partial" and "seccomp" in rec["missing"]
    assert lines[0].startswith("sandbox: isolation PARTIAL: missing ") and "seccomp" in lines[0]
    assert lines[1].startswith("WARNING: training runs model-written code with PARTIAL sandbox isolation")


def test_rl_config_defaults_to_strict():
    from tirl.train.rl import RLConfig

    assert RLConfig().sandbox.isolation == "strict"


def test_summaries():
    assert summarise(None)["level"] == "not started"
    rep = {"level": "partial", "missing": {"cgroup": "no"}, "limits": {"memory": "NOT ENFORCED across", "pids": "x"}}
    assert summarise(rep) == {"level": "partial", "missing": ["cgroup"], "not_enforced": ["memory"]}
    assert describe(rep) == "isolation PARTIAL: missing cgroup; not enforced: memory"


def test_tirl_train_refuses_in_one_line(tmp_path):
    """End to end: a partial sandbox (no syscall filter) stops `tirl train` with exit 2 and one line."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    cfg = Path(__file__).resolve().parents[2] / "configs" / "smoke_grpo.yaml"
    r = subprocess.run([sys.executable, "-m", "tirl.cli", "train", str(cfg), "trainer.steps=1", "sandbox.seccomp=false",
                        "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=600,
                       env=os.environ.copy())
    assert r.returncode == 2, r.stderr[-2000:]
    line = [x for x in (r.stdout + r.stderr).splitlines() if x.startswith("tirl train:")]
    assert line and "refuses a sandbox without full isolation" in line[0] and "sandbox.isolation=auto" in line[0]
    assert "Traceback" not in r.stderr
