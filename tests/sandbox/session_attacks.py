"""Session attacks (issue 27), run by ``attack_cases.run_all`` beside the one-shot cases, so they run as
this process's user and, through ``setpriv``, as a throwaway unprivileged uid.

Each case is a function ``case(sb) -> (result, verdict)``: it drives a session of ``sb`` (or of a
small sandbox of its own when it needs other session settings) and returns what it saw and "" when
the sandbox held, else why not. The judges never read the session's own account of itself: only
results and the host's /proc.
"""
from __future__ import annotations

import time

from tirl.sandbox import Sandbox, SandboxConfig
from tirl.sandbox.hostview import descendants

# Finds the session's control socket and nonce wherever the runner keeps them (its frames, its
# descriptors), claims success for the running command on every channel it can write, then stays
# in the runner's place: it takes the next command's request and answers it with its own output.
FRAME_WALK = r'''
import json, os, socket, stat, sys
frames = []
for top in [sys._getframe()] + list(sys._current_frames().values()):
    while top is not None:
        frames.append(top)
        top = top.f_back
socks, nonce = [], None
for f in frames:
    for k, v in list(f.f_locals.items()):
        v = getattr(v, "__self__", v)
        if isinstance(v, socket.socket):
            socks.append(v)
        if k == "nonce" and isinstance(v, str):
            nonce = v
for fd in range(3, 256):
    try:
        if stat.S_ISSOCK(os.fstat(fd).st_mode):
            socks.append(socket.socket(fileno=os.dup(fd)))
    except OSError:
        pass
def reply(n):
    return json.dumps({"nonce": n, "rc": 0, "end": False, "threads": 1}).encode()
def writable_pipes(fds):
    for fd in fds:
        try:
            flags = int(open(f"/proc/self/fdinfo/{fd}").read().split("flags:")[1].split()[0], 8)
            if stat.S_ISFIFO(os.fstat(fd).st_mode) and flags & 3 == 1:
                yield fd
        except (OSError, IndexError, ValueError):
            pass
def claim_ok(fds):
    for fd in writable_pipes(fds):
        try:
            os.write(fd, b"0 0\n")
        except OSError:
            pass
for s in socks:  # one claim only: a second one would stand in the queue for the next command
    try:
        s.send(reply(nonce))
        break
    except OSError:
        pass
claim_ok(range(3, 256))
for s in socks:
    try:
        msg, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
    except OSError:
        continue
    fds = [int.from_bytes(d[i:i + 4], sys.byteorder) for _, _, d in anc for i in range(0, len(d), 4)]
    try:
        req = json.loads(msg)
    except ValueError:
        req = {}
    os.write(fds[1], b"FORGED\n")
    try:
        s.send(reply(req.get("nonce") if isinstance(req, dict) else None))
    except OSError:
        pass
    claim_ok(fds[3:])  # past code, stdout and stderr: a status channel, if the request has one
    break
import time
time.sleep(30)
'''

# The runner's own clean-up is blinded (it ran in the user's interpreter): kill does nothing and the
# thread count reads one.
BLIND = ("import os\nos.kill = lambda *a, **k: None\n_ld = os.listdir\n"
         "os.listdir = lambda p='.': ['1'] if 'task' in str(p) else _ld(p)\n")
DAEMON_WRITER = BLIND + ("import threading, time\ndef later():\n    time.sleep(0.3)\n    os.write(1, b'FORGED\\n')\n"
                         "threading.Thread(target=later, daemon=True).start()\n")
# Twenty busy children, and one made with CLONE_PARENT: the zygote's child, not the interpreter's.
BUSY_CHILDREN = BLIND + ("for i in range(20):\n    if os.fork() == 0:\n        try:\n            os.setsid()\n"
                         "        except OSError:\n            pass\n        while True:\n            pass\n"
                         "import ctypes\nnr = {'x86_64': 56, 'aarch64': 220}.get(os.uname().machine)\n"
                         "if nr and ctypes.CDLL(None).syscall(nr, 0x8000 | 17, 0, 0, 0, 0) == 0:\n"
                         "    while True:\n        pass\nprint('spawned')\n")
