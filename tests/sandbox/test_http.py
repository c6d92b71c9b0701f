"""HTTP server + client against a real server on 127.0.0.1 (ephemeral port), plus failure handling."""
import asyncio
import threading

import aiohttp
import pytest
from aiohttp import web

from tirl.sandbox.http import HttpSandbox, make_app


class _Server:
    """Run an aiohttp app on 127.0.0.1:<ephemeral> in a background thread."""

    def __init__(self, app):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = web.AppRunner(app)

        async def start():
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            return site._server.sockets[0].getsockname()[1]

        self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result()
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def server(sb):
    s = _Server(make_app(sb))
    yield s
    s.close()


def test_client_same_api(server):
    with HttpSandbox(server.url) as client:
        assert client.health()["status"] == "ok"
        res = client.run("print(3 + 4)")
        assert res.status == "ok" and res.stdout == "7\n"
        assert client.run("while True: pass", timeout=0.5).status == "timeout"
        seg = client.run("import ctypes\nctypes.string_at(0)")
        assert seg.status == "killed" and seg.signal == "SIGSEGV"
        out = client.run_batch([f"print({i})" for i in range(30)])
        assert [r.stdout for r in out] == [f"{i}\n" for i in range(30)]

        async def go():
            return await asyncio.gather(*(client.arun(f"print({i} * 3)") for i in range(10)))

        assert [r.stdout for r in asyncio.run(go())] == [f"{i * 3}\n" for i in range(10)]


def test_sandboxfusion_request_and_response_shape(server):
    async def go():
        async with aiohttp.ClientSession() as s:
            body = {"code": "print('hi')", "language": "python", "compile_timeout": 10, "run_timeout": 5,
                    "memory_limit_MB": 512, "stdin": "", "files": {}, "fetch_files": []}
            async with s.post(f"{server.url}/run_code", json=body) as r:
                return r.status, await r.json()

    status, data = asyncio.run(go())
    assert status == 200 and data["status"] == "Success"
    assert data["run_result"]["status"] == "Finished" and data["run_result"]["stdout"] == "hi\n"
    assert data["run_result"]["return_code"] == 0 and "execution_time" in data["run_result"]


def test_bad_request_is_a_clear_error(server):
    with HttpSandbox(server.url) as client:
        async def go():
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{server.url}/run_code", json={"code": "1", "language": "cpp"}) as r:
                    return r.status

        assert asyncio.run(go()) == 400
        with pytest.raises(ValueError, match="400"):
            client.run(None, timeout=1)  # type: ignore[arg-type]  # code must be a string


@pytest.mark.parametrize("status", [503, 408])  # 408: the body came too late (a loaded server, a slow link)
def test_retries_on_5xx_and_408_then_succeeds(sb, status):
    calls = {"n": 0}

    async def flaky(request):
        calls["n"] += 1
        if calls["n"] <= 2:
            return web.Response(status=status, text="overloaded")
        res = await sb.arun((await request.json())["code"])
        return web.json_response({**res.to_sandboxfusion(), "tirl": res.to_dict()})

    app = web.Application()
    app.router.add_post("/run_code", flaky)
    s = _Server(app)
    try:
        with HttpSandbox(s.url, retries=3, backoff_s=0.01) as client:
            res = client.run("print('third time')")
        assert res.ok and res.stdout == "third time\n" and calls["n"] == 3
    finally:
        s.close()


def test_gives_up_with_sandbox_error_when_unreachable():
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with HttpSandbox(f"http://127.0.0.1:{port}", retries=2, backoff_s=0.01) as client:
        res = client.run("print(1)")
    assert res.status == "sandbox_error" and res.infra_failed and "3 attempts" in res.message


def test_server_always_failing_gives_sandbox_error():
    async def broken(request):
        return web.Response(status=500, text="boom")

    app = web.Application()
    app.router.add_post("/run_code", broken)
    s = _Server(app)
    try:
        with HttpSandbox(s.url, retries=1, backoff_s=0.01) as client:
            res = client.run("print(1)")
        assert res.status == "sandbox_error" and "500" in res.message
    finally:
        s.close()
