"""`tirl sandbox serve` stays up for real clients whatever other clients do: idle connections past the
cap, clients that never read their response, big bodies queued behind a busy sandbox, requests
without the token, names the sandbox cannot create. A real server on 127.0.0.1 in a thread, with
small limits so each case takes seconds."""
import asyncio
import base64
import json
import socket
import threading
import time

import aiohttp
import pytest

from tirl.sandbox.http import BackgroundServer, HttpSandbox, ServeLimits

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = ServeLimits(max_connections=8, read_timeout_s=4.0, write_timeout_s=1.0, max_body_mb=32, max_requests=1)


@pytest.fixture(scope="module")
def server(sb):
    # The server `tirl sandbox serve` and the Ray actors run (make_app behind start_server).
    with BackgroundServer(sb, "127.0.0.1", 0, LIMITS, token=TOKEN) as srv:
        yield srv.url, srv.port


def _post(url, body, headers=AUTH, timeout=20.0, path="/run_code"):
    """(status, decoded JSON) of one request on a fresh connection, no retries."""
    async def go():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.post(url + path, json=body, headers=headers) as r:
                return r.status, await r.json(content_type=None)

    return asyncio.run(go())


def _request_head(port, length, extra=b""):
    return (b"POST /run_code HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: %d\r\n\r\n" % length + extra)


def test_token_is_needed_and_sent_by_the_client(server, monkeypatch):
    url = server[0]
    assert _post(url, {"code": "print(1)"}, headers={})[0] == 401
    assert _post(url, {"code": "print(1)"}, headers={"Authorization": "Bearer wrong"})[0] == 401
    status, data = _post(url, {"code": "print(1)"})
    assert status == 200 and data["run_result"]["stdout"] == "1\n"
    monkeypatch.delenv("TIRL_SANDBOX_TOKEN", raising=False)
    with HttpSandbox(url, retries=0) as client:
        with pytest.raises(ValueError, match="401"):
            client.run("print(1)")
    with HttpSandbox(url, token=TOKEN) as client:
        assert client.run("print(2)").stdout == "2\n" and client.health()["status"] == "ok"
    monkeypatch.setenv("TIRL_SANDBOX_TOKEN", TOKEN)
    with HttpSandbox(url) as client:
        assert client.run("print(3)").stdout == "3\n"


def test_idle_connections_past_the_cap_do_not_lock_clients_out(server):
    url, port = server
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(LIMITS.max_connections + 4)]
    try:
        time.sleep(0.2)
        # Served well before the idle ones' header deadline (4 s) would have freed anything.
        status, data = _post(url, {"code": "print('in')"}, timeout=3.0)
        assert status == 200 and data["run_result"]["stdout"] == "in\n"
        idle[0].settimeout(5)
        try:
            assert idle[0].recv(1) == b""  # the one idle longest made room
        except ConnectionResetError:
            pass
    finally:
        for c in idle:
            c.close()


def _read_all(sock):
    got = b""
    sock.settimeout(5)
    try:
        while chunk := sock.recv(1 << 20):
            got += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    return got


def test_clients_that_do_not_read_are_cut_off(server):
    url, port = server
    code = "open('big', 'wb').write(b'x' * (10 << 20))"  # a 27 MB response, far over the socket buffers
    body = json.dumps({"code": code, "fetch_files": ["big"], "run_timeout": 10}).encode()
    readers = []
    for _ in range(2):
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
        c.connect(("127.0.0.1", port))
        c.sendall(_request_head(port, len(body), body))
        readers.append(c)
    try:
        time.sleep(2 * (LIMITS.write_timeout_s + 1.0))  # each gets its turn, runs, and its write deadline passes
        status, data = _post(url, {"code": "print('next')"}, timeout=10.0)  # the turn is free again
        assert status == 200 and data["run_result"]["stdout"] == "next\n"
        for c in readers:
            got = _read_all(c)
            head, _, rest = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head[:100]
            length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
            assert len(rest) < length  # the server gave up on it: its buffer is gone
    finally:
        for c in readers:
            c.close()


