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


def test_limits_say_plainly_what_holds_memory_and_who_the_oom_killer_takes():
    from tirl.sandbox.enforcement import limit_report

    cfg, feats = SandboxConfig(), {"namespaces", "pid_namespace", "drop_privileges", "readonly_fs", "seccomp"}
    unpriv = {"root": False, "oom_score_adj": 1000}
    rep = limit_report(cfg, None, "v1: Permission denied", unpriv, feats, 1280 << 20)
    assert rep["memory"].startswith("NOT ENFORCED for the call: no memory cgroup (v1: Permission denied)")
    assert "64 x 1280 MB + 64 MB /tmp + 16 MB /dev/shm" in rep["memory"]
    assert "memfd and SysV IPC denied" in rep["memory"]
    assert rep["host_oom"].startswith("oom_score_adj 1000")
    # Without the syscall filter even one process escapes RLIMIT_AS.
    assert "escape (no seccomp)" in limit_report(cfg, None, "", unpriv, feats - {"seccomp"}, 1 << 30)["memory"]
    # Unprivileged, only a read-only /proc inside keeps a call from lowering its score; root sets a floor.
    lowered = limit_report(cfg, None, "", unpriv, feats - {"drop_privileges"}, 1 << 30)
    assert lowered["host_oom"].startswith("NOT ENFORCED")
    assert "NOT" not in limit_report(cfg, None, "", {"root": True, "oom_score_adj": 1000}, set(), 1 << 30)["host_oom"]
    failed = limit_report(cfg, None, "", {"oom_score_adj": "[Errno 13] Permission denied"}, feats, 1 << 30)
    assert failed["host_oom"].startswith("NOT ENFORCED: oom_score_adj could not be raised ([Errno 13]")
    assert {"host_oom", "memory"} <= set(summarise({"level": "partial", "missing": {}, "limits": failed})["not_enforced"])


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
