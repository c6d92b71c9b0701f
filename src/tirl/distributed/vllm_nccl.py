"""Weight sync over NCCL into vLLM servers (`distributed.weight_sync: nccl`), GPU only.

The path: the user starts each vLLM server with the worker extension shipped here and vLLM's
development endpoints on (they expose `collective_rpc` and `reset_prefix_cache`):

    VLLM_SERVER_DEV_MODE=1 vllm serve MODEL --worker-extension-cls tirl.distributed.vllm_nccl.WeightReceiver

(tirl must be importable in the server's environment). At the first sync the trainer forms one
NCCL group with every engine worker of every server — a `StatelessProcessGroup` rendezvous on the
trainer's host plus vLLM's `PyNcclCommunicator`, vLLM's own mechanism for talking to processes
outside its `torch.distributed` world — with the trainer as rank 0. Each sync then:

1. asks every server (`POST /collective_rpc`, method `tirl_receive_weights`) to receive version V,
   telling it the names, dtypes, shapes and byte offsets of the tensors in each bucket;
2. broadcasts the trainer's state dict from rank 0, in buckets of at most `BUCKET_BYTES`
   (one collective per bucket, not per tensor), in name order;
3. every engine worker loads each bucket through the model's `load_weights` (which maps
   checkpoint names onto vLLM's fused layers and slices for tensor parallelism), records V, and
   answers with V and the hash of the bytes it received (same format as `weights.arrays_hash`);
4. the trainer compares every answer to V and to the hash of its own weights, then has every
   server drop its prefix cache (`POST /reset_prefix_cache`): cached KV from old weights would
   otherwise be reused (lmdeploy#4917).

What the hash proves: the bytes each engine worker received and handed to `load_weights` are the
trainer's, for this version. vLLM fuses q/k/v and gate/up projections, so its own parameters
cannot be hashed name for name against the trainer's; `tests/test_vllm_nccl.py` checks on a GPU
that the engine's log-probs follow the new weights.

Needs: CUDA on the trainer and on the servers, vLLM installed on both, and the trainer on a GPU
that no engine worker uses (NCCL refuses two ranks on one device). Imports of vllm and CUDA stay
inside this module's functions; `require_nccl()` refuses the setting in one line otherwise.
Simplifications: the whole state dict is sent every sync (no deltas); one trainer rank sends. The
HTTP calls are bounded by `distributed.timeout_s`, but a broadcast to a server that died after
accepting the sync blocks (NCCL itself has no deadline here): a server lost mid-sync hangs the step,
where the disk path would fail it.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

VLLM_INSTALL = "pip install 'tirl[vllm]' (vLLM >= 0.10.2, for its collective_rpc endpoint) on the trainer and every server"
BUCKET_BYTES = 256 << 20
"""Largest broadcast: big enough that per-collective latency does not matter, small enough to
stage beside the model on the trainer's GPU."""
_ALIGN = 64  # each tensor starts on a boundary every dtype can be viewed at


class NcclUnavailable(ValueError):
    """`weight_sync: nccl` asked for where vLLM or CUDA is missing (a config the user can fix)."""


def require_nccl() -> None:
    """Refuse, in one line, a machine that cannot send weights over NCCL into vLLM."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise NcclUnavailable(f"distributed.weight_sync=nccl needs vLLM, which is not installed: {VLLM_INSTALL}; "
                              "without a GPU use weight_sync=disk") from None
    import torch

    if not torch.cuda.is_available():
        raise NcclUnavailable("distributed.weight_sync=nccl needs a CUDA GPU on the trainer (NCCL is GPU-only); "
                              "on CPU use weight_sync=disk") from None


def plan_buckets(tensors: list[tuple[str, Any]], bucket_bytes: int = BUCKET_BYTES) -> list[dict[str, Any]]:
    """Cut (name, tensor) pairs, in name order, into buckets of at most `bucket_bytes`.

    Each bucket is {"size": bytes, "tensors": [[name, dtype, shape, offset, nbytes], ...]}; a tensor
    larger than the cap gets a bucket of its own. Plain JSON: it travels in the collective_rpc body.
    """
    buckets: list[dict[str, Any]] = []
    cur: dict[str, Any] = {"size": 0, "tensors": []}
    for name, t in sorted(tensors, key=lambda nt: nt[0]):
        nbytes = t.numel() * t.element_size()
        offset = -(-cur["size"] // _ALIGN) * _ALIGN
        if cur["tensors"] and offset + nbytes > bucket_bytes:
            buckets.append(cur)
            cur, offset = {"size": 0, "tensors": []}, 0
        cur["tensors"].append([name, str(t.dtype).removeprefix("torch."), list(t.shape), offset, nbytes])
        cur["size"] = offset + nbytes
    if cur["tensors"]:
        buckets.append(cur)
    return buckets


def pack_bucket(bucket: dict[str, Any], tensors: dict[str, Any], device: Any) -> Any:
    """The bucket's tensors laid out as one uint8 buffer on `device` (the broadcast's payload)."""
    import torch

    buf = torch.zeros(bucket["size"], dtype=torch.uint8, device=device)
    for name, _, _, offset, nbytes in bucket["tensors"]:
        src = tensors[name].detach().contiguous().reshape(-1).view(torch.uint8)
        buf[offset:offset + nbytes].copy_(src)
    return buf


def unpack_bucket(bucket: dict[str, Any], buf: Any) -> list[tuple[str, Any]]:
    """(name, tensor) views into a received buffer, in the bucket's order."""
    import torch

    out = []
    for name, dtype, shape, offset, nbytes in bucket["tensors"]:
        out.append((name, buf[offset:offset + nbytes].view(getattr(torch, dtype)).view(shape)))
    return out


