"""Round 2, API side: session control channel, unique uids, HTTP hardening, SandboxFusion extras,
OOM verdicts, and the cgroup v2 set-up against a fake cgroupfs that enforces the kernel's rules."""
import asyncio
import base64
import json
import os

import aiohttp
import pytest

from tirl.sandbox import ExecResult, Sandbox, SandboxConfig
from tirl.sandbox.cgroups import CgroupSlots
from tirl.sandbox.http import HttpSandbox, make_app, start_server
from tirl.sandbox.outcome import Observed, classify

from fake_cgroupfs import FakeCgroup2, kernel_rules_trace


# ---- session control channel ----------------------------------------------------------------------
FIND_CTL = ("import os, socket, stat\nctl = []\nfor f in os.listdir('/proc/self/fd'):\n    try:\n"
            "        if int(f) > 2 and stat.S_ISSOCK(os.fstat(int(f)).st_mode):\n            ctl.append(int(f))\n"
            "    except OSError:\n        pass\ns = socket.socket(fileno=ctl[0])\n")
# The command's status pipe: the one pipe beyond stdout and stderr open for writing.
FIND_STATUS = ("import os, stat\ndef w(fd):\n    try:\n        info = open(f'/proc/self/fdinfo/{fd}').read()\n"
               "        return stat.S_ISFIFO(os.fstat(fd).st_mode) and int(info.split('flags:')[1].split()[0], 8) & 3 == 1\n"
               "    except OSError:\n        return False\nst = [fd for fd in range(3, 256) if w(fd)][0]\n")


@pytest.mark.parametrize("forgery", [b"\xff\xfe", b'{"nonce": "x", "rc": 0, "end": false, "threads": 1}', b"1 2\n",
                                     b"0 0 0\n", b"x" * 200],
                         ids=["invalid_utf8", "json_reply", "bad_end", "extra_field", "long"])
def test_session_garbage_is_sandbox_error_never_an_exception(sb, forgery):
    with sb.session() as s:
        s.run("y = 1")
        res = s.run(FIND_STATUS + f"os.write(st, {forgery!r})\nimport time\ntime.sleep(0.2)")
        assert res.status == "sandbox_error" and res.session_lost, res
        after = s.run("print(40 + 2)")  # a fresh interpreter, replies in step again
        assert after.ok and after.stdout == "42\n" and not after.session_lost


def test_session_control_socket_is_one_way(sb):
    with sb.session() as s:
        s.run("y = 1")
        res = s.run(FIND_CTL + "s.send(b'0 0\\n')")
        assert res.status == "error" and "BrokenPipeError" in res.stderr and not res.session_lost, res
        assert s.run("print(y)").stdout == "1\n"


def test_session_background_thread_cannot_answer_for_the_next_command(sb):
    with sb.session() as s:
        res = s.run("import threading, time, sys\ndef later():\n    time.sleep(0.3)\n    print('FORGED')\n"
                    "threading.Thread(target=later, daemon=True).start()")
        assert res.session_lost and "threads" in res.message, res
        nxt = s.run("import time\ntime.sleep(0.6)\nprint('real')")
        assert nxt.ok and nxt.stdout == "real\n", nxt


def test_session_child_process_cannot_answer_later(sb):
    with sb.session() as s:
        s.run(FIND_CTL + "import time\nif os.fork() == 0:\n    time.sleep(0.3)\n"
              "    s.send(b'{\"nonce\": \"x\", \"rc\": 0, \"end\": false, \"threads\": 1}')\n    os._exit(0)")
        nxt = s.run("import time\ntime.sleep(0.6)\nprint('real')")
        assert nxt.ok and nxt.stdout == "real\n" and not nxt.session_lost, nxt


# ---- uids, verdicts ---------------------------------------------------------------------------------
def test_two_sandboxes_never_share_uids():
    if os.geteuid() != 0:
        pytest.skip("per-slot uids are the root path; unprivileged calls get user namespaces instead")
    cfg = SandboxConfig(preload=[], max_concurrency=1, max_sessions=0)
    with Sandbox(cfg) as a, Sandbox(cfg) as b:
        ua, ub = a.run("import os\nprint(os.getuid())"), b.run("import os\nprint(os.getuid())")
        assert ua.ok and ub.ok and ua.stdout != ub.stdout
        assert abs(a._sup.uid0 - b._sup.uid0) >= 256


