"""SandboxFusion-compatible HTTP server (``tirl sandbox serve``) and ``HttpSandbox``, its client.

Server: ``POST /run_code`` takes SandboxFusion's request (``code``, ``language``, ``run_timeout``,
``compile_timeout``, ``memory_limit_MB``, ``stdin``, ``files`` {path: base64}, ``fetch_files``
[paths]) and answers in its response shape (``files`` {path: base64}), plus a ``tirl`` key carrying
the full ``ExecResult``. verl/ToRL users can point their sandbox URL at it. ``GET /health`` reports
the isolation level. Bad values (non-finite or non-positive ``run_timeout``, a file name leaving
/tmp...) are answered 400, bodies over ``MAX_BODY`` 413, a request whose headers or body do not
arrive within ``READ_TIMEOUT_S`` is dropped (408 for a slow body), and at most ``MAX_CONNECTIONS``
connections are served at once (more are closed on accept).

Client: same API as ``Sandbox`` (run / run_batch / arun), bounded concurrency, retries with
exponential back-off on connection errors and 5xx, a clear ``ValueError`` on 4xx.
Not covered: languages other than Python, ``memory_limit_MB`` above the server's configured limit
(clamped), authentication (bind to loopback or put it behind your own proxy).
"""
from __future__ import annotations

import asyncio
import json
import math
from typing import Sequence

import aiohttp
from aiohttp import web

from tirl.http_client import BackgroundLoop, HTTPUnavailable, request_json

from .config import ExecResult, SandboxConfig
from .local import Sandbox

MAX_TIMEOUT_S = 300.0
MAX_BODY = 64 << 20
READ_TIMEOUT_S = 10.0
KEEPALIVE_S = 15.0
MAX_CONNECTIONS = 256


def _bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"status": "SandboxError", "message": message}, status=status)


def _number(body: dict, key: str, lo: float = 0.0) -> float | None:
    """A finite number > ``lo`` (JSON numbers or numeric strings); ValueError names the key otherwise."""
    v = body.get(key)
    if v is None:
        return None
    try:
        if isinstance(v, bool):
            raise ValueError
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be a number") from None
    if not math.isfinite(x) or x <= lo:
        raise ValueError(f"{key} must be a finite number above {lo:g}, not {v!r}")
    return x


def parse_request(body: object) -> dict:
    """SandboxFusion request -> keyword arguments of ``Sandbox.arun``; ValueError says what is wrong."""
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        raise ValueError("'code' (string) is required")
    if str(body.get("language", "python")).lower() not in ("python", "python3"):
        raise ValueError("only language 'python' is supported")
    timeout = _number(body, "run_timeout")
    mem = _number(body, "memory_limit_MB")
    stdin = body.get("stdin")
    if stdin is not None and not isinstance(stdin, str):
        raise ValueError("stdin must be a string")
    files = body.get("files") or {}
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ValueError("files must be an object of path -> base64 string")
    fetch = body.get("fetch_files") or []
    if not isinstance(fetch, list) or not all(isinstance(f, str) for f in fetch):
        raise ValueError("fetch_files must be a list of paths")
    return {"code": body["code"], "timeout": min(timeout, MAX_TIMEOUT_S) if timeout else None,
            "stdin": stdin, "files": files, "fetch_files": fetch,
            "memory_mb": max(1, int(mem)) if mem else None}


def make_app(sandbox: Sandbox) -> web.Application:
    max_mb = sandbox.config.memory_mb

    async def run_code(request: web.Request) -> web.Response:
        try:
            raw = await asyncio.wait_for(request.read(), READ_TIMEOUT_S)
        except web.HTTPRequestEntityTooLarge:
            return _bad(f"body larger than {MAX_BODY} bytes", 413)
        except asyncio.TimeoutError:
            return _bad(f"body not received within {READ_TIMEOUT_S:g} s", 408)
        try:
            kw = parse_request(json.loads(raw))
        except (ValueError, UnicodeDecodeError) as e:
            return _bad(str(e) if not isinstance(e, json.JSONDecodeError) else "body must be JSON")
        if kw["memory_mb"]:
            kw["memory_mb"] = min(kw["memory_mb"], max_mb)
        try:
            res = await sandbox.arun(kw.pop("code"), **kw)
        except ValueError as e:
            return _bad(str(e))
        return web.json_response({**res.to_sandboxfusion(), "tirl": res.to_dict()})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "isolation": sandbox.isolation})

    @web.middleware
    async def read_guard(request: web.Request, handler):
        guard = _Guard.of(request.transport)
        if guard:
            guard.disarm()  # headers are in; the body has its own deadline
        try:
            return await handler(request)
        finally:
            if guard:
                guard.arm()  # next request's headers (or idle keep-alive) must come in time

    app = web.Application(client_max_size=MAX_BODY, middlewares=[read_guard])
    app.router.add_post("/run_code", run_code)
    app.router.add_get("/health", health)
    return app