def hash_bucket(h: Any, bucket: dict[str, Any], buf: Any) -> None:
    """Feed a bucket's tensors to `h` exactly as `weights.arrays_hash` feeds the trainer's arrays."""
    from tirl.distributed.weights import hash_update

    host = buf.cpu().numpy()
    for name, dtype, shape, offset, nbytes in bucket["tensors"]:
        hash_update(h, name, dtype, tuple(shape), host[offset:offset + nbytes])


class WeightReceiver:
    """vLLM worker extension (`--worker-extension-cls tirl.distributed.vllm_nccl.WeightReceiver`).

    vLLM mixes it into each engine worker, so `self` is the worker: `self.device` its GPU,
    `self.model_runner.model` its model. Methods are called through `POST /collective_rpc`; vLLM
    passes the JSON arguments through, and they are converted here because some versions pass
    only strings.
    """

    def tirl_world_rank(self) -> int:
        """This worker's rank inside its engine (0..TP*PP-1): its place in the sync group."""
        from vllm.distributed.parallel_state import get_world_group

        return int(get_world_group().rank)

    def tirl_init_weight_group(self, host: str, port: Any, rank_offset: Any, world: Any) -> dict[str, Any]:
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        rank = self.tirl_world_rank() + int(rank_offset)
        group = StatelessProcessGroup.create(host=host, port=int(port), rank=rank, world_size=int(world))
        self._tirl_comm = PyNcclCommunicator(group, device=self.device)
        return {"rank": rank, "pid": os.getpid()}

    def tirl_receive_weights(self, version: Any, plan: Any, want_hash: Any = True) -> dict[str, Any]:
        """Receive every bucket of `plan` from rank 0, load it, and report (version, hash)."""
        import hashlib

        import torch

        if getattr(self, "_tirl_comm", None) is None:
            raise RuntimeError("tirl_receive_weights before tirl_init_weight_group")
        buckets = json.loads(plan) if isinstance(plan, str) else plan
        want_hash = want_hash not in (False, "False", "false", "0", 0)
        h = hashlib.blake2b(digest_size=16)
        for bucket in buckets:
            buf = torch.empty(bucket["size"], dtype=torch.uint8, device=self.device)
            self._tirl_comm.broadcast(buf, src=0)  # on the current stream
            if buf.is_cuda:
                torch.cuda.current_stream().synchronize()
            if want_hash:
                hash_bucket(h, bucket, buf)
            self.model_runner.model.load_weights(weights=unpack_bucket(bucket, buf))
            del buf
        self._tirl_version = int(version)
        return {"version": self._tirl_version, "hash": h.hexdigest() if want_hash else None, "pid": os.getpid()}

    def tirl_weight_version(self) -> dict[str, Any]:
        """The version this worker last received (None: the weights it was started with)."""
        return {"version": getattr(self, "_tirl_version", None), "pid": os.getpid()}


