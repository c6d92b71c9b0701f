"""The Ray rollout backend on a local 2-CPU cluster: same trajectories as the local backend with the
same shards, workers in their own processes, versioned and hashed weight sync, a killed worker's
shard re-run with the same result, a timeout that names the worker, and no Ray process left."""

import os
import signal
import threading
import time

import pytest
import torch

ray = pytest.importorskip("ray")

from fixtures_models import tiny_model, tiny_model_dir, tiny_tokenizer  # noqa: E402,F401
from tirl.distributed import DistributedConfig  # noqa: E402
from tirl.distributed.local import LocalBackend  # noqa: E402
from tirl.distributed.ray_backend import RayBackend, RolloutFailed, WeightSyncError  # noqa: E402
from tirl.distributed.weights import model_hash  # noqa: E402
from tirl.distributed.worker import WorkerSpec  # noqa: E402
from tirl.generation.hf import HFGenerator  # noqa: E402
from tirl.rollout import RolloutConfig  # noqa: E402
from tirl.sandbox import Sandbox, SandboxConfig  # noqa: E402

pytestmark = pytest.mark.ray
CFG = RolloutConfig(n=2, max_new_tokens=24, seed=11)


def _prompts(tok):
    pairs = [(12, 34), (5, 6), (7, 8), (31, 4)]
    return [tok.encode(f"What is {a} times {b}?", add_special_tokens=False) for a, b in pairs]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    spec = WorkerSpec(model_path=str(tiny_model_dir), style="retool", threads=1, sandbox=SandboxConfig(preload=[]))
    b = RayBackend(DistributedConfig(backend="ray", rollout_workers=2, timeout_s=120), spec)
    node = ray._private.worker._global_node
    pids = [p.process.pid for procs in node.all_processes.values() for p in procs] + [i["pid"] for i in b.info]
    yield b
    pids += [i["pid"] for i in b.info]  # replacements started during the tests
    b.close()
    deadline = time.monotonic() + b.cfg.timeout_s  # bounded by the run's own timeout, not a guess
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert not ray.is_initialized()
    assert not [p for p in pids if _alive(p)], "Ray processes left after close()"


@pytest.fixture
def trainer(tiny_model_dir):
    from tirl.models import load_model

    return load_model(tiny_model_dir, device="cpu")


def _local(model, tok, prompts, shards):
    with Sandbox(SandboxConfig(preload=[])) as sb:
        return LocalBackend(HFGenerator(model, tok), tok, sb, "retool").rollout(prompts, CFG, shards)


def _ids(result):
    return [(t.group_index, t.sample_index, t.response_ids, t.logprobs, t.finish_reason) for t in result.trajectories]


def test_workers_play_shards_like_the_local_backend(backend, trainer, tiny_tokenizer):
    assert {i["pid"] for i in backend.info}.isdisjoint({os.getpid()}) and len({i["pid"] for i in backend.info}) == 2
    with torch.no_grad():
        for p in trainer.parameters():
            p.add_(0.01 * torch.randn_like(p))  # the trainer has moved on from the base weights
    backend.sync_weights(trainer, version=1)
    assert backend.weight_hashes() == [model_hash(trainer)] * 2
    assert [i["version"] for i in backend.worker_info()] == [1, 1]
    prompts = _prompts(tiny_tokenizer)
    for shards in (2, 3):
        remote = backend.rollout(prompts, CFG, shards)
        local = _local(trainer, tiny_tokenizer, prompts, shards)
        assert _ids(remote) == _ids(local)
        assert remote.metrics["rollout/decode_tokens"] == local.metrics["rollout/decode_tokens"]
    assert _ids(backend.rollout(prompts, CFG, 2)) != _ids(backend.rollout(prompts, CFG, 1))  # K matters


def test_a_rollout_with_another_weight_version_is_refused(backend, trainer, tiny_tokenizer):
    backend.sync_weights(trainer, version=2)
    backend.version = 3  # as if the trainer believed a later sync had landed
    try:
        with pytest.raises(RolloutFailed, match=r"rollout-worker-\d .*holds weights version 2, the rollout asked for version 3"):
            backend.rollout(_prompts(tiny_tokenizer), CFG, 2)
    finally:
        backend.version = 2


