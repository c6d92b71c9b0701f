"""SandboxFusion-compatible HTTP server (``tirl sandbox serve``) and ``HttpSandbox``, its client.

Server: ``POST /run_code`` takes SandboxFusion's request (``code``, ``language``, ``run_timeout``,
``compile_timeout``, ``memory_limit_MB``, ``stdin``, ``files`` {path: base64}, ``fetch_files``
[paths]) and answers in its response shape (``files`` {path: base64}), plus a ``tirl`` key carrying
the full ``ExecResult``. verl/ToRL users can point their sandbox URL at it. ``GET /health`` reports
the isolation level. The caller's mistakes are 4xx with ``{"detail", "message"}`` (FastAPI's shape,
which SandboxFusion answers with), never a ``SandboxError``: 400 for bad values (a non-finite
``run_timeout``, a file name the sandbox cannot create...), 401 without the token, 408 for a body
that does not arrive in time, 413 for a body over ``max_body_mb`` (refused before it is sent when
its length is declared).

What a client can hold (``ServeLimits``): a request's body is read only when its turn comes (at most
``max_requests`` at once, by default one per sandbox slot), and its turn lasts until the response is
written, which must happen within ``write_timeout_s`` (then the connection is aborted and the buffer
freed); waiting requests hold only their headers. So the server's memory is bounded by the turns
whatever the queue. Connections are capped in ``http_conns``. With ``token`` (``--token``,
``TIRL_SANDBOX_TOKEN``) every request needs ``Authorization: Bearer <token>``; a server bound to an
address other machines reach refuses to start without one.

Client: same API as ``Sandbox`` (run / run_batch / arun), bounded concurrency, retries with
exponential back-off on connection errors and 5xx, a clear ``ValueError`` on 4xx; sends the token
given, or ``TIRL_SANDBOX_TOKEN``'s.
Not covered: languages other than Python, ``memory_limit_MB`` above the server's configured limit
(clamped), TLS (put a proxy in front when the network between client and server is not trusted).
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import math
import os
import threading
from dataclasses import dataclass
from typing import Sequence

import aiohttp
from aiohttp import web

from tirl.http_client import BackgroundLoop, HTTPUnavailable, request_json

from .config import ExecResult, SandboxConfig
from .http_conns import mark_serving, start_server
from .local import Sandbox

MAX_TIMEOUT_S = 300.0
TOKEN_ENV = "TIRL_SANDBOX_TOKEN"
MAX_JSON_ITEMS = 1 << 18  # commas and colons in a body: json.loads keeps the GIL, so millions stalled the sandbox too

__all__ = ["BackgroundServer", "HttpSandbox", "ServeLimits", "check_exposure", "make_app", "parse_request", "serve",
           "start_server"]


@dataclass
class ServeLimits:
    """What the clients of one server may hold of it: connections, time, memory."""

    max_connections: int = 256
    """Open connections; at the cap the one idle longest is dropped to let a new one in."""
    read_timeout_s: float = 10.0
    """A request's headers (from the connection's opening or its previous response), and its body once
    its turn has come, must arrive within this."""
    write_timeout_s: float = 30.0
    """A response must be taken by the client within this, or its connection is aborted."""
    max_body_mb: int = 64
    """Largest request body: input files up to the sandbox's 64 MB /tmp, base64, need about this."""
    max_requests: int = 0
    """Requests read, run and answered at once; 0 = the sandbox's slots (a body is read when one is free)."""

    def __post_init__(self):
        for name in ("max_connections", "read_timeout_s", "write_timeout_s", "max_body_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be above 0, not {getattr(self, name)!r}")
        if self.max_requests < 0:
            raise ValueError(f"max_requests must be 0 (one per sandbox slot) or more, not {self.max_requests!r}")


class _ClientError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _client_error(e: _ClientError) -> web.Response:
    resp = web.json_response({"detail": str(e), "message": str(e)}, status=e.status)
    resp.force_close()  # its body may be unread; a new connection is cheap
    return resp


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


async def _read_request(request: web.Request, limits: ServeLimits) -> dict:
    """The body, read now (the request's turn has come) and in time, parsed into ``arun``'s arguments."""
    try:
        raw = await asyncio.wait_for(request.read(), limits.read_timeout_s)
    except web.HTTPRequestEntityTooLarge:
        raise _ClientError(413, f"body larger than {limits.max_body_mb} MB (max_body_mb)") from None
    except asyncio.TimeoutError:
        raise _ClientError(408, f"body not received within {limits.read_timeout_s:g} s") from None
    except ConnectionError:
        raise _ClientError(400, "the connection was lost before the body arrived") from None  # nobody to tell
    if raw.count(b",") + raw.count(b":") > MAX_JSON_ITEMS:
        raise _ClientError(413, f"body holds over {MAX_JSON_ITEMS} JSON items")
    try:
        return parse_request(json.loads(raw))
    except json.JSONDecodeError:
        raise _ClientError(400, "body must be JSON") from None
    except (ValueError, RecursionError) as e:
        raise _ClientError(400, str(e)) from None


async def _send(request: web.Request, resp: web.StreamResponse, timeout: float) -> web.StreamResponse:
    """Write ``resp`` while the request still holds its turn, within ``timeout``: aiohttp's own write
    waits as long as the client does not read, holding the whole response (6 such clients held 42 MB
    each for 25 s and more)."""
    async def write():
        await resp.prepare(request)
        await resp.write_eof()

    try:
        await asyncio.wait_for(write(), timeout)
    except asyncio.TimeoutError:
        if request.transport is not None:
            request.transport.abort()
    return resp


