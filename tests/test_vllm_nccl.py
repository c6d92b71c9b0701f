"""NCCL weight sync into vLLM (`distributed.weight_sync: nccl`).

On CPU: the bucket layout round-trips every dtype and shape, and the engine-side receiver (fed by a
stand-in for the NCCL broadcast) loads exactly the trainer's weights, reports the version, and hashes
them to the trainer's `model_hash`. On a machine with 2 GPUs and vLLM (`gpu` marker): a real vLLM
server started with tirl's worker extension receives the weights over NCCL, reports the trainer's hash
and version, its log-probs follow the new weights, and a rollout that names another version is refused.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from types import SimpleNamespace

import pytest
import torch

from fixtures_models import tiny_corpus, tiny_model_dir  # noqa: F401
from tirl.distributed.server_sync import WeightSyncError, check_held
from tirl.distributed.vllm_nccl import WeightReceiver, pack_bucket, plan_buckets, unpack_bucket
from tirl.distributed.weights import model_hash


class _Broadcast:
    """Stands in for `PyNcclCommunicator` on the receiving side: each broadcast delivers the next
    buffer the trainer packed, as rank 0's broadcast would."""

    def __init__(self, buffers):
        self.buffers = iter(buffers)

    def broadcast(self, buf, src):
        assert src == 0
        buf.copy_(next(self.buffers))


class _Loader:
    """What `model_runner.model.load_weights` does for an unfused model: copy by checkpoint name."""

    def __init__(self, model):
        self.model = model
        self.loaded = []

    def load_weights(self, weights):
        state = self.model.state_dict()
        with torch.no_grad():
            for name, t in weights:
                state[name].copy_(t)
                self.loaded.append(name)


def _receiver(engine_model, buffers):
    r = WeightReceiver()
    r.device = torch.device("cpu")
    r.model_runner = SimpleNamespace(model=_Loader(engine_model))
    r._tirl_comm = _Broadcast(buffers)
    return r


def test_buckets_round_trip_every_dtype_and_shape():
    tensors = {"a.scalar": torch.tensor(3.5), "b.bf16": torch.randn(5, 7).to(torch.bfloat16),
               "c.int": torch.arange(13, dtype=torch.int64), "d.half": torch.randn(3, 2, 4).half(),
               "e.big": torch.randn(300), "f.bool": torch.tensor([True, False, True])}
    plan = plan_buckets(list(tensors.items()), bucket_bytes=1024)
    assert len(plan) > 1 and all(b["size"] <= 1024 or len(b["tensors"]) == 1 for b in plan)
    assert [t[0] for b in plan for t in b["tensors"]] == sorted(tensors)  # name order: the hash's order
    json.dumps(plan)  # travels in the collective_rpc body
    got = {}
    for bucket in plan:
        got.update(unpack_bucket(bucket, pack_bucket(bucket, tensors, "cpu").clone()))
    assert got.keys() == tensors.keys()
    for name, t in tensors.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape and torch.equal(got[name], t), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_receiver_loads_the_trainers_weights_and_reports_version_and_hash(tiny_model_dir, dtype):  # noqa: F811
    from tirl.models import load_model

    trainer = load_model(tiny_model_dir, device="cpu").to(dtype)
    with torch.no_grad():
        for p in trainer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    engine = load_model(tiny_model_dir, device="cpu").to(dtype)
    assert model_hash(engine) != model_hash(trainer)
    state = trainer.state_dict()
    plan = plan_buckets(list(state.items()), bucket_bytes=16 << 10)  # several buckets
    assert len(plan) > 2
    recv = _receiver(engine, [pack_bucket(b, state, "cpu") for b in plan])
    assert recv.tirl_weight_version()["version"] is None
    answer = recv.tirl_receive_weights("7", json.dumps(plan), "True")  # vLLM may hand the args over as strings
    assert answer["version"] == 7 and recv.tirl_weight_version()["version"] == 7
    assert answer["hash"] == model_hash(trainer)
    assert model_hash(engine) == model_hash(trainer)
    check_held([{"target": "engine worker 0", **answer}], 7, model_hash(trainer))
    with pytest.raises(WeightSyncError, match="engine worker 0 holds weights version 7 after the sync to version 8"):
        check_held([{"target": "engine worker 0", **answer}], 8, model_hash(trainer))


