"""Ray workers driving OpenAI-compatible servers (`tirl serve` here; vLLM/SGLang the same way): each
worker sticks to one server, weights reach the servers through disk with their version checked, and
the shards' tokens equal the same shards played from this process."""

import pytest
import torch

ray = pytest.importorskip("ray")

from eval_scripts import FakeSandbox  # noqa: E402
from fixtures_models import tiny_model_dir, tiny_tokenizer  # noqa: E402,F401
from tirl.distributed import DistributedConfig  # noqa: E402
from tirl.distributed.local import LocalBackend  # noqa: E402
from tirl.distributed.ray_backend import RayBackend, WeightSyncError  # noqa: E402
from tirl.distributed.weights import model_hash  # noqa: E402
from tirl.distributed.worker import WorkerSpec  # noqa: E402
from tirl.generation.hf import HFGenerator  # noqa: E402
from tirl.generation.openai import OpenAIGenerator  # noqa: E402
from tirl.generation.server import CompletionServer, ServerThread  # noqa: E402
from tirl.models import load_model  # noqa: E402
from tirl.rollout import RolloutConfig  # noqa: E402
from tirl.sandbox import SandboxConfig  # noqa: E402

pytestmark = pytest.mark.ray


class _Mismatch:
    def push(self, model, version):
        return [{"target": "http://gpu:8000 worker 0 (pid 1)", "version": version, "hash": "0" * 32}]

    def close(self):
        pass


def test_workers_on_servers_with_disk_sync(tiny_model_dir, tiny_tokenizer, tmp_path):  # noqa: F811
    torch.set_num_threads(1)
    servers = [CompletionServer(HFGenerator(load_model(tiny_model_dir, device="cpu"), tiny_tokenizer), tiny_tokenizer,
                                "tiny", cache_slots=8) for _ in range(2)]
    threads = [ServerThread(s.app(), host="127.0.0.1") for s in servers]
    urls = [t.url for t in threads]
    cfg = DistributedConfig(backend="ray", rollout_workers=2, generator="openai", server_urls=urls,
                            weight_sync="disk", timeout_s=120)
    spec = WorkerSpec(model_path=str(tiny_model_dir), style="retool", generator="openai",
                      sandbox=SandboxConfig(preload=[]))
    backend = RayBackend(cfg, spec, sync_dir=str(tmp_path / "sync"))
    try:
        trainer = load_model(tiny_model_dir, device="cpu")
        with torch.no_grad():
            for p in trainer.parameters():
                p.add_(0.05 * torch.randn_like(p))
        backend.sync_weights(trainer, version=1)
        assert [model_hash(s.generator.model) for s in servers] == [model_hash(trainer)] * 2
        assert [i["version"] for i in backend.worker_info()] == [1, 1]
        prompts = [tiny_tokenizer.encode(f"What is {a} times {b}?", add_special_tokens=False)
                   for a, b in [(12, 34), (5, 6), (7, 8), (31, 4)]]
        rcfg = RolloutConfig(n=2, max_new_tokens=16, seed=3)
        remote = backend.rollout(prompts, rcfg, 2)
        batches = [s.stats["requests"] for s in servers]
        assert all(b > 0 for b in batches)  # each worker used its own server
        with OpenAIGenerator(urls[0], tiny_tokenizer) as gen:
            local = LocalBackend(gen, tiny_tokenizer, FakeSandbox(), "retool").rollout(prompts, rcfg, 2)
        assert [t.response_ids for t in remote.trajectories] == [t.response_ids for t in local.trajectories]

        # A server sync whose engine reports other bytes than the trainer's (what the NCCL path's hash
        # catches): the run stops naming the engine, and no worker is told the new version.
        backend.server_sync = _Mismatch()
        with pytest.raises(WeightSyncError, match=r"http://gpu:8000 worker 0 \(pid 1\) holds weights version 2 hash "
                                                  r"0+; the trainer's hash is [0-9a-f]+"):
            backend.sync_weights(trainer, version=2)
        assert [i["version"] for i in backend.worker_info()] == [1, 1]
    finally:
        backend.close()
        for t in threads:
            t.close()
    assert not ray.is_initialized()


def test_sandbox_servers_as_actors_behind_every_workers_pool(tiny_model_dir):  # noqa: F811
    from tirl.distributed.sandbox_pool import SandboxPool

    cfg = DistributedConfig(backend="ray", rollout_workers=2, sandbox="actors", timeout_s=120)
    backend = RayBackend(cfg, WorkerSpec(model_path=str(tiny_model_dir), style="retool",
                                         sandbox=SandboxConfig(preload=[])))
    try:
        assert len(backend.sandbox_urls) == 2  # start-up already probed each worker's pool (print(6 * 7) == 42)
        with SandboxPool(backend.sandbox_urls, max_in_flight=2, http_retries=0) as pool:  # without the run's token
            assert "401" in pool.run("print(1)").message
        with SandboxPool(backend.sandbox_urls, max_in_flight=2, token=backend.sandbox_token) as pool:
            res = pool.run_batch([f"print({i})" for i in range(20)] + ["1/0"])
            served = [s["served"] for s in pool.stats()["servers"].values()]
        assert [r.stdout for r in res[:20]] == [f"{i}\n" for i in range(20)] and res[20].status == "error"
        assert all(n > 0 for n in served)
    finally:
        backend.close()
    assert not ray.is_initialized()


def test_nccl_sync_without_vllm_is_refused_before_a_cluster_starts(tiny_model_dir):  # noqa: F811
    from tirl.distributed.vllm_nccl import NcclUnavailable

    cfg = DistributedConfig(backend="ray", generator="openai", server_urls=["http://gpu:8000"], weight_sync="nccl")
    with pytest.raises(NcclUnavailable, match="weight_sync=nccl needs"):
        RayBackend(cfg, WorkerSpec(model_path=str(tiny_model_dir), style="retool", generator="openai"))
    assert not ray.is_initialized()


def test_workers_that_cannot_start_fail_the_backend_cleanly(tmp_path):
    from tirl.distributed.ray_backend import RolloutFailed

    cfg = DistributedConfig(backend="ray", rollout_workers=2, timeout_s=120)
    with pytest.raises(RolloutFailed, match="rollout workers could not start"):
        RayBackend(cfg, WorkerSpec(model_path=str(tmp_path / "no-model"), style="retool"))
    assert not ray.is_initialized()  # the cluster it started is shut down again
