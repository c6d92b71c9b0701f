"""`benchmarks/gpu_check.py --device cpu --tiny`: the GPU check's dry run goes through every phase on a
tiny model of the same family and writes its JSON (the real run needs a GPU; `make gpu-check`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_passes_every_phase_and_writes_its_figures(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
                        "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["gpu_tests"]["status"] == "skipped"
    for name in ("sandbox", "model", "logprob_agreement", "grpo", "limits"):
        assert res[name]["status"] == "ok", (name, res[name])
    assert res["logprob_agreement"]["fp32_max_abs_diff"] == 0.0  # the same CPU twice: bit for bit
    assert res["logprob_agreement"]["logprob_mean"] < 0
    assert res["grpo"]["steps"] == 2 and res["grpo"]["throughput/tokens_per_s"] > 0
    lim = res["limits"]
    assert [(d["path"], d["batch"]) for d in lim["decode"]] == [("lean", 16), ("lean", 64),
                                                                ("transformers", 16), ("transformers", 64)]
    assert all(0 < d["fraction"] and d["bound_ms"] > 0 for d in lim["decode"])
    assert lim["update"]["mfu"] > 0 and lim["limits"]["matmul_bf16_gflops"] > 0
    assert res["process_peak_rss_mb"] > 100
    assert "gpu check summary" in r.stdout