def test_oom_verdict_depends_on_exit():
    assert classify(Observed(0, b"fine\n", oom_kills=1)).status == "ok"
    assert classify(Observed(-9, oom_kills=1)).status == "memory"
    assert classify(Observed(1, oom_kills=1)).status == "memory"
    assert classify(Observed(-24)).status == "timeout"  # SIGXCPU: one verdict for calls and sessions


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 0.0, "soon"])
def test_bad_timeout_is_value_error(sb, bad):
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError, match="timeout"):
        sb.run("print(1)", timeout=bad)
    assert len(os.listdir("/proc/self/fd")) == fds


def test_stdin_files_and_fetch_local(sb):
    res = sb.run("import sys\nprint(sys.stdin.readline().strip()[::-1])\nopen('out/r.bin', 'wb').write(open('a/b.bin', 'rb').read() * 2)",
                 stdin="olleh\n", files={"a/b.bin": b"\x00\x01"}, fetch_files=["out/r.bin", "missing"])
    assert not res.ok  # out/ does not exist: the program's own error
    res = sb.run("import os, sys\nprint(sys.stdin.read())\nos.makedirs('out')\nopen('out/r.bin', 'wb').write(open('a/b.bin', 'rb').read() * 2)",
                 stdin="hi", files={"a/b.bin": base64.b64encode(b"\x00\x01").decode()}, fetch_files=["out/r.bin"])
    assert res.ok and res.stdout == "hi\n" and base64.b64decode(res.files["out/r.bin"]) == b"\x00\x01" * 2
    with pytest.raises(ValueError, match="inside /tmp"):
        sb.run("1", files={"../etc/x": b""})
    with pytest.raises(ValueError, match="limit"):
        sb.run("1", files={"big": b"x" * ((sb.config.tmp_size_mb << 20) + 1)})


BAD_NAMES = {"dot": {".": b"x"}, "dot_slash": {"./": b"x"}, "up_again": {"a/..": b"x"}, "long": {"x" * 256: b"x"},
             "file_then_dir": {"a": b"", "a/b": b""}, "dir_then_file": {"a/b": b"", "a": b""}}


