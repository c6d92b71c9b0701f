"""`SandboxPool`: N `tirl sandbox serve` (or SandboxFusion) servers behind one client with `Sandbox`'s API.

Routing: each call goes to the live server with the fewest calls in flight (ties: the first listed),
and no server gets more than `max_in_flight` at once; when all are full the call waits. Set the cap
near a server's cores: more only queues inside the server and runs into HTTP deadlines (verl#3478,
SandboxFusion#67).

Failures: a call that comes back `sandbox_error` (server unreachable, disconnected, timed out at the
HTTP level, or its supervisor failed) is retried on another server; the failing server gets a health
check (`GET /health`) and is dropped from rotation if it does not answer. Dropped servers are probed
again every `readmit_s` and come back when healthy. A call no server could run, or a request a server
refuses (4xx), returns an `ExecResult` with status `sandbox_error` and the reason in `message`: the
rollout shows it to the model as interpreter output. Nothing here raises into the trainer.

Retrying on another server may run a program twice (the first server may have run it before the
connection broke); sandboxed programs have no effects outside their call, so this is harmless.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from tirl.http_client import BackgroundLoop, HTTPRejected, request_json
from tirl.sandbox.config import ExecResult


@dataclass
class _Server:
    url: str
    client: Any
    in_flight: int = 0
    alive: bool = True
    dropped_at: float = 0.0
    stats: dict[str, int] = field(default_factory=lambda: {"served": 0, "failed": 0, "dropped": 0})


class SandboxPool:
    def __init__(self, urls: list[str], max_in_flight: int = 4, health_timeout_s: float = 5.0,
                 readmit_s: float = 30.0, http_retries: int = 1, default_timeout_s: float = 10.0,
                 token: str | None = None):
        from tirl.sandbox.http import HttpSandbox

        if not urls:
            raise ValueError("a sandbox pool needs at least one server URL")
        self.max_in_flight, self.health_timeout_s, self.readmit_s = max_in_flight, health_timeout_s, readmit_s
        self.servers = [_Server(u.rstrip("/"), HttpSandbox(u, max_concurrency=max_in_flight, retries=http_retries,
                                                           backoff_s=0.1, default_timeout_s=default_timeout_s,
                                                           token=token))
                        for u in urls]
        self.retried = 0
        self._bg = BackgroundLoop("tirl-sandbox-pool")
        self._changed: asyncio.Condition | None = None  # created on the pool's loop

    # --- Sandbox's API -----------------------------------------------------------------------------
    def run(self, code: str, timeout: float | None = None) -> ExecResult:
        return self._bg.call(self._run(code, timeout))

    def run_batch(self, codes: list[str], timeout: float | None = None) -> list[ExecResult]:
        async def go():
            return list(await asyncio.gather(*(self._run(c, timeout) for c in codes)))

        return self._bg.call(go())

    async def arun(self, code: str, timeout: float | None = None) -> ExecResult:
        return await self._bg.wrap(self._run(code, timeout))

    def stats(self) -> dict[str, Any]:
        """Per server: calls served, calls failed, times dropped, alive now; and calls retried."""
        return {"servers": {s.url: {**s.stats, "alive": s.alive} for s in self.servers}, "retried": self.retried}

    def close(self) -> None:
        for s in self.servers:
            s.client.close()
        self._bg.close()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- routing -----------------------------------------------------------------------------------
    async def _run(self, code: str, timeout: float | None) -> ExecResult:
        if self._changed is None:
            self._changed = asyncio.Condition()
        tried: set[str] = set()
        last = "no server is alive"
        while True:
            server = await self._pick(tried)
            if server is None:
                return ExecResult("sandbox_error", message=f"Error: no sandbox server could run the call ({last})")
            if tried:
                self.retried += 1
            tried.add(server.url)
            server.in_flight += 1
            try:
                res = await server.client.arun(code, timeout)
            except HTTPRejected as e:  # the request itself is bad: another server would refuse it too
                server.stats["failed"] += 1
                return ExecResult("sandbox_error", message=f"Error: {e}")
            except Exception as e:  # noqa: BLE001 - any client failure is this server's failure
                res = ExecResult("sandbox_error", message=f"{type(e).__name__}: {e}")
            finally:
                server.in_flight -= 1
                async with self._changed:
                    self._changed.notify_all()
            if res.status != "sandbox_error":
                server.stats["served"] += 1
                return res
            server.stats["failed"] += 1
            last = f"{server.url}: {res.message or res.stderr}"[:300]
            # Re-read `alive` after the check: a concurrent failed call may have dropped it meanwhile.
            if server.alive and not await self._healthy(server) and server.alive:
                server.alive, server.dropped_at = False, time.monotonic()
                server.stats["dropped"] += 1

    async def _pick(self, tried: set[str]) -> _Server | None:
        """The least busy live server not tried yet; waits while all of them are at the cap."""
        await self._readmit()
        async with self._changed:
            while True:
                open_ = [s for s in self.servers if s.alive and s.url not in tried]
                if not open_:
                    return None
                free = [s for s in open_ if s.in_flight < self.max_in_flight]
                if free:
                    return min(free, key=lambda s: s.in_flight)
                await self._changed.wait()

    async def _readmit(self) -> None:
        now = time.monotonic()
        for s in self.servers:
            if not s.alive and now - s.dropped_at >= self.readmit_s:
                s.dropped_at = now  # one probe per period, however many calls arrive
                if await self._healthy(s):
                    s.alive = True

    async def _healthy(self, server: _Server) -> bool:
        try:
            data = await request_json(await self._bg.session(), "GET", f"{server.url}/health", None,
                                      timeout_s=self.health_timeout_s, retries=0, backoff_s=0.0)
            return isinstance(data, dict) and data.get("status") == "ok"
        except Exception:  # noqa: BLE001 - unreachable, refused, garbage: all mean not healthy
            return False
