"""HTTP client plumbing every tirl client shares: the retry policy and a background event loop.

Connection errors, timeouts, 408, 429 and 5xx are worth another try (a busy inference or sandbox
server under RL load: verl#3478, SandboxFusion#33; 408: the body did not arrive in time, RFC 9110
lets the client repeat it), with exponential back-off; any other 4xx is
the caller's mistake and raises at once with the server's message. Used by the sandbox client,
the OpenAI-compatible generator and the conversion pipeline's chat client. `BackgroundLoop` lets
synchronous callers (the rollout, the trainer) use one aiohttp session from any thread.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import aiohttp


class HTTPRejected(ValueError):
    """The server refused the request (4xx other than 408 and 429): retrying would not help."""

    def __init__(self, url: str, status: int, body: str):
        super().__init__(f"{url} rejected the request (HTTP {status}): {body[:500]}")
        self.status = status


class HTTPUnavailable(RuntimeError):
    """Every attempt failed (unreachable, timed out, 408, 429 or 5xx); `last` says how the last one did."""

    def __init__(self, url: str, attempts: int, last: str):
        super().__init__(f"{url} failed after {attempts} attempts; last error: {last}")
        self.last = last


def backoff_delay(attempt: int, backoff_s: float) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): `backoff_s`, then doubling. The one
    schedule of every retry in tirl (these clients, and the rollout's re-runs of failed sandbox calls)."""
    return backoff_s * 2 ** (attempt - 1)


async def request_json(session: aiohttp.ClientSession, method: str, url: str, body: Any = None, *,
                       timeout_s: float, retries: int, backoff_s: float) -> Any:
    """The decoded JSON reply of `method url` (body sent as JSON), after up to `retries` retries."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            await asyncio.sleep(backoff_delay(attempt, backoff_s))
        try:
            async with session.request(method, url, json=body, timeout=timeout) as resp:
                if resp.status in (408, 429) or resp.status >= 500:
                    last = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                    continue
                if resp.status >= 400:
                    raise HTTPRejected(url, resp.status, await resp.text())
                return await resp.json(content_type=None)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError) as e:
            last = f"{type(e).__name__}: {e}"
    raise HTTPUnavailable(url, retries + 1, last)


class BackgroundLoop:
    """An event loop running in a daemon thread, holding one lazily created aiohttp session."""

    def __init__(self, name: str, headers: dict[str, str] | None = None):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._headers = headers or {}
        self._session: aiohttp.ClientSession | None = None

    def call(self, coro: Any) -> Any:
        """Run `coro` on the loop and wait for its result (from synchronous code)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def wrap(self, coro: Any) -> Any:
        """Await `coro` on the loop from another event loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def session(self) -> aiohttp.ClientSession:
        """The shared session; created inside the loop, as aiohttp requires."""
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    def close(self) -> None:
        if self.loop.is_closed():
            return
        if self._session is not None:
            self.call(self._session.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
