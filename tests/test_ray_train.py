"""Acceptance of the Ray backend through `tirl train`: the smoke config with 2 shards played in this
process and on 2 Ray workers gives the same checkpoint, samples and metrics; workers ran elsewhere and
held the trainer's weights after every step; skipping the sync makes the logged log-prob gap jump;
no Ray process outlives the command."""

import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("ray")

from tirl.distributed import DistributedConfig  # noqa: E402
from tirl.train.checkpoint import latest_checkpoint  # noqa: E402
from tirl.train.logger import read_metrics  # noqa: E402

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]
TIRL = str(Path(sys.executable).parent / "tirl")
# The random smoke model earns no reward, so every GRPO advantage is 0: the entropy bonus makes each
# step change the weights, or weight sync and equality would be checked on weights that never move.
BASE = [str(ROOT / "configs" / "smoke_grpo.yaml"), "trainer.steps=3", "rollout.shards=2", "algorithm.entropy_coef=0.01"]
RAY = ["distributed.backend=ray", "distributed.rollout_workers=2"]


def _marked_pids(mark: str) -> set[int]:
    """Processes that inherited `TIRL_TEST_RUN=mark`: the run and every Ray process it started (GCS,
    raylet, workers), and none of another job's Ray cluster on this machine."""
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                env = (d / "environ").read_bytes()
            except OSError:
                continue
            if f"TIRL_TEST_RUN={mark}".encode() in env.split(b"\0"):
                out.add(int(d.name))
    return out


def _train(run_dir: Path, *extra: str, env: dict | None = None) -> dict:
    mark = uuid.uuid4().hex
    r = subprocess.run([TIRL, "train", *BASE, *extra, "--run-dir", str(run_dir)], capture_output=True, text=True,
                       timeout=900, env={**os.environ, **(env or {}), "TIRL_TEST_RUN": mark})
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    # Ray's processes exit once the driver's shutdown reaches them; wait for that, at most as long as
    # a run may wait for its workers (distributed.timeout_s), then report any that stayed.
    deadline = time.monotonic() + DistributedConfig().timeout_s
    while (left := _marked_pids(mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    summary["_left"] = sorted(left)
    return summary


def _params(run_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted((latest_checkpoint(run_dir) / "policy").glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _tokens(run_dir: Path) -> list:
    rows = [json.loads(ln) for ln in (run_dir / "samples.jsonl").read_text().splitlines()]
    return [(r["step"], r["prompt_ids"], r["response_ids"]) for r in rows]


def _timing(key: str) -> bool:
    return key.startswith(("time/", "throughput/")) or key.endswith("_time_s")


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    local = _train(d / "local")
    ray_run = _train(d / "ray", *RAY)
    return d, local, ray_run, ray_run.pop("_left")


def test_ray_workers_equal_the_local_shards(runs):
    d, local, ray_run, left = runs
    a, b = _params(d / "local"), _params(d / "ray")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = load_file(next((d / "ray" / "base_model").glob("*.safetensors")))
    assert any(not torch.equal(b[k], base[k]) for k in base)  # the run did train
    assert _tokens(d / "local") == _tokens(d / "ray") and len(_tokens(d / "ray")) >= 3
    ma, mb = read_metrics(d / "local"), read_metrics(d / "ray")
    assert len(ma) == len(mb) == 3
    for x, y in zip(ma, mb):
        keys = {k for k in x if not _timing(k)}
        assert keys == {k for k in y if not _timing(k)}
        assert all(_same(x[k], y[k]) for k in keys), {k: (x[k], y[k]) for k in keys if not _same(x[k], y[k])}
    assert local["eval_end"] == ray_run["eval_end"]
    print(f"\nlocal vs ray: {len(a)} checkpoint tensors torch.equal, {len(_tokens(d / 'ray'))} sample rows with "
          f"identical token ids, {len(ma)} metric rows equal apart from timings")
    assert not left, f"Ray processes left after tirl train: {sorted(left)}"


def test_workers_ran_elsewhere_and_held_the_trainers_weights_after_every_step(runs):
    d, _, ray_run, _ = runs
    info = ray_run["distributed"]
    pids = {w["pid"] for w in info["workers"]}
    assert len(pids) == 2 and info["driver_pid"] not in pids
    assert [s["version"] for s in info["syncs"]] == [0, 1, 2, 3]
    assert all(s["worker_hashes"] == [s["trainer_hash"]] * 2 for s in info["syncs"])


def test_a_skipped_sync_makes_the_logged_logprob_gap_jump(runs):
    d, _, _, _ = runs
    _train(d / "stale", *RAY, env={"TIRL_TEST_SKIP_WEIGHT_SYNC": "1"})
    synced = [m["rollout/logprob_mean_diff"] for m in read_metrics(d / "ray")]
    stale = [m["rollout/logprob_mean_diff"] for m in read_metrics(d / "stale")]
    print(f"\nlog-prob gap per step, synced {synced}, sync skipped after step 0 {stale}")
    assert stale[0] == synced[0]  # step 1 plays the initial weights either way
    assert all(s > 100 * max(synced) and s > 1e-4 for s in stale[1:])