class _Guard(asyncio.Protocol):
    """Wraps aiohttp's protocol: caps connections and drops one whose headers do not arrive in time."""

    by_transport: dict = {}  # id(transport) -> guard, for the middleware (all servers of this process)

    def __init__(self, inner, read_timeout: float, count: list[int]):
        self.inner, self.read_timeout, self.count = inner, read_timeout, count
        self.transport = None
        self.timer = None

    @classmethod
    def of(cls, transport):
        return cls.by_transport.get(id(transport))

    def connection_made(self, transport):
        self.transport = transport
        self.count[0] += 1
        _Guard.by_transport[id(transport)] = self
        self.inner.connection_made(transport)
        self.arm()

    def arm(self):
        self.disarm()
        self.timer = asyncio.get_running_loop().call_later(self.read_timeout, self._expired)

    def disarm(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self):
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data):
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self):
        self.inner.pause_writing()

    def resume_writing(self):
        self.inner.resume_writing()

    def connection_lost(self, exc):
        self.disarm()
        if self.transport is not None:
            self.count[0] -= 1
            _Guard.by_transport.pop(id(self.transport), None)
            self.transport = None
        self.inner.connection_lost(exc)


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport):
        transport.close()


async def start_server(app: web.Application, host: str, port: int, max_connections: int = MAX_CONNECTIONS,
                       read_timeout: float = READ_TIMEOUT_S):
    """Start serving ``app``; returns (runner, asyncio server). Close with ``server.close(); await runner.cleanup()``."""
    runner = web.AppRunner(app, keepalive_timeout=KEEPALIVE_S, access_log=None)
    await runner.setup()

    count = [0]

    def factory():
        if count[0] >= max_connections:
            return _Refuse()
        return _Guard(runner.server(), read_timeout, count)

    server = await asyncio.get_running_loop().create_server(factory, host, port)
    return runner, server


def serve(host: str = "127.0.0.1", port: int = 8080, config: SandboxConfig | None = None) -> None:
    """Run the server until interrupted (blocking)."""
    with Sandbox(config) as sb:
        print(f"tirl sandbox: isolation {sb.isolation['level']} (missing: {sorted(sb.isolation['missing'])}); "
              f"serving on http://{host}:{port}/run_code", flush=True)

        async def main():
            import signal

            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):  # a clean stop: cgroups and zygote go too
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
            runner, server = await start_server(make_app(sb), host, port)
            try:
                await stop.wait()
            finally:
                server.close()
                await runner.cleanup()

        asyncio.run(main())


class HttpSandbox:
    """Client with the same API as ``Sandbox``. ``url`` is the server root, e.g. http://127.0.0.1:8080."""

    def __init__(self, url: str, max_concurrency: int = 8, retries: int = 4, backoff_s: float = 0.2,
                 request_timeout_s: float | None = None, default_timeout_s: float = 10.0):
        self.url = url.rstrip("/")
        self.retries, self.backoff_s = retries, backoff_s
        self.request_timeout_s = request_timeout_s
        self.default_timeout_s = default_timeout_s
        self._bg = BackgroundLoop("tirl-http-sandbox")
        self._sem = asyncio.Semaphore(max_concurrency)

    async def _run(self, code: str, timeout: float | None, stdin: str | None = None, files: dict | None = None,
                   fetch_files: list[str] | None = None, memory_mb: int | None = None) -> ExecResult:
        import base64

        timeout = self.default_timeout_s if timeout is None else timeout
        body = {"code": code, "language": "python", "run_timeout": timeout}
        if stdin is not None:
            body["stdin"] = stdin
        if files:
            body["files"] = {k: v if isinstance(v, str) else base64.b64encode(v).decode() for k, v in files.items()}
        if fetch_files:
            body["fetch_files"] = list(fetch_files)
        if memory_mb:
            body["memory_limit_MB"] = memory_mb
        # The server enforces the run timeout; the HTTP deadline only guards against a hung server.
        http_timeout = self.request_timeout_s or timeout + 30
        async with self._sem:
            client = await self._bg.session()
            try:
                data = await request_json(client, "POST", f"{self.url}/run_code", body,
                                          timeout_s=http_timeout, retries=self.retries, backoff_s=self.backoff_s)
            except HTTPUnavailable as e:
                return ExecResult("sandbox_error", message=str(e))
        if isinstance(data.get("tirl"), dict):
            return ExecResult.from_dict(data["tirl"])
        return ExecResult.from_sandboxfusion(data)

    def run(self, code: str, timeout: float | None = None, **extras) -> ExecResult:
        return self._bg.call(self._run(code, timeout, **extras))

    def run_batch(self, codes: Sequence[str], timeout: float | None = None) -> list[ExecResult]:
        async def go():
            return list(await asyncio.gather(*(self._run(c, timeout) for c in codes)))

        return self._bg.call(go())

    async def arun(self, code: str, timeout: float | None = None, **extras) -> ExecResult:
        return await self._bg.wrap(self._run(code, timeout, **extras))

    @property
    def isolation(self) -> dict:
        """The server's isolation report (``{"level": "unknown"}`` from a server that has none)."""
        try:
            return self.health().get("isolation") or {"level": "unknown"}
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return {"level": "unknown"}

    def health(self) -> dict:
        async def go():
            client = await self._bg.session()
            async with client.get(f"{self.url}/health", timeout=aiohttp.ClientTimeout(total=10)) as resp:
                resp.raise_for_status()
                return await resp.json()

        return self._bg.call(go())

    def close(self) -> None:
        self._bg.close()

    def __enter__(self) -> HttpSandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
