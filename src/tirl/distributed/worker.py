"""A rollout worker: a tokenizer, a generator and a sandbox client that play shards.

The same class runs in this process (tests, the local backend's building blocks) and as a Ray actor
(`ray_backend.py` wraps it with `ray.remote`); it never imports ray itself.

Versions: the worker holds the version of the weights it last loaded; `rollout(shard, version)`
refuses to play with any other (`StaleWeights`), so a sync that did not reach a worker cannot
produce trajectories silently sampled from old weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from tirl.distributed.shards import Shard


class StaleWeights(RuntimeError):
    """A rollout asked for weights of another version than the worker holds."""


@dataclass
class WorkerSpec:
    """What a worker needs to build itself; plain data, so it pickles to any node."""

    model_path: str
    style: Any
    """The `TagStyle` the prompts were written with (its stop strings and tags drive the rollout)."""
    gguf_file: str | None = None
    dtype: str = "float32"
    threads: int = 1
    generator: str = "hf"
    server_url: str | None = None
    server_model: str | None = None
    sandbox: Any = None
    """A `SandboxConfig` for a local sandbox, or None when `sandbox_urls` are given."""
    sandbox_urls: list[str] = field(default_factory=list)
    sandbox_concurrency: int = 4
    sandbox_token: str | None = None
    """The bearer token of the servers at `sandbox_urls` (`tirl sandbox serve --token`); None: the
    worker's own TIRL_SANDBOX_TOKEN, if any."""
    device: str = "cpu"


class RolloutWorker:
    def __init__(self, spec: WorkerSpec, name: str = "worker"):
        from tirl.models import load_tokenizer

        self.spec, self.name = spec, name
        if spec.threads > 0:
            import torch

            # Ray sets OMP_NUM_THREADS=1 in workers; the thread count changes float reduction order,
            # so it must equal the trainer's for bit-equal samples.
            torch.set_num_threads(spec.threads)
        self.tokenizer = load_tokenizer(spec.model_path)
        self.model = None
        if spec.generator == "hf":
            from tirl.generation.hf import HFGenerator
            from tirl.models import load_model

            self.model = load_model(spec.model_path, gguf_file=spec.gguf_file, dtype=spec.dtype, device=spec.device)
            self.model.eval()
            self.generator = HFGenerator(self.model, self.tokenizer)
        else:
            from tirl.generation.openai import OpenAIGenerator

            self.generator = OpenAIGenerator(spec.server_url, self.tokenizer, model=spec.server_model)
        self.sandbox = make_sandbox_client(spec.sandbox, spec.sandbox_urls, spec.sandbox_concurrency,
                                           spec.sandbox_token)
        self.version = -1
        """-1 until the first sync: a fresh worker holds the base weights, not a trainer's version."""
        self.skip_weight_load = False
        """Test hook: acknowledge syncs without loading them (the silent failure the checks must catch)."""
        self.hold_dir: str | None = None
        """Test hook: a directory. Each rollout writes `<name>.started` there, then waits for a file
        `release` to appear, so a test acts while shards are known to be in flight (kill a worker,
        overrun a timeout) instead of guessing from wall-clock times."""

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "pid": os.getpid(), "version": self.version, "node": os.uname().nodename}

    def load_weights(self, version: int, arrays: dict, want_hash: bool = True) -> tuple[int, str | None]:
        """Load the trainer's weights (object-store sync); returns (version now held, hash of the weights)."""
        from tirl.distributed.weights import load_arrays, model_hash

        if self.model is None:
            raise RuntimeError(f"{self.name}: a server generator takes weights from disk, not the object store")
        if not self.skip_weight_load:
            load_arrays(self.model, arrays)
        self.version = version
        return version, model_hash(self.model) if want_hash else None

    def check_sandbox(self) -> dict[str, Any]:
        """One probe call through this worker's sandbox client (at start-up, to fail early and clearly)."""
        res = self.sandbox.run("print(6 * 7)", timeout=30)
        return {"name": self.name, "status": res.status, "stdout": res.stdout, "message": res.message or res.stderr[-300:]}

    def set_skip_weight_load(self, skip: bool) -> None:
        self.skip_weight_load = skip

    def hold_rollouts(self, hold_dir: str | None) -> None:
        self.hold_dir = hold_dir

    def set_version(self, version: int) -> int:
        """After a disk sync the driver has already checked the server's version; record it."""
        self.version = version
        return version

    def weights_hash(self) -> str:
        from tirl.distributed.weights import model_hash

        return model_hash(self.model)

    def rollout(self, shard: Shard, cfg: Any, version: int | None) -> Any:
        """Play one shard with `cfg` (a `RolloutConfig`; the shard's seed replaces its seed)."""
        import dataclasses

        from tirl.rollout import rollout

        if version is not None and version != self.version:
            raise StaleWeights(f"{self.name} (pid {os.getpid()}) holds weights version {self.version}, "
                               f"the rollout asked for version {version}")
        if self.hold_dir:
            import time
            from pathlib import Path

            Path(self.hold_dir, f"{self.name}.started").touch()
            while not Path(self.hold_dir, "release").exists():
                time.sleep(0.02)
        cfg = dataclasses.replace(cfg, seed=shard.seed)
        result = rollout(self.generator, [list(p) for p in shard.prompts], self.tokenizer, self.sandbox,
                         self.spec.style, cfg)
        for t in result.trajectories:
            t.weight_version = self.version  # the learner checks it against the version it expects
        return result

    def close(self) -> None:
        for part in (self.sandbox, self.generator):
            close = getattr(part, "close", None)
            if close is not None:
                close()


def make_sandbox_client(config: Any, urls: list[str], concurrency: int, token: str | None = None) -> Any:
    """A local `Sandbox` (config), or one pool client over sandbox server URLs (sending `token`)."""
    if urls:
        from tirl.distributed.sandbox_pool import SandboxPool

        return SandboxPool(urls, max_in_flight=concurrency, token=token)
    from tirl.sandbox import Sandbox

    return Sandbox(config)