def test_queued_bodies_are_not_read_until_their_turn(server):
    url, port = server
    blocker = threading.Thread(target=_post, args=(url, {"code": "import time\ntime.sleep(60)", "run_timeout": 5}))
    blocker.start()  # holds the only turn until its timeout
    time.sleep(0.5)
    size = 24 << 20
    queued, taken = [], []
    try:
        for _ in range(3):
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
            c.connect(("127.0.0.1", port))
            c.sendall(_request_head(port, size, b'{"code": "#'))
            c.setblocking(False)
            queued.append(c)
        chunk, sent = b"x" * (1 << 16), [0] * len(queued)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            for i, c in enumerate(queued):
                try:
                    sent[i] += c.send(chunk[:size - sent[i]]) if sent[i] < size else 0
                except BlockingIOError:
                    pass
            time.sleep(0.001)
        taken = sent
    finally:
        for c in queued:
            c.close()
        blocker.join(30)
    # Only socket buffers and aiohttp's read-ahead took anything: no body was read into memory.
    assert max(taken) < 4 << 20, taken


def test_a_declared_oversize_body_is_refused_before_it_is_sent(server):
    c = socket.create_connection(("127.0.0.1", server[1]))
    try:
        c.sendall(_request_head(server[1], 100 << 20))
        c.settimeout(3)
        assert c.recv(100).startswith(b"HTTP/1.1 413")
    finally:
        c.close()


@pytest.mark.parametrize("files", [{".": "eA=="}, {"a" * 300: "eA=="}, {"d": "eA==", "d/x": "eA=="},
                                   {"x": "not base64!"}])
def test_the_callers_mistakes_are_4xx_never_sandbox_errors(server, files):
    status, data = _post(server[0], {"code": "print(1)", "files": files})
    assert status == 400 and "SandboxError" not in json.dumps(data), data
    assert data["message"] == data["detail"] != ""
    status, data = _post(server[0], {"code": "print(1)", "run_timeout": "NaN"})
    assert status == 400 and data.get("status") != "SandboxError" and "run_timeout" in data["detail"]


def test_fetch_and_stdin_still_work_with_the_limits(server):
    body = {"code": "import sys\nopen('o', 'w').write(sys.stdin.read().upper())", "stdin": "abc",
            "files": {"i": base64.b64encode(b"1").decode()}, "fetch_files": ["o"]}
    status, data = _post(server[0], body)
    assert status == 200 and base64.b64decode(data["files"]["o"]) == b"ABC"


def test_a_body_of_millions_of_tiny_json_items_is_refused_unparsed(server):
    # json.loads of it would hold the GIL, and with it the sandbox's own thread, for seconds
    status, data = _post(server[0], {"code": "print(1)", "files": {str(i): "" for i in range(300_000)}})
    assert status == 413 and "JSON items" in data["message"]


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="write_timeout_s"):
        ServeLimits(write_timeout_s=0)


def test_the_ray_actors_server_has_the_same_limits():
    """`sandbox: actors` serves through the same server: at its cap an idle connection makes room."""
    from tirl.distributed.ray_backend import SandboxServer
    from tirl.sandbox import SandboxConfig

    limits = ServeLimits(max_connections=2, read_timeout_s=30.0)
    actor = SandboxServer(SandboxConfig(preload=[], max_concurrency=1, max_sessions=0), TOKEN, "127.0.0.1", limits)
    idle = []
    try:
        port = int(actor.url().rsplit(":", 1)[1])
        idle += [socket.create_connection(("127.0.0.1", port)) for _ in range(limits.max_connections)]
        time.sleep(0.2)
        status, data = _post(actor.url(), {"code": "print('in')"}, timeout=10.0)
        assert status == 200 and data["run_result"]["stdout"] == "in\n"
        idle[0].settimeout(5)
        try:
            assert idle[0].recv(1) == b""  # dropped for the real client, long before its 30 s deadline
        except ConnectionResetError:
            pass
        assert _post(actor.url(), {"code": "1"}, headers={})[0] == 401
    finally:
        for c in idle:
            c.close()
        actor.close()
