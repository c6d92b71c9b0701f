"""Weight sync into inference servers, behind one interface: `push(model, version)` returns what each
target reports holding, and `check_held` refuses any answer that is not the version (and hash) sent.

    sync = DiskSync(urls, sync_dir, timeout_s)     # or vllm_nccl.NcclSync(urls, timeout_s)
    held = sync.push(policy, version)              # [{"target", "version", "hash"}, ...]
    check_held(held, version, model_hash(policy))  # WeightSyncError naming the target otherwise

`disk` (`DiskSync`): save under `sync_dir/v{version}` (`save_pretrained`), then
`POST /update_weights_from_disk` to each server (`tirl serve`, SGLang). Every server must answer
`success` and, when it reports one (`tirl serve` does), the version asked for. The directory must
be readable by the servers at the same path (a shared filesystem on a cluster); older versions are
deleted once every server holds the new one. `tirl serve` drops its prefix cache on reload; SGLang
flushes its own. Servers report no hash on this path.

`nccl` (`tirl.distributed.vllm_nccl.NcclSync`): vLLM servers on GPUs, through vLLM's own NCCL
machinery and a worker extension shipped with tirl; every engine worker reports version and hash.

The Ray object store (`hf` workers holding their own model) is the third path; it lives in
`ray_backend.py` because its targets are the rollout actors themselves, and answers in the same
(version, hash) terms.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from tirl.http_client import BackgroundLoop, HTTPRejected, HTTPUnavailable, request_json


class WeightSyncError(RuntimeError):
    """A worker or server does not hold the weights the trainer sent."""


def check_held(held: list[dict[str, Any]], version: int, want_hash: str | None) -> None:
    """Every target holds `version`, and (where it reports a hash and one is wanted) the trainer's weights."""
    for h in held:
        if h["version"] != version:
            raise WeightSyncError(f"{h['target']} holds weights version {h['version']} after the sync to version "
                                  f"{version}")
        if want_hash is not None and h.get("hash") is not None and h["hash"] != want_hash:
            raise WeightSyncError(f"{h['target']} holds weights version {version} hash {h['hash']}; the trainer's "
                                  f"hash is {want_hash}")


class DiskSync:
    """`weight_sync: disk`: save, then every server reloads from the shared directory."""

    def __init__(self, urls: list[str], sync_dir: str | Path, timeout_s: float):
        self.urls, self.sync_dir, self.timeout_s = list(urls), sync_dir, timeout_s

    def push(self, model: Any, version: int) -> list[dict[str, Any]]:
        held = push_weights(self.urls, save_weights(model, self.sync_dir, version), version, self.timeout_s)
        return [{"target": url, "version": v, "hash": None} for url, v in held.items()]

    def close(self) -> None:
        """Nothing held open between syncs."""


def save_weights(model: Any, sync_dir: str | Path, version: int) -> Path:
    out = Path(sync_dir) / f"v{version}"
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # a server never sees a half-written version
    return out


def push_weights(urls: list[str], path: str | Path, version: int, timeout_s: float = 600.0) -> dict[str, Any]:
    """Ask every server to load `path` as `version`; returns {url: version it reports}."""
    urls = list(dict.fromkeys(u.rstrip("/") for u in urls))
    bg = BackgroundLoop("tirl-weight-sync")

    async def one(url: str) -> Any:
        if url.endswith("/v1"):
            url = url[:-3]
        body = {"model_path": str(path), "weight_version": version}
        try:
            reply = await request_json(await bg.session(), "POST", f"{url}/update_weights_from_disk", body,
                                       timeout_s=timeout_s, retries=2, backoff_s=1.0)
        except (HTTPRejected, HTTPUnavailable) as e:
            raise WeightSyncError(f"{url} did not load weights version {version} from {path}: {e}") from None
        if not (isinstance(reply, dict) and reply.get("success")):
            raise WeightSyncError(f"{url} did not load weights version {version} from {path}: {reply}")
        held = reply.get("weight_version", version)  # servers that report none are trusted on success
        if held != version:
            raise WeightSyncError(f"{url} reports weights version {held} after loading version {version}")
        return held

    async def all_() -> list[Any]:
        return list(await asyncio.gather(*(one(u) for u in urls)))

    try:
        held = bg.call(all_())
    finally:
        bg.close()
    for old in Path(path).parent.glob("v*"):
        if old != Path(path) and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return dict(zip(urls, held))
