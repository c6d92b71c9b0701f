"""`tirl demo` at smoke size, through the CLI: every stage runs and the report has its plots."""

import json
import os
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from tirl.train.logger import read_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_demo_smoke(tmp_path):
    run = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "tirl.cli", "demo", str(CONFIGS / "demo_smoke.yaml"), "seed=3",
                        "--run-dir", str(run)], capture_output=True, text=True, timeout=900, env=os.environ.copy())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    # the one seed knob reaches every stage: problems and initial weights, SFT order, RL sampling
    assert summary["seeds"] == {"task": 3, "sft": 3, "rl": 3}
    for stage, key in (("sft", "trainer.seed"), ("rl", "trainer.seed"), ("rl", "data.seed"),
                       ("text_rl", "trainer.seed"), ("sft", "data.task.seed")):
        assert OmegaConf.select(OmegaConf.load(run / stage / "config.yaml"), key) == 3, (stage, key)
    for key in ("sft_accuracy", "rl_accuracy", "text_rl_accuracy", "code_ratio_start", "code_ratio_end",
                "steps", "wall_s", "report"):
        assert key in summary, key
    assert summary["steps"] == 2
    assert Path(summary["report"]).is_file()
    plots = sorted(p.name for p in (run / "plots").glob("*.png"))
    # a random smoke model runs no code, so pass-rate and purpose plots are (rightly) skipped
    assert {"accuracy.png", "code_ratio.png", "length.png"} <= set(plots)
    for stage in ("rl", "text_rl"):
        assert [m["step"] for m in read_metrics(run / stage)] == [1, 2]
    assert [m["step"] for m in read_metrics(run / "sft")] == list(range(1, 7))
    assert "held-out accuracy" in r.stdout  # the one-screen summary
    # a 6-step SFT model cannot copy the interpreter's output: the demo says so instead of going on silently
    assert summary["sft_copy_rate"] < 0.9 and "copies only" in r.stdout
    # a second demo into the same directory is refused rather than mixed in
    r2 = subprocess.run([sys.executable, "-m", "tirl.cli", "demo", str(CONFIGS / "demo_smoke.yaml"), "--run-dir",
                         str(run)], capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert r2.returncode == 2 and "already holds a demo run" in r2.stderr


def test_demo_yaml_matches_the_built_in_defaults():
    from tirl.config import load_config
    from tirl.demo import DemoConfig

    assert load_config(DemoConfig, CONFIGS / "demo.yaml") == DemoConfig()


def test_demo_sft_uses_at_most_two_of_the_cores_it_may_run_on(monkeypatch):
    """Two threads for the SFT stages where two cores are ours; never more threads than cores."""
    from tirl import demo

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert demo.DemoConfig().sft.threads == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert demo.DemoConfig().sft.threads == 2
    assert demo.DemoConfig().rl.threads == 1  # decoding one token at a time is too small to share