class NcclSync:
    """Trainer side: `push(model, version)` into every server's engine workers, as rank 0."""

    def __init__(self, urls: list[str], timeout_s: float, verify: bool = True, device: Any = None):
        require_nccl()
        from tirl.http_client import BackgroundLoop

        self.urls = [u.rstrip("/").removesuffix("/v1") for u in dict.fromkeys(urls)]
        self.timeout_s, self.verify, self.device = timeout_s, verify, device
        self.comm: Any = None
        self.bg = BackgroundLoop("tirl-nccl-sync")

    # --- HTTP control plane --------------------------------------------------------------------
    def _rpc(self, url: str, method: str, *args: Any) -> Any:
        """Start `collective_rpc(method, args)` on one server; returns a future of its per-worker results."""
        from tirl.http_client import request_json

        async def go() -> Any:
            body = {"method": method, "args": [str(a) for a in args], "timeout": self.timeout_s}
            reply = await request_json(await self.bg.session(), "POST", f"{url}/collective_rpc", body,
                                       timeout_s=self.timeout_s, retries=0, backoff_s=0.0)
            return reply["results"]

        return asyncio.run_coroutine_threadsafe(go(), self.bg.loop)

    def _gather(self, futures: dict[str, Any], what: str) -> dict[str, Any]:
        from tirl.distributed.server_sync import WeightSyncError
        from tirl.http_client import HTTPRejected, HTTPUnavailable

        out = {}
        for url, fut in futures.items():
            try:
                out[url] = fut.result(self.timeout_s)
            except (HTTPRejected, HTTPUnavailable, TimeoutError, KeyError, TypeError) as e:
                raise WeightSyncError(f"{url} failed '{what}' (started with VLLM_SERVER_DEV_MODE=1 and "
                                      f"--worker-extension-cls tirl.distributed.vllm_nccl.WeightReceiver?): {e}") from None
        return out

    # --- data plane ----------------------------------------------------------------------------
    def _connect(self) -> None:
        import socket

        import torch
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        ranks = self._gather({u: self._rpc(u, "tirl_world_rank") for u in self.urls}, "tirl_world_rank")
        sizes = {u: len(r) for u, r in ranks.items()}
        world = 1 + sum(sizes.values())
        host = _host_ip()
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        offset, futures = 1, {}
        for u in self.urls:
            futures[u] = self._rpc(u, "tirl_init_weight_group", host, port, offset, world)
            offset += sizes[u]
        if self.device is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        group = StatelessProcessGroup.create(host=host, port=port, rank=0, world_size=world)
        self.comm = PyNcclCommunicator(group, device=self.device)
        self._gather(futures, "tirl_init_weight_group")

    def push(self, model: Any, version: int) -> list[dict[str, Any]]:
        """Send the model's state dict as `version`; per engine worker: {target, version, hash}."""
        import torch

        state = model.state_dict()
        if self.comm is None:
            on = next(iter(state.values())).device
            if self.device is None and on.type == "cuda":
                self.device = on  # stage the buckets where the weights already are
            self._connect()
        plan = plan_buckets(list(state.items()))
        futures = {u: self._rpc(u, "tirl_receive_weights", version, json.dumps(plan), self.verify) for u in self.urls}
        with torch.no_grad():
            for bucket in plan:
                buf = pack_bucket(bucket, state, self.device)
                self.comm.broadcast(buf, src=0, stream=torch.cuda.current_stream())
                torch.cuda.current_stream().synchronize()
                del buf
        answers = self._gather(futures, "tirl_receive_weights")
        self._gather({u: self._post(u, "/reset_prefix_cache") for u in self.urls}, "reset_prefix_cache")
        return [{"target": f"{u} worker {i} (pid {a.get('pid')})", "version": a.get("version"), "hash": a.get("hash")}
                for u, per in answers.items() for i, a in enumerate(per)]

    def versions(self) -> list[dict[str, Any]]:
        """The version every engine worker reports holding (None before the first sync)."""
        answers = self._gather({u: self._rpc(u, "tirl_weight_version") for u in self.urls}, "tirl_weight_version")
        return [{"target": f"{u} worker {i} (pid {a.get('pid')})", "version": a.get("version"), "hash": None}
                for u, per in answers.items() for i, a in enumerate(per)]

    def _post(self, url: str, path: str) -> Any:
        from tirl.http_client import request_json

        async def go() -> Any:
            return await request_json(await self.bg.session(), "POST", f"{url}{path}", None,
                                      timeout_s=self.timeout_s, retries=2, backoff_s=1.0)

        return asyncio.run_coroutine_threadsafe(go(), self.bg.loop)

    def close(self) -> None:
        self.comm = None  # the engine workers' side goes away with the servers
        self.bg.close()


def _host_ip() -> str:
    """This machine's address as other nodes see it (the rendezvous host)."""
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"
