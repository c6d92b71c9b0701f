"""The `ray` rollout backend: W rollout-worker actors in a placement group play a step's shards.

    backend = RayBackend(dist_cfg, spec)          # starts (or joins) a cluster, places W workers
    backend.sync_weights(policy, version=step)    # object store -> every worker; hashes checked
    result = backend.rollout(prompt_ids, rollout_cfg, shards=K)   # same as LocalBackend's, any W
    backend.close()                               # kills the actors; shuts down a cluster it started

Placement: one bundle of `{CPU: worker_cpus, GPU: worker_gpus}` per worker, packed; the backend
waits `timeout_s` for the cluster to place them and otherwise says what it asked for.

Dispatch: shard k goes to live worker k mod W; an actor runs its calls one at a time, so a worker
with several shards plays them in order. Results are put back in shard order (`merge_results`).

Weights (`object_store`, workers with their own transformers model): the trainer's state dict is put in the object store once per sync as numpy arrays (no
tensor pickling, one copy per node) and every worker loads it and answers with the version it now
holds and, with `verify_weights`, the hash of its weights; a mismatch stops the run naming the
worker. Workers driving inference servers: the servers get the weights through `server_sync.py`
(`disk`: saved, then reloaded by each server; `nccl`: broadcast into vLLM's engine workers,
`vllm_nccl.py`), each reports the version (and, over NCCL, the hash) it holds, and the workers
record the version once every server has it. Each rollout names the version it expects and a worker
holding another refuses it.

Faults: a worker that dies mid-step (its process killed, its node lost) has its shards re-run on the
surviving workers; they hold the same weights and a shard's seed is fixed, so the result is the same.
A replacement actor is started, and given the weights, at the next sync; a worker found dead by a
sync (lost between steps) is replaced there and then. A step that does not finish
within `timeout_s` fails with the workers and shards still outstanding.

Asynchronous runs (`trainer.max_staleness` >= 1, `tirl.train.feed`) call `sync_weights` and `rollout`
from the producer's thread only, so the actors still see one call at a time.

Simplifications: weights are sent whole (no deltas); a worker takes new weights only between shards.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Sequence

from tirl.config import UserError
from tirl.distributed.config import DistributedConfig, require_ray
from tirl.distributed.server_sync import DiskSync, WeightSyncError, check_held  # noqa: F401 - raised here
from tirl.distributed.shards import cut_shards, merge_results
from tirl.distributed.worker import RolloutWorker, WorkerSpec


SKIP_SYNC_ENV = "TIRL_TEST_SKIP_WEIGHT_SYNC"
"""Test hook: when set, syncs after the first are acknowledged but not loaded, and not hash-checked, so
the trainer's alarm of last resort (the rollout-vs-trainer log-prob gap) can be shown to fire."""


class RolloutFailed(RuntimeError):
    """A step's rollout could not complete (timeout, every worker lost, or an error inside a worker)."""


