"""``Sandbox``: the local sandbox for synchronous and async callers, and ``check()``.

A private event loop in a background thread runs the ``Supervisor``; ``run``/``run_batch`` block on
it, ``arun`` works from any other event loop.
"""
from __future__ import annotations

import asyncio
import atexit
import threading
from typing import Sequence

from .config import ExecResult, SandboxConfig
from .supervisor import Supervisor


class Sandbox:
    """Run untrusted Python snippets. Usable from synchronous code and (via ``arun``) async code.

    >>> with Sandbox() as sb:
    ...     sb.run("print(6 * 7)").stdout
    '42\\n'

    ``run`` also takes SandboxFusion's extras: ``stdin`` (piped to the program), ``files`` (path ->
    bytes or base64, written into the call's private /tmp working directory, size-capped by
    ``tmp_size_mb``), ``fetch_files`` (paths returned base64 in ``ExecResult.files``) and a per-call
    ``memory_mb`` (at most the configured limit). A malformed request raises ValueError.
    """

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tirl-sandbox", daemon=True)
        self._thread.start()
        self._closed = False
        try:
            self._sup: Supervisor = self._call(Supervisor.create(self.config))
        except BaseException:
            self._stop_loop()
            raise
        atexit.register(self.close)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def isolation(self) -> dict:
        """What this sandbox achieved: level ("full" | "partial" | "none"), present/missing primitives,
        and how each limit is enforced ("limits"; "NOT ENFORCED ..." where it cannot be here)."""
        return dict(self._sup.report)

    def run(self, code: str, timeout: float | None = None, **extras) -> ExecResult:
        return self._call(self._sup.run(code, timeout, **extras))

    def run_batch(self, codes: Sequence[str], timeout: float | None = None) -> list[ExecResult]:
        """Run all ``codes`` with at most ``max_concurrency`` at once; results in input order."""
        return self._call(self._sup.run_batch(list(codes), timeout))

    async def arun(self, code: str, timeout: float | None = None, **extras) -> ExecResult:
        fut = asyncio.run_coroutine_threadsafe(self._sup.run(code, timeout, **extras), self._loop)
        return await asyncio.wrap_future(fut)

    def leftovers(self) -> int:
        """Processes of finished calls still alive under the zygote (0 = nothing escaped clean-up)."""
        return self._sup.leftovers()

    def session(self):
        """A stateful session (globals survive between calls); see ``tirl.sandbox.session``."""
        from .session import Session

        return Session(self._sup, self._loop)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            self._call(self._sup.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check(config: SandboxConfig | None = None) -> dict:
    """Start a sandbox, run one probe call, and report the isolation level achieved and what's missing."""
    with Sandbox(config or SandboxConfig()) as sb:
        report = sb.isolation
        res = sb.run("import math, json, fractions, itertools, collections\nprint('ok')", timeout=30)
        report["probe"] = {"status": res.status, "stderr": res.stderr[-500:], "duration_s": round(res.duration_s, 4)}
    return report