CPU_HOG = ("import os, time\nfor i in range(2):\n    if os.fork() == 0:\n        while True:\n            pass\n"
           "time.sleep(1.0)\n")
REAL = "import time\ntime.sleep(0.8)\nprint('real')"


def _r(res) -> dict:
    return {k: getattr(res, k, None) for k in ("status", "stdout", "stderr", "message", "session_lost", "cpu_s")}


def _live(pid: int) -> int:
    """Processes below ``pid`` that can still run (zombies left out)."""
    n = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                n += fh.read().rsplit(")", 1)[1].split()[0] not in "ZX"
        except OSError:
            pass
    return n


def _zombies(pid: int) -> int:
    """Processes below ``pid`` that exited and nobody reaped."""
    return len(descendants(pid)) - _live(pid)


def _small(**session) -> Sandbox:
    return Sandbox(SandboxConfig(timeout_s=5, memory_mb=256, preload=[], max_concurrency=1, max_sessions=1,
                                 **session))


def reply_forged_by_frame_walk(sb):
    with sb.session() as s:
        s.run("x = 1")
        first = s.run(FRAME_WALK, timeout=3)
        second = s.run(REAL, timeout=5)
    res = {"first": _r(first), "second": _r(second)}
    ok = second.status == "ok" and second.stdout == "real\n"
    return res, "" if ok else "command 2 answered by command 1's code"


def daemon_thread_writes_next_output(sb):
    with sb.session() as s:
        first = s.run(DAEMON_WRITER, timeout=3)
        second = s.run(REAL, timeout=5)
    res = {"first": _r(first), "second": _r(second)}
    ok = second.status == "ok" and second.stdout == "real\n"
    return res, "" if ok else "a thread of command 1 wrote into command 2's output"


def busy_children_outlive_command(sb):
    zyg = sb._sup._proc.pid
    with sb.session() as s:
        s.run("x = 7")
        base = _live(zyg)  # the session's own processes, nothing of a command
        first = s.run(BUSY_CHILDREN, timeout=5)
        time.sleep(0.5)
        left = _live(zyg) - base
        second = s.run("print(x)", timeout=5)
    res = {"first": _r(first), "second": _r(second), "left": left}
    if left > 0:
        return res, f"{left} processes of command 1 still run after it returned"
    ok = first.status == "ok" and not first.session_lost and second.stdout == "7\n"
    return res, "" if ok else "the state was lost for children the sandbox could kill itself"


def idle_session_is_closed():
    with _small(session_idle_s=1.0) as box:
        zyg = box._sup._proc.pid
        box.run("pass")  # the zygote's spare PID-namespace init exists from the first call on
        idle = _live(zyg)
        s = box.session()
        first = s.run("x = 1")
        t0, busy = time.monotonic(), _live(zyg)
        time.sleep(1.5)
        while (left := _live(zyg)) > idle and time.monotonic() < t0 + 6:  # a loaded machine is slow
            time.sleep(0.1)
        gone_s = round(time.monotonic() - t0, 2)
        after = s.run("print(x)")
        s.close()
    res = {"first": _r(first), "after": _r(after), "idle": idle, "busy": busy, "left": left, "gone_s": gone_s}
    ok = busy > idle and left <= idle and after.status != "ok" and after.session_lost
    return res, "" if ok else f"an idle session outlived its deadline: {res}"


def session_cpu_is_bounded():
    """Commands whose children spin; on a loaded machine they get less CPU, so up to 20 commands."""
    with _small(session_cpu_s=2.0) as box:
        s = box.session()
        seen = []
        for _ in range(20):
            r = s.run(CPU_HOG, timeout=5)
            seen.append(_r(r))
            if r.session_lost:
                break
        s.close()
    last = seen[-1]
    ok = last["status"] == "timeout" and last["session_lost"] and "CPU" in last["message"]
    return {"results": seen}, "" if ok else f"{len(seen)} commands of busy children and no CPU bound"