class RayBackend:
    name = "ray"

    def __init__(self, cfg: DistributedConfig, spec: WorkerSpec, sync_dir: str | None = None):
        self.ray = ray = require_ray()
        self.cfg, self.spec, self.sync_dir = cfg, spec, sync_dir
        # Built before any cluster starts, so a sync that cannot work is refused with nothing to undo.
        self.server_sync = _server_sync(cfg, sync_dir) if cfg.weight_sync in ("disk", "nccl") else None
        self.started_cluster = not ray.is_initialized()
        if self.started_cluster:
            if cfg.address:
                ray.init(address=cfg.address, include_dashboard=False, log_to_driver=True)
            else:
                need = math.ceil(cfg.rollout_workers * cfg.worker_cpus)
                ray.init(num_cpus=max(need, os.cpu_count() or 1), include_dashboard=False, log_to_driver=True)
        try:
            self._setup(spec)
        except BaseException as e:  # a half-built backend must not leave actors or a cluster behind
            self.close()
            if isinstance(e, ray.exceptions.RayError) and not isinstance(e, RolloutFailed):
                raise RolloutFailed(f"rollout workers could not start: {e}") from None
            raise

    def _setup(self, spec: WorkerSpec) -> None:
        from ray.util.placement_group import placement_group

        ray, cfg = self.ray, self.cfg
        W = cfg.rollout_workers
        self.pg = placement_group([self._bundle()] * W, strategy="PACK")
        try:
            ray.get(self.pg.ready(), timeout=cfg.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise RolloutFailed(f"the cluster could not place {W} rollout workers of {self._bundle()} within "
                                f"{cfg.timeout_s:.0f} s (distributed.timeout_s); it has {ray.cluster_resources()}") from None
        self.workers: list[Any] = [None] * W
        self.dead: set[int] = set()
        self.version: int | None = None
        self.reruns = 0
        self.syncs: list[dict[str, Any]] = []
        """Per sync: the version, the trainer's weight hash and every worker's (object-store sync)."""
        self.sandbox_servers: list[Any] = []
        self.sandbox_urls = list(cfg.sandbox_urls) if cfg.sandbox == "urls" else []
        self.sandbox_token = os.environ.get("TIRL_SANDBOX_TOKEN")  # the driver's, for workers on other nodes
        if cfg.sandbox == "actors":
            self._start_sandbox_servers()
        if self.sandbox_urls:
            import dataclasses

            self.spec = dataclasses.replace(spec, sandbox_urls=self.sandbox_urls,
                                            sandbox_concurrency=cfg.sandbox_concurrency,
                                            sandbox_token=self.sandbox_token)
        for i in range(W):
            self._start(i)
        self.info = self._wait([w.info.remote() for w in self.workers], "start")
        for probe in self._wait([w.check_sandbox.remote() for w in self.workers], "check_sandbox"):
            if probe["status"] != "ok" or probe["stdout"].strip() != "42":
                raise RolloutFailed(f"{probe['name']} cannot run code in its sandbox: {probe['status']} "
                                    f"{probe['message']}")

    # --- workers -----------------------------------------------------------------------------------
    def _bundle(self) -> dict[str, float]:
        b = {"CPU": float(self.cfg.worker_cpus)}
        if self.cfg.worker_gpus:
            b["GPU"] = float(self.cfg.worker_gpus)
        return b

    def _start(self, i: int) -> None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        spec = self.spec
        if self.cfg.generator == "openai":
            import dataclasses

            spec = dataclasses.replace(spec, server_url=self.cfg.server_urls[i % len(self.cfg.server_urls)])
        actor = self.ray.remote(RolloutWorker).options(
            num_cpus=self.cfg.worker_cpus, num_gpus=self.cfg.worker_gpus, max_restarts=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i))
        self.workers[i] = actor.remote(spec, name=f"rollout-worker-{i}")
        self.dead.discard(i)

    def _start_sandbox_servers(self) -> None:
        """One `tirl sandbox serve` actor per worker, in the worker's bundle; their URLs feed every pool.
        They listen on the node's address, so with a token of this run's own that only its workers hold."""
        import secrets

        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.sandbox_token = secrets.token_urlsafe(32)

        actor = self.ray.remote(SandboxServer)
        for i in range(self.cfg.rollout_workers):
            # num_cpus=0: it shares the worker's bundle (and node); its calls run in its own cgroup slots.
            self.sandbox_servers.append(actor.options(num_cpus=0, max_restarts=0, scheduling_strategy=
                                                      PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i))
                                        .remote(self.spec.sandbox, self.sandbox_token))
        self.sandbox_urls = self._wait([s.url.remote() for s in self.sandbox_servers], "sandbox server start")

    def _wait(self, refs: list[Any], what: str) -> list[Any]:
        try:
            return self.ray.get(refs, timeout=self.cfg.timeout_s)
        except self.ray.exceptions.GetTimeoutError:
            raise RolloutFailed(f"rollout workers did not answer '{what}' within {self.cfg.timeout_s:.0f} s "
                                "(distributed.timeout_s)") from None

    def _label(self, i: int) -> str:
        pid = self.info[i]["pid"] if i < len(getattr(self, "info", [])) else "?"
        return f"rollout-worker-{i} (pid {pid})"

    def describe(self) -> dict[str, Any]:
        """For the run's summary: where rollouts ran, which weights each sync delivered, re-runs."""
        return {"backend": "ray", "driver_pid": os.getpid(), "workers": self.info, "syncs": self.syncs,
                "reruns": self.reruns, "sandbox_urls": self.sandbox_urls}

    def worker_info(self) -> list[dict[str, Any]]:
        """Name, pid, node and weight version of every live worker."""
        live = [i for i in range(len(self.workers)) if i not in self.dead]
        return self._wait([self.workers[i].info.remote() for i in live], "info")

    def weight_hashes(self) -> list[str]:
        live = [i for i in range(len(self.workers)) if i not in self.dead]
        return self._wait([self.workers[i].weights_hash.remote() for i in live], "weights_hash")

    def skip_weight_loads(self, skip: bool = True) -> None:
        """Test hook: workers acknowledge syncs without loading the weights (and the hash check is off)."""
        self._wait([w.set_skip_weight_load.remote(skip) for i, w in enumerate(self.workers) if i not in self.dead],
                   "set_skip_weight_load")
        self.cfg.verify_weights = not skip

    # --- weights -----------------------------------------------------------------------------------
    def sync_weights(self, model: Any, version: int) -> dict[str, float]:
        from tirl.distributed.weights import arrays_hash, model_hash, weight_arrays

        t0 = time.perf_counter()
        if os.environ.get(SKIP_SYNC_ENV) and self.version is not None:
            self.skip_weight_loads(True)
        for i in sorted(self.dead):  # replacements for workers lost in the last step
            self._start(i)
            self.info[i] = self._wait([self.workers[i].info.remote()], "start")[0]
        if self.server_sync is not None or self.cfg.weight_sync == "none":
            if self.server_sync is not None:
                held = self.server_sync.push(model, version)
                reported = self.cfg.verify_weights and any(h["hash"] for h in held)
                want = model_hash(model) if reported else None
                check_held(held, version, want)
                self.syncs.append({"version": version, "trainer_hash": want,
                                   "servers": [{k: h[k] for k in ("target", "version", "hash")} for h in held]})
            # Only now, with every server holding `version`, may workers play rollouts that name it.
            self._wait([w.set_version.remote(version) for w in self.workers], "set_version")
        else:
            arrays = weight_arrays(model)
            ref = self.ray.put(arrays)
            verify = self.cfg.verify_weights
            answers = self._load_everywhere(version, ref, verify)
            del ref  # the store frees the copy once the workers have loaded it
            want = arrays_hash(arrays) if verify else None
            check_held([{"target": self._label(i), "version": v, "hash": d} for i, (v, d) in enumerate(answers)],
                       version, want)
            self.syncs.append({"version": version, "trainer_hash": want, "worker_hashes": [d for _, d in answers]})
        self.version = version
        return {"time/weight_sync_s": time.perf_counter() - t0}

    def _load_everywhere(self, version: int, ref: Any, verify: bool) -> list[Any]:
        """Every worker's answer to `load_weights`; a worker found dead here (lost between steps, or while
        an asynchronous producer waited) is replaced once and the replacement loaded."""
        for _ in range(2):
            refs = [w.load_weights.remote(version, ref, verify) for w in self.workers]
            answers, lost = [], []
            for i, r in enumerate(refs):
                try:
                    answers.append(self._wait([r], "load_weights")[0])
                except self.ray.exceptions.RayActorError:
                    lost.append(i)
            if not lost:
                return answers
            for i in lost:
                self._start(i)
                self.info[i] = self._wait([self.workers[i].info.remote()], "start")[0]
        raise RolloutFailed(f"rollout workers died twice while loading weights version {version}: "
                            + ", ".join(self._label(i) for i in lost))

    # --- rollout -----------------------------------------------------------------------------------
    def rollout(self, prompts: Sequence[Sequence[int]], cfg: Any, shards: int = 1) -> Any:
        ray = self.ray
        parts = cut_shards(prompts, shards, cfg.seed)
        deadline = time.monotonic() + self.cfg.timeout_s
        results: list[Any] = [None] * len(parts)
        running: dict[Any, tuple[int, int]] = {}  # ref -> (shard, worker)
        turn = 0

        def submit(k: int) -> None:
            nonlocal turn
            live = [i for i in range(len(self.workers)) if i not in self.dead]
            if not live:
                raise RolloutFailed(f"every rollout worker died ({', '.join(self._label(i) for i in sorted(self.dead))})")
            w = live[turn % len(live)]
            turn += 1
            running[self.workers[w].rollout.remote(parts[k], cfg, self.version)] = (k, w)

        for k in range(len(parts)):
            submit(k)
        while running:
            left = deadline - time.monotonic()
            done, _ = ray.wait(list(running), num_returns=1, timeout=max(left, 0))
            if not done:
                pending = sorted(running.values())
                raise RolloutFailed(f"rollout not finished within {self.cfg.timeout_s:.0f} s (distributed.timeout_s): "
                                    + "; ".join(f"shard {k} on {self._label(w)}" for k, w in pending))
            ref = done[0]
            k, w = running.pop(ref)
            try:
                results[k] = ray.get(ref)
            except ray.exceptions.RayActorError:
                self.dead.add(w)  # its other queued shards fail the same way and are re-run too
                self.reruns += 1
                submit(k)
            except ray.exceptions.RayTaskError as e:
                if isinstance(e.cause, UserError):  # a sandbox or server that stayed down: its own one line
                    raise e.cause from None
                raise RolloutFailed(f"shard {k} failed on {self._label(w)}: {e.cause!r}") from None
        return merge_results(parts, results)

    def close(self) -> None:
        ray = self.ray
        if getattr(self, "server_sync", None) is not None:
            self.server_sync.close()
        for i, w in enumerate(getattr(self, "workers", [])):
            if w is not None and i not in self.dead:
                try:
                    ray.get(w.close.remote(), timeout=30)
                except Exception:  # noqa: BLE001 - shutting down anyway
                    pass
                ray.kill(w)
        for s in getattr(self, "sandbox_servers", []):
            try:
                ray.get(s.close.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
            ray.kill(s)
        if getattr(self, "pg", None) is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.pg)
            self.pg = None
        if self.started_cluster and ray.is_initialized():
            ray.shutdown()


