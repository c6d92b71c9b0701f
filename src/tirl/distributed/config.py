"""The `distributed:` section of an RL config, and the one check that Ray is installed."""

from __future__ import annotations

from dataclasses import dataclass, field

RAY_INSTALL = "pip install 'tirl[ray]'   (or: pip install ray)"
BACKENDS = ("local", "ray")
GENERATORS = ("hf", "openai")
WEIGHT_SYNCS = ("object_store", "disk", "nccl", "none")
SANDBOXES = ("local", "urls", "actors")


@dataclass
class DistributedConfig:
    """Where rollouts, sandboxes and the update run. The defaults are today's single process."""

    backend: str = "local"
    """`local`: this process plays every shard in turn (no ray). `ray`: rollout-worker actors play them."""
    address: str | None = None
    """Ray cluster: null starts a local one for the run (shut down at the end), `auto` joins a running one."""
    rollout_workers: int = 1
    """Rollout-worker actors, each with a tokenizer, a generator and a sandbox client."""
    worker_cpus: float = 1.0
    """CPUs reserved per worker in the placement group (also its torch threads when trainer.threads is 0)."""
    worker_gpus: float = 0.0
    """GPUs per worker (an in-process transformers generator on GPU); 0 for CPU or server generators."""
    generator: str = "hf"
    """`hf`: each worker holds a copy of the policy (transformers). `openai`: each worker drives one
    OpenAI-compatible server from `server_urls` (vLLM, SGLang, `tirl serve`)."""
    server_urls: list[str] = field(default_factory=list)
    """Inference servers for `generator: openai`; worker i uses `server_urls[i % len]` for all its
    trajectories (sticky, so the server's prefix cache serves every tool turn)."""
    server_model: str | None = None
    """Model name to send to the servers; null = the first one `/v1/models` lists."""
    weight_sync: str = "object_store"
    """`object_store`: the trainer's weights go through Ray's object store to `hf` workers. `disk`:
    saved under the run directory, then every server is asked to load them
    (`POST /update_weights_from_disk`: `tirl serve` and SGLang). `nccl`: broadcast over NCCL into vLLM
    servers started with tirl's worker extension (GPU only; `tirl.distributed.vllm_nccl`). `none`:
    never sync (evaluation of a fixed model)."""
    verify_weights: bool = True
    """After each sync, every worker (object store) or engine worker (NCCL) hashes the weights it
    received, and the hash must match the trainer's."""
    sandbox: str = "local"
    """`local`: each worker starts its own sandbox. `urls`: one pool client over `sandbox_urls`.
    `actors`: one `tirl sandbox serve` per worker started as Ray actors, behind one pool client."""
    sandbox_urls: list[str] = field(default_factory=list)
    """`tirl sandbox serve` (or SandboxFusion) roots, e.g. http://10.0.0.5:8080."""
    sandbox_concurrency: int = 4
    """Calls in flight per sandbox server (set it near the server's cores: more only queues)."""
    trainer_workers: int = 1
    """Data-parallel trainer ranks (torch.distributed; gloo on CPU, NCCL on GPU)."""
    timeout_s: float = 1800.0
    """A step's rollout that takes longer fails, naming the workers that had not answered."""

    def validate(self) -> None:
        for name, value, allowed in (("backend", self.backend, BACKENDS), ("generator", self.generator, GENERATORS),
                                     ("weight_sync", self.weight_sync, WEIGHT_SYNCS),
                                     ("sandbox", self.sandbox, SANDBOXES)):
            if value not in allowed:
                raise ValueError(f"distributed.{name} must be one of {', '.join(allowed)}, not {value!r}")
        if self.rollout_workers < 1 or self.trainer_workers < 1:
            raise ValueError("distributed.rollout_workers and distributed.trainer_workers must be >= 1")
        if self.sandbox_concurrency < 1 or self.timeout_s <= 0:
            raise ValueError("distributed.sandbox_concurrency must be >= 1 and distributed.timeout_s > 0")
        if self.generator == "openai" and not self.server_urls:
            raise ValueError("distributed.generator=openai needs distributed.server_urls (one or more server roots)")
        if self.sandbox == "urls" and not self.sandbox_urls:
            raise ValueError("distributed.sandbox=urls needs distributed.sandbox_urls")
        if self.generator == "hf" and self.weight_sync == "disk":
            raise ValueError("distributed.weight_sync=disk is for server generators; hf workers use object_store")
        if self.generator == "hf" and self.weight_sync == "nccl":
            raise ValueError("distributed.weight_sync=nccl is for vLLM servers (generator=openai); hf workers use "
                             "object_store")
        if self.generator == "openai" and self.weight_sync == "object_store":
            raise ValueError("distributed.generator=openai syncs weights through disk (weight_sync=disk), NCCL into "
                             "vLLM (weight_sync=nccl) or not at all (weight_sync=none); the object store feeds hf "
                             "workers only")
        if self.weight_sync == "nccl" and self.backend != "ray":
            raise ValueError("distributed.weight_sync=nccl feeds the servers of Ray rollout workers: set "
                             "distributed.backend=ray")
        if self.weight_sync == "nccl":
            from tirl.distributed.vllm_nccl import require_nccl

            require_nccl()
        if self.backend == "ray":
            require_ray()


class RayNotInstalled(ValueError):
    """`backend: ray` asked for without the extra installed (a config the user can fix)."""


def require_ray():
    """The `ray` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayNotInstalled(f"distributed.backend=ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray
