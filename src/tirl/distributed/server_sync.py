"""Weight sync through disk for inference servers (`tirl serve`, SGLang): save, ask each to reload.

    path = save_weights(policy, sync_dir, version)          # sync_dir/v{version}, save_pretrained
    push_weights(server_urls, path, version)                # POST /update_weights_from_disk to each

Every server must answer `success` and, when it reports one (`tirl serve` does), the version asked
for; anything else raises `WeightSyncError` naming the server, so a rollout never runs silently on
old weights. The directory must be readable by the servers at the same path (a shared filesystem on
a cluster). Older versions are deleted once every server holds the new one.

`tirl serve` drops its prefix cache on reload; SGLang flushes its own. vLLM has no stable reload
endpoint: use its NCCL weight transfer on GPUs (not covered here) or restart it per sync.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from tirl.http_client import BackgroundLoop, HTTPRejected, HTTPUnavailable, request_json


class WeightSyncError(RuntimeError):
    """A worker or server does not hold the weights the trainer sent."""


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