FORK_EXIT = "import os\nif os.fork() == 0:\n    os._exit(0)\n"  # a child nobody waits for
ORPHAN_EXIT = ("import os\npid = os.fork()\nif pid == 0:\n    if os.fork() == 0:\n        os._exit(0)\n"
               "    os._exit(0)\nos.waitpid(pid, 0)\n")  # a grandchild orphaned before it exits


def exited_children_are_reaped(sb):
    """200 commands whose children and orphaned grandchildren exit unwaited: zombies under the session's
    PID-namespace init held one of its pids each, until the session could fork no more."""
    with sb.session() as s:
        for i in range(200):
            r = s.run(ORPHAN_EXIT if i % 2 else FORK_EXIT, timeout=5)
            if not r.ok:
                return {"command": i, "result": _r(r)}, f"command {i} failed: {r.status} {r.stderr[-200:]!r}"
        last = s.run("import os\npid = os.fork()\nif pid == 0:\n    os._exit(7)\n"
                     "print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))", timeout=5)
        zombies = _zombies(sb._sup.zygote_pid())
    res = {"last": _r(last), "zombies": zombies}
    ok = last.ok and last.stdout == "7\n" and zombies <= 2  # the last command's own may wait for the next
    return res, "" if ok else f"exited processes pile up unreaped: {res}"


def ordinary_use(sb):
    """Not an attack: what a session is for still works."""
    with sb.session() as s:
        steps = [
            ("import decimal, numpy as np\ndecimal.getcontext().prec = 50\nx = 21", "ok", ""),
            ("print(x * 2, decimal.getcontext().prec, int(np.arange(4).sum()))", "ok", "42 50 6\n"),
            ("1 / 0", "error", ""),
            ("print(x)", "ok", "21\n"),
            ("import threading\nt = threading.Thread(target=lambda: print('t'))\nt.start()\nt.join()", "ok", "t\n"),
            ("import multiprocessing as mp\nwith mp.Pool(2) as p:\n    print(p.map(abs, [-1, -2]))", "ok", "[1, 2]\n"),
            ("print('no newline', end='')", "ok", "no newline"),
            ("while True:\n    pass", "timeout", ""),
            ("print('x' in globals())", "ok", "False\n"),
        ]
        got = []
        for code, status, out in steps:
            r = s.run(code, timeout=3)
            got.append(_r(r))
            if r.status != status or (out and r.stdout != out):
                return {"steps": got}, f"{code!r}: want {status} {out!r}"
            if r.session_lost != (status == "timeout"):
                return {"steps": got}, f"{code!r}: session_lost={r.session_lost}"
        if "ZeroDivisionError" not in got[2]["stderr"]:
            return {"steps": got}, "no traceback for the exception"
    return {"steps": got}, ""


# name -> case; a case that takes no sandbox builds its own (other session settings).
CASES = {
    "session_reply_forged_by_frame_walk": reply_forged_by_frame_walk,
    "session_daemon_thread_writes_next_output": daemon_thread_writes_next_output,
    "session_busy_children_outlive_command": busy_children_outlive_command,
    "session_idle_deadline": idle_session_is_closed,
    "session_cpu_bound": session_cpu_is_bounded,
    "session_ordinary_use": ordinary_use,
    "session_exited_children_reaped": exited_children_are_reaped,
}
NEEDS_SANDBOX = {"session_reply_forged_by_frame_walk", "session_daemon_thread_writes_next_output",
                 "session_busy_children_outlive_command", "session_ordinary_use", "session_exited_children_reaped"}


def run(name: str, sb):
    case = CASES[name]
    return case(sb) if name in NEEDS_SANDBOX else case()