def _authorize(token: str):
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def authorize(request: web.Request, handler):
        given = request.headers.get("Authorization", "").encode(errors="replace")  # any header: a mismatch, not a 500
        if not hmac.compare_digest(given, expected):
            resp = _client_error(_ClientError(401, "this server needs its token: Authorization: Bearer <token>"))
            resp.headers["WWW-Authenticate"] = "Bearer"
            return resp
        return await handler(request)

    return authorize


def make_app(sandbox: Sandbox, limits: ServeLimits | None = None, token: str | None = None) -> web.Application:
    limits = limits or ServeLimits()
    max_mb, max_body = sandbox.config.memory_mb, limits.max_body_mb << 20
    turns = asyncio.Semaphore(limits.max_requests or sandbox.isolation.get("max_concurrency") or os.cpu_count() or 1)

    async def run_code(request: web.Request) -> web.StreamResponse:
        try:
            if (request.content_length or 0) > max_body:  # refused before the client sends it
                raise _ClientError(413, f"body of {request.content_length} bytes, over {limits.max_body_mb} MB "
                                        "(max_body_mb)")
            async with turns:
                kw = await _read_request(request, limits)
                if kw["memory_mb"]:
                    kw["memory_mb"] = min(kw["memory_mb"], max_mb)
                try:
                    res = await sandbox.arun(kw.pop("code"), **kw)
                except ValueError as e:
                    raise _ClientError(400, str(e)) from None
                resp = web.json_response({**res.to_sandboxfusion(), "tirl": res.to_dict()})
                return await _send(request, resp, limits.write_timeout_s)
        except _ClientError as e:
            return _client_error(e)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "isolation": sandbox.isolation})

    middlewares = [mark_serving] + ([_authorize(token)] if token else [])
    app = web.Application(client_max_size=max_body, middlewares=middlewares)
    app.router.add_post("/run_code", run_code)
    app.router.add_get("/health", health)
    return app


def check_exposure(host: str, token: str | None) -> None:
    """A server other machines can reach must have a token: ValueError (one line) otherwise."""
    if token or host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass  # a host name: it may resolve to anything
    raise ValueError(f"--host {host} can be reached from other machines and this server runs any code sent to "
                     f"it: give a token (--token or {TOKEN_ENV}), or bind 127.0.0.1")


def serve(host: str = "127.0.0.1", port: int = 8080, config: SandboxConfig | None = None,
          limits: ServeLimits | None = None, token: str | None = None) -> None:
    """Run the server until SIGINT or SIGTERM (blocking). ValueError before anything starts when ``host``
    is not loopback and there is no ``token``."""
    import signal

    check_exposure(host, token)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # a clean stop: cgroups and zygote go too
        signal.signal(sig, lambda *_: stop.set())
    with Sandbox(config) as sb, BackgroundServer(sb, host, port, limits, token):
        print(f"tirl sandbox: isolation {sb.isolation['level']} (missing: {sorted(sb.isolation['missing'])}); "
              f"serving on http://{host}:{port}/run_code{' (token required)' if token else ''}", flush=True)
        while not stop.wait(1.0):
            pass


class BackgroundServer:
    """``tirl sandbox serve``'s server (``make_app`` behind ``start_server``: the same connection cap,
    deadlines, turns and body limits) for ``sandbox``, on an event loop in a thread of its own: for a
    process whose main thread does other work (a Ray actor). ``url`` is its root; port 0 = any free one."""

    def __init__(self, sandbox: Sandbox, host: str = "127.0.0.1", port: int = 0, limits: ServeLimits | None = None,
                 token: str | None = None):
        check_exposure(host, token)
        limits = limits or ServeLimits()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tirl-sandbox-serve", daemon=True)
        self._thread.start()
        try:
            self._runner, self._server = asyncio.run_coroutine_threadsafe(start_server(
                make_app(sandbox, limits, token), host, port, limits.max_connections, limits.read_timeout_s),
                self._loop).result(60)
        except BaseException:
            self._stop_loop()
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def close(self) -> None:
        if self._loop.is_closed():
            return

        async def stop():
            self._server.close()
            await self._runner.cleanup()
            pending = asyncio.all_tasks() - {asyncio.current_task()}
            for task in pending:
                task.cancel()  # aiohttp lingers up to 10 s reading the unread body of a request answered 413
            # let them finish cancelling, so their connections close now and not when the loop is collected
            if pending:
                await asyncio.wait(pending, timeout=5)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(60)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class HttpSandbox:
    """Client with the same API as ``Sandbox``. ``url`` is the server root, e.g. http://127.0.0.1:8080;
    ``token`` (default: ``TIRL_SANDBOX_TOKEN``) is sent as ``Authorization: Bearer``."""

    def __init__(self, url: str, max_concurrency: int = 8, retries: int = 4, backoff_s: float = 0.2,
                 request_timeout_s: float | None = None, default_timeout_s: float = 10.0, token: str | None = None):
        self.url = url.rstrip("/")
        self.retries, self.backoff_s = retries, backoff_s
        self.request_timeout_s = request_timeout_s
        self.default_timeout_s = default_timeout_s
        token = token or os.environ.get(TOKEN_ENV)  # the one setting every caller (eval, convert, pools) shares
        self._bg = BackgroundLoop("tirl-http-sandbox", {"Authorization": f"Bearer {token}"} if token else None)
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