def _server_sync(cfg: Any, sync_dir: str | None) -> Any:
    """The server sync a `DistributedConfig` asks for (`disk` or `nccl`), behind one `push` interface."""
    if cfg.weight_sync == "disk":
        if not sync_dir:
            raise ValueError("distributed.weight_sync=disk needs a directory the servers can read (sync_dir)")
        return DiskSync(cfg.server_urls, sync_dir, cfg.timeout_s)
    if cfg.weight_sync == "nccl":
        from tirl.distributed.vllm_nccl import NcclSync

        return NcclSync(cfg.server_urls, cfg.timeout_s, verify=cfg.verify_weights)
    raise ValueError(f"distributed.weight_sync={cfg.weight_sync} does not sync into servers")


class SandboxServer:
    """`tirl sandbox serve` inside a Ray actor: a local sandbox behind the same HTTP server and limits
    (connection cap, deadlines, body limits: `tirl.sandbox.http.BackgroundServer`), on the node's IP
    unless `host` is given, answering only requests that carry `token`."""

    def __init__(self, config: Any, token: str | None = None, host: str | None = None, limits: Any = None):
        from tirl.sandbox import Sandbox
        from tirl.sandbox.http import BackgroundServer

        if host is None:
            import ray

            host = ray.util.get_node_ip_address()
        self.sandbox = Sandbox(config)
        try:
            self.server = BackgroundServer(self.sandbox, host, 0, limits, token)
        except BaseException:
            self.sandbox.close()
            raise

    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        self.server.close()
        self.sandbox.close()