def test_a_receiver_that_got_other_bytes_is_caught_by_the_hash(tiny_model_dir):  # noqa: F811
    from tirl.models import load_model

    trainer = load_model(tiny_model_dir, device="cpu")
    state = trainer.state_dict()
    plan = plan_buckets(list(state.items()))
    buffers = [pack_bucket(b, state, "cpu") for b in plan]
    buffers[0][-1] ^= 1  # one flipped bit in transit
    answer = _receiver(load_model(tiny_model_dir, device="cpu"), buffers).tirl_receive_weights(2, plan)
    with pytest.raises(WeightSyncError, match=r"engine worker 0 holds weights version 2 hash [0-9a-f]+; the trainer's"):
        check_held([{"target": "engine worker 0", **answer}], 2, model_hash(trainer))


# --- on GPUs, against a real vLLM server -----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


@pytest.fixture
def vllm_server(tmp_path):
    """A vLLM server on GPU 1 with tirl's worker extension; the trainer keeps GPU 0 (NCCL needs two devices)."""
    pytest.importorskip("vllm")
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs: NCCL refuses the trainer and an engine worker on one device")
    from tirl.models import build_tiny_model

    # head_dim 64: vLLM's attention kernels do not take the default tiny model's 16.
    model_dir = build_tiny_model(tmp_path / "model", tiny_corpus(), hidden_size=256, heads=4, kv_heads=2)
    port = _free_port()
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "CUDA_VISIBLE_DEVICES": "1"}
    log = open(tmp_path / "vllm.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                             "--served-model-name", "tiny", "--port", str(port), "--dtype", "float32",
                             "--enforce-eager", "--gpu-memory-utilization", "0.3",
                             "--worker-extension-cls", "tirl.distributed.vllm_nccl.WeightReceiver"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # start-up includes loading CUDA kernels: minutes on a cold machine
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited: {(tmp_path / 'vllm.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5)
                break
            except OSError:
                time.sleep(1)
        yield url, model_dir
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


@pytest.mark.gpu
def test_nccl_sync_into_a_vllm_server(vllm_server):
    from tirl.distributed.shards import Shard
    from tirl.distributed.vllm_nccl import NcclSync
    from tirl.distributed.worker import RolloutWorker, StaleWeights, WorkerSpec
    from tirl.models import load_model, load_tokenizer
    from tirl.rollout import RolloutConfig

    url, model_dir = vllm_server
    trainer = load_model(model_dir, device="cuda:0")
    with torch.no_grad():
        for p in trainer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sync = NcclSync([url], timeout_s=300)
    try:
        held = sync.push(trainer, 1)
        assert [h["hash"] for h in held] == [model_hash(trainer)] and [h["version"] for h in held] == [1]
        assert [v["version"] for v in sync.versions()] == [1]
        with torch.no_grad():
            for p in trainer.parameters():
                p.add_(0.05 * torch.randn_like(p))
        held = sync.push(trainer, 2)  # a second sync over the same group
        check_held(held, 2, model_hash(trainer))
        with pytest.raises(WeightSyncError, match="holds weights version 2 after the sync to version 3"):
            check_held(sync.versions(), 3, None)
    finally:
        sync.close()

    # The engine samples from the new weights: its log-prob of its greedy token is the trainer's.
    tok = load_tokenizer(model_dir)
    ids = tok.encode("What is 12 times 34?", add_special_tokens=False)
    out = _post(f"{url}/v1/completions", {"model": "tiny", "prompt": ids, "max_tokens": 1, "temperature": 0,
                                          "logprobs": 1, "return_tokens_as_token_ids": True})
    lp = out["choices"][0]["logprobs"]
    token = int(lp["tokens"][0].removeprefix("token_id:"))
    with torch.no_grad():
        ref = torch.log_softmax(trainer(torch.tensor([ids], device="cuda:0")).logits[0, -1].float(), -1)[token]
    assert abs(float(ref) - lp["token_logprobs"][0]) < 1e-2

    # A rollout worker on this server plays only the version it was told the server holds.
    worker = RolloutWorker(WorkerSpec(model_path=str(model_dir), style="retool", generator="openai",
                                      server_url=url, server_model="tiny", sandbox=None))
    try:
        worker.set_version(2)
        shard = Shard(0, 0, (tuple(ids),), 5)
        with pytest.raises(StaleWeights, match="holds weights version 2, the rollout asked for version 3"):
            worker.rollout(shard, RolloutConfig(n=1, max_new_tokens=8), version=3)
        assert len(worker.rollout(shard, RolloutConfig(n=1, max_new_tokens=8), version=2).trajectories) == 1
    finally:
        worker.close()