@pytest.mark.parametrize("files", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_a_bad_input_file_name_is_the_callers_error_never_sandbox_error(sb, files):
    """Set-up cannot write such a file: that was ``sandbox_error``, which a caller retries in vain."""
    with pytest.raises(ValueError, match="input file name"):
        sb.run("print(1)", files=files)


# ---- cgroup v2 against a fake tree ----------------------------------------------------------------
def test_cgroup_v2_supervisor_moves_to_a_leaf_first():
    fs = FakeCgroup2()
    slots = CgroupSlots._create_v2(fs, "tirl-sandbox-1-x", 3)
    assert slots is not None and slots.version == "v2" and slots.has_cpu
    base = slots.bases[""]
    assert os.getpid() in fs.nodes[base + "/supervisor"]["procs"]  # we left our former cgroup
    assert not fs.nodes[fs.own]["procs"] and {"memory", "pids", "cpu"} <= fs.nodes[fs.own]["sub"]
    for i in range(3):
        assert {"memory", "pids", "cpu"} <= fs.avail(f"{base}/s{i}")
        slots.set_limits(i, 256 << 20, 64)
    slots.close()
    assert not any(p.startswith(base + "/s") and p != base + "/supervisor" for p in fs.nodes)


def test_cgroup_v2_other_processes_in_our_cgroup_are_reported():
    fs = FakeCgroup2(others=2)  # e.g. the shell that started us, in the same systemd scope
    slots, why = CgroupSlots.create(2, 256 << 20, 64, fs=fs)
    assert slots is None and "holds other processes" in why and "Delegate=yes" in why


def test_cgroup_v2_without_delegated_controllers():
    slots, why = CgroupSlots.create(2, 256 << 20, 64, fs=FakeCgroup2(avail=("cpu",)))
    assert slots is None and "not delegated" in why


# ---- HTTP ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(sb):
    import threading

    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    runner, srv = asyncio.run_coroutine_threadsafe(
        start_server(make_app(sb), "127.0.0.1", 0, max_connections=8, read_timeout=1.0), loop).result()
    yield f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", srv.sockets[0].getsockname()[1]

    async def stop():
        srv.close()
        await runner.cleanup()

    asyncio.run_coroutine_threadsafe(stop(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)
    loop.close()


def sb_has_cgroup(server):
    with HttpSandbox(server[0]) as client:
        return client.isolation.get("cgroup") is not None


def _post(url, body, raw=None):
    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{url}/run_code", data=raw if raw is not None else json.dumps(body),
                              headers={"Content-Type": "application/json"}) as r:
                return r.status, await r.text()

    return asyncio.run(go())


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e309", "-1", '"nan"', "0"])
def test_http_bad_timeout_is_400_and_leaks_nothing(server, value):
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        status, _ = _post(server[0], None, raw='{"code": "print(1)", "run_timeout": %s}' % value)
        assert status == 400
    assert len(os.listdir("/proc/self/fd")) <= fds + 2


def test_http_huge_body_is_413(server):
    status, _ = _post(server[0], None, raw='{"code": "' + "x" * (65 << 20) + '"}')
    assert status == 413


def test_http_slow_headers_are_dropped_and_connections_capped(server):
    import socket
    import time

    socks = []
    for _ in range(12):  # more than the cap, each sending half a request line
        c = socket.create_connection(("127.0.0.1", server[1]))
        c.sendall(b"POST /run_code HTTP/1.1\r\nHost: x\r\n")
        socks.append(c)
    time.sleep(1.2)  # past the read deadline (1 s): the server hangs up on every one of them
    try:
        for c in socks:
            c.settimeout(30)  # only guards against a hang; the close comes right after the deadline
            try:
                assert c.recv(100) == b""  # an orderly close
            except ConnectionResetError:
                pass  # or a reset: the unread half request makes the kernel answer the close with RST
    finally:
        for c in socks:
            c.close()
    assert _post(server[0], {"code": "print(5)"})[0] == 200  # and still serves


def test_http_bad_input_file_name_is_400(server):
    status, text = _post(server[0], {"code": "print(1)", "files": {".": base64.b64encode(b"x").decode()}})
    assert status == 400 and "input file name" in text, text


def test_http_sandboxfusion_stdin_files_memory(server):
    body = {"code": "import sys\nd = open('in.txt').read()\nopen('o.txt', 'w').write(d.upper())\nprint(sys.stdin.read())",
            "language": "python", "run_timeout": 5, "stdin": "from stdin",
            "files": {"in.txt": base64.b64encode(b"abc").decode()}, "fetch_files": ["o.txt"], "memory_limit_MB": 128}
    status, text = _post(server[0], body)
    data = json.loads(text)
    assert status == 200 and data["status"] == "Success", data
    assert data["run_result"]["stdout"] == "from stdin\n" and base64.b64decode(data["files"]["o.txt"]) == b"ABC"
    # 128 MB honoured: 200 MB does not fit in the cgroup, although the server's own limit (256 MB) would
    # allow it. Without a cgroup the backup is RLIMIT_AS = limit + 256 MB of address space (interpreter).
    mb = 200 if sb_has_cgroup(server) else 450
    status, text = _post(server[0], {"code": f"b = bytearray({mb} << 20)\nb[::4096] = b'x' * len(b[::4096])",
                                     "memory_limit_MB": 128, "run_timeout": 10})
    assert json.loads(text)["tirl"]["status"] == "memory"
    with HttpSandbox(server[0]) as client:
        res = client.run("print(input())", stdin="via client\n")
        assert isinstance(res, ExecResult) and res.stdout == "via client\n"


def test_fake_cgroupfs_rules_match_the_kernel():
    """The fake tree's rules, replayed on a real cgroup2 mount in a private mount namespace."""
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to mount cgroup2 in a private mount namespace")
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, os.path.join(here, "fake_cgroupfs.py")],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount cgroup2 here: {proc.stderr.strip()[-300:]}")
    real = json.loads(proc.stdout)
    if "skip" in real:
        pytest.skip(real["skip"])
    fake = FakeCgroup2(own="/", avail=(real["ctrl"],))
    assert kernel_rules_trace(fake, fake.root, real["ctrl"], 4242) == real["trace"]
