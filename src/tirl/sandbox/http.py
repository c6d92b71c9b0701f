"""SandboxFusion-compatible HTTP server (``tirl sandbox serve``) and ``HttpSandbox``, its client.

Server: ``POST /run_code`` takes SandboxFusion's request (``code``, ``language``, ``run_timeout``,
``compile_timeout``, ``memory_limit_MB``, ``stdin``, ``files``, ``fetch_files``) and answers in its
response shape, plus a ``tirl`` key carrying the full ``ExecResult`` (exact status, signal, truncation).
verl/ToRL users can point their sandbox URL at it. ``GET /health`` reports the isolation level.

Client: same API as ``Sandbox`` (run / run_batch / arun), bounded concurrency, retries with
exponential back-off on connection errors and 5xx, a clear ``ValueError`` on 4xx (a bad request will
not get better by retrying). Also talks to a real SandboxFusion (parsed with ``from_sandboxfusion``).

Not covered: languages other than Python, ``stdin`` and ``files`` (rejected with 400, never ignored),
per-request memory limits above the server's configured limit (clamped), authentication (bind to
loopback or put it behind your own proxy).
"""
from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from tirl.http_client import BackgroundLoop, HTTPUnavailable, request_json

from .config import ExecResult, SandboxConfig
from .local import Sandbox

_MAX_TIMEOUT_S = 300.0


def make_app(sandbox: Sandbox) -> web.Application:
    async def run_code(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except Exception:
            return web.json_response({"status": "SandboxError", "message": "body must be JSON"}, status=400)
        if not isinstance(body, dict) or not isinstance(body.get("code"), str):
            return web.json_response({"status": "SandboxError", "message": "'code' (string) is required"}, status=400)
        if str(body.get("language", "python")).lower() not in ("python", "python3"):
            return web.json_response({"status": "SandboxError", "message": "only language 'python' is supported"},
                                     status=400)
        if body.get("stdin") or body.get("files") or body.get("fetch_files"):
            return web.json_response({"status": "SandboxError", "message": "stdin/files are not supported"},
                                     status=400)
        timeout = body.get("run_timeout")
        try:
            timeout = min(float(timeout), _MAX_TIMEOUT_S) if timeout is not None else None
        except (TypeError, ValueError):
            return web.json_response({"status": "SandboxError", "message": "run_timeout must be a number"}, status=400)
        res = await sandbox.arun(body["code"], timeout=timeout)
        return web.json_response({**res.to_sandboxfusion(), "tirl": res.to_dict()})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "isolation": sandbox.isolation})

    app = web.Application(client_max_size=16 << 20)
    app.router.add_post("/run_code", run_code)
    app.router.add_get("/health", health)
    return app


def serve(host: str = "127.0.0.1", port: int = 8080, config: SandboxConfig | None = None) -> None:
    """Run the server until interrupted (blocking)."""
    with Sandbox(config) as sb:
        print(f"tirl sandbox: isolation {sb.isolation['level']} (missing: {sorted(sb.isolation['missing'])}); "
              f"serving on http://{host}:{port}/run_code", flush=True)
        web.run_app(make_app(sb), host=host, port=port, print=None)


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

    async def _run(self, code: str, timeout: float | None) -> ExecResult:
        timeout = self.default_timeout_s if timeout is None else timeout
        body = {"code": code, "language": "python", "run_timeout": timeout}
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

    def run(self, code: str, timeout: float | None = None) -> ExecResult:
        return self._bg.call(self._run(code, timeout))

    def run_batch(self, codes: list[str], timeout: float | None = None) -> list[ExecResult]:
        async def go():
            return list(await asyncio.gather(*(self._run(c, timeout) for c in codes)))

        return self._bg.call(go())

    async def arun(self, code: str, timeout: float | None = None) -> ExecResult:
        return await self._bg.wrap(self._run(code, timeout))

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
