"""Session mode: globals persist, isolation is the same, faults reclaim the process and report state lost."""
import pytest
from _sandbox_helpers import FAKE_SECRET, assert_host_unharmed


def test_globals_persist(sb):
    with sb.session() as s:
        assert s.run("import numpy as np\nx = 21\nf = lambda v: v * 2").ok
        res = s.run("print(f(x), int(np.arange(4).sum()))")
        assert res.ok and res.stdout == "42 6\n" and not res.session_lost
        err = s.run("1 / 0")
        assert err.status == "error" and "ZeroDivisionError" in err.stderr and not err.session_lost
        assert s.run("print(x)").stdout == "21\n"  # an exception does not lose the state
    assert_host_unharmed(sb)


def test_timeout_reclaims_and_reports_state_lost(sb):
    with sb.session() as s:
        s.run("y = 5")
        res = s.run("while True: pass", timeout=0.5)
        assert res.status == "timeout" and res.session_lost
        after = s.run("print('y' in globals())")
        assert after.ok and after.stdout == "False\n" and s.restarts == 1
    assert_host_unharmed(sb)


@pytest.mark.parametrize("code,status,lost", [
    ("x = bytearray(1 << 40)", "memory", False),  # MemoryError raised in-process: state survives
    # OOM kill with a memory cgroup; without one RLIMIT_AS raises MemoryError in-process (state kept)
    ("xs = []\nwhile True:\n    xs.append(bytearray(8 << 20))", "memory", "cgroup"),
    ("import ctypes\nctypes.string_at(0)", "killed", True),
    ("print('q' * 5_000_000)", "output_limit", True),
    ("import sys\nsys.exit(4)", "error", True),
])
def test_faults(sb, code, status, lost):
    if lost == "cgroup":
        lost = sb.isolation["cgroup"] is not None
    with sb.session() as s:
        s.run("z = 1")
        res = s.run(code, timeout=10)
        assert res.status == status and res.session_lost == lost, res
        assert s.run("print('z' in globals())").stdout == f"{not lost}\n"
    assert_host_unharmed(sb)


def test_session_is_isolated(sb):
    with sb.session() as s:
        res = s.run("import os\ncap = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0]\n"
                    "print(os.getuid(), cap, dict(os.environ))\ninput()")
        assert res.status == "error" and "EOFError" in res.stderr and FAKE_SECRET not in res.stdout
        uid, cap = res.stdout.split()[:2]
        assert int(cap, 16) == 0  # no capability at all
        if sb.isolation["root"]:
            assert int(uid) != 0  # (otherwise uid 0 of a user namespace of its own, mapped to the user)
        assert s.run("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)").status == "error"


def test_session_cap(sb):
    opened = [sb.session() for _ in range(sb.config.max_sessions)]
    try:
        with pytest.raises(RuntimeError, match="session slots"):
            sb.session()
    finally:
        for s in opened:
            s.close()
    with sb.session() as s:  # slots come back
        assert s.run("print(7)").stdout == "7\n"