def test_a_sync_that_does_not_load_is_caught_by_the_hash(backend, trainer):
    backend.sync_weights(trainer, version=4)
    ray.get([w.set_skip_weight_load.remote(True) for w in backend.workers])
    with torch.no_grad():
        next(trainer.parameters()).add_(1.0)
    try:
        with pytest.raises(WeightSyncError, match=r"rollout-worker-0 \(pid \d+\) holds weights version 5 hash"):
            backend.sync_weights(trainer, version=5)
    finally:
        ray.get([w.set_skip_weight_load.remote(False) for w in backend.workers])
    backend.sync_weights(trainer, version=6)
    assert backend.weight_hashes() == [model_hash(trainer)] * 2


def _hold(backend, hold_dir) -> None:
    """Make every live worker stop at the start of each shard until `hold_dir/release` exists."""
    backend._wait([w.hold_rollouts.remote(hold_dir and str(hold_dir)) for i, w in enumerate(backend.workers)
                   if i not in backend.dead], "hold_rollouts")


def _wait_for(path, backend) -> None:
    """Poll for `path`, for at most the backend's own timeout (a step may take that long)."""
    deadline = time.monotonic() + backend.cfg.timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} not written within distributed.timeout_s"
        time.sleep(0.02)


def _in_thread(fn):
    out = {}

    def run():
        try:
            out["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised by the test
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, out


def test_a_worker_killed_mid_step_has_its_shard_rerun_with_the_same_result(backend, trainer, tiny_tokenizer, tmp_path):
    backend.sync_weights(trainer, version=7)
    prompts = _prompts(tiny_tokenizer) * 4
    expect = _ids(backend.rollout(prompts, CFG, 4))
    victim = backend.info[1]["pid"]
    _hold(backend, tmp_path)
    try:
        runner, out = _in_thread(lambda: backend.rollout(prompts, CFG, 4))
        _wait_for(tmp_path / "rollout-worker-1.started", backend)  # worker 1 is inside its first shard
        os.kill(victim, signal.SIGKILL)
        (tmp_path / "release").touch()
        runner.join(backend.cfg.timeout_s)
    finally:
        (tmp_path / "release").touch()
    assert "error" not in out, out.get("error")
    assert _ids(out["result"]) == expect
    assert 1 in backend.dead and backend.reruns >= 1
    _hold(backend, None)
    backend.sync_weights(trainer, version=8)  # starts a replacement for the lost worker
    assert not backend.dead and backend.info[1]["pid"] != victim
    assert backend.weight_hashes() == [model_hash(trainer)] * 2
    assert _ids(backend.rollout(prompts, CFG, 4)) == expect


def test_a_worker_lost_between_steps_is_replaced_at_the_next_sync(backend, trainer, tiny_tokenizer):
    backend.sync_weights(trainer, version=9)
    prompts = _prompts(tiny_tokenizer) * 4
    expect = _ids(backend.rollout(prompts, CFG, 4))
    victim = backend.info[0]["pid"]
    os.kill(victim, signal.SIGKILL)  # dies while idle: nothing has noticed it yet
    deadline = time.monotonic() + backend.cfg.timeout_s
    while _alive(victim) and time.monotonic() < deadline:
        time.sleep(0.05)
    backend.sync_weights(trainer, version=10)  # finds it dead, starts a replacement and loads it
    assert not backend.dead and backend.info[0]["pid"] != victim
    assert backend.weight_hashes() == [model_hash(trainer)] * 2
    assert _ids(backend.rollout(prompts, CFG, 4)) == expect


def test_a_step_past_the_timeout_fails_naming_the_worker(backend, tiny_tokenizer, tmp_path):
    _hold(backend, tmp_path)
    saved = backend.cfg.timeout_s
    backend.cfg.timeout_s = 1.0  # the shards are held: none can finish in time, however fast the machine
    try:
        with pytest.raises(RolloutFailed, match=r"not finished within 1 s .*shard \d on rollout-worker-\d \(pid \d+\)"):
            backend.rollout(_prompts(tiny_tokenizer), CFG, 2)
    finally:
        backend.cfg.timeout_s = saved
        (tmp_path / "release").touch()
    _hold(backend, None)  # queued behind the abandoned shards: returns once they have drained
