"""The public API: results, SandboxFusion shape, batching, async, output sizes, isolation levels, clean close."""
import asyncio
import os
import subprocess
import sys

import pytest
from _sandbox_helpers import needs, processes_of

from tirl.sandbox import (INFRA_STATUSES, PRIMITIVES, STATUSES, ExecResult, Sandbox, SandboxConfig, SandboxUnavailable,
                          check)
from tirl.sandbox.outcome import Observed, classify


def test_run_ok_and_fields(sb):
    res = sb.run("print(6 * 7)")
    assert res.ok and res.stdout == "42\n" and res.stderr == "" and res.exit_code == 0
    assert res.duration_s > 0 and res.signal is None and not res.truncated


def test_error_traceback_looks_like_python(sb):
    res = sb.run("def f():\n    return 1 / 0\nf()")
    assert res.status == "error" and res.exit_code == 1
    assert res.stderr.startswith("Traceback") and "ZeroDivisionError" in res.stderr
    assert "_zygote" not in res.stderr  # no frames of the sandbox's own runner


def test_syntax_error(sb):
    res = sb.run("def f(:\n")
    assert res.status == "error" and "SyntaxError" in res.stderr


def test_imports_work_inside(sb):
    code = ("import math, json, fractions, itertools, collections, numpy, sympy, decimal, statistics, csv\n"
            "print(sympy.Rational(1, 3) + fractions.Fraction(1, 6), int(numpy.arange(5).sum()))")
    res = sb.run(code)
    assert res.status == "ok" and res.stdout == "1/2 10\n", res


def test_randomness_differs_between_calls(sb):
    code = "import random, numpy\nprint(random.random(), numpy.random.rand())"
    outs = {sb.run(code).stdout for _ in range(3)}
    assert len(outs) == 3


def test_run_batch_preserves_order(sb):
    codes = [f"import time, random\ntime.sleep(random.random() / 50)\nprint({i})" for i in range(40)]
    results = sb.run_batch(codes)
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(40)]


def test_arun_from_another_event_loop(sb):
    async def go():
        return await asyncio.gather(*(sb.arun(f"print({i} ** 2)") for i in range(20)))

    results = asyncio.run(go())
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(20)]


@pytest.mark.parametrize("size", [100_000, 1_000_000 - 1, 1 << 20, 100 << 20], ids=["100KB", "just_under", "1MB", "100MB"])
def test_output_sizes(sb, size):
    cap = sb.config.max_output_bytes
    res = sb.run(f"import sys\nsys.stdout.write('a' * {size - 1} + '\\n')", timeout=20)
    if size <= cap:
        assert res.status == "ok" and len(res.stdout) == size and not res.truncated
    else:
        assert res.status == "output_limit" and res.truncated and res.stdout == "a" * cap


def test_stdout_and_stderr_interleaved_program(sb):
    res = sb.run("import sys\nfor i in range(1000):\n    print(i)\n    print(-i, file=sys.stderr)")
    assert res.ok and res.stdout.split() == [str(i) for i in range(1000)]
    assert res.stderr.split() == [str(-i) for i in range(1000)]


def test_sandboxfusion_shape():
    ok = ExecResult("ok", "1\n", "", 0, 0.01).to_sandboxfusion()
    assert ok["status"] == "Success" and ok["run_result"]["status"] == "Finished"
    assert ok["run_result"]["stdout"] == "1\n" and ok["run_result"]["return_code"] == 0
    assert set(ok) >= {"status", "message", "compile_result", "run_result", "files"}
    assert set(ok["run_result"]) >= {"status", "execution_time", "return_code", "stdout", "stderr"}
    assert ExecResult("error", exit_code=1).to_sandboxfusion()["status"] == "Failed"
    to = ExecResult("timeout", exit_code=-9).to_sandboxfusion()
    assert to["status"] == "Failed" and to["run_result"]["status"] == "TimeLimitExceeded"
    assert ExecResult("sandbox_error").to_sandboxfusion()["status"] == "SandboxError"
    for st in ("ok", "error", "timeout", "sandbox_error"):
        r = ExecResult(st, "o", "e", 0)
        assert ExecResult.from_sandboxfusion(r.to_sandboxfusion()).status == st


def test_each_result_says_whose_failure_it_is():
    # Only the sandbox's own failure is the infrastructure's; everything a program can do to itself is its own.
    assert {st for st in STATUSES if ExecResult(st).infra_failed} == {"sandbox_error"} == set(INFRA_STATUSES)
    assert not ExecResult("ok").infra_failed
    observed = dict(exit_code=None, stdout=b"", stderr=b"")
    assert classify(Observed(**observed)).infra_failed  # no exit status: the supervisor lost the process
    assert classify(Observed(**{**observed, "exit_code": 0, "setup_error": "fork failed"})).infra_failed
    assert not classify(Observed(**{**observed, "exit_code": 1, "stderr": b"MemoryError"})).infra_failed
    assert not classify(Observed(**{**observed, "exit_code": -9, "timed_out": True})).infra_failed


def test_isolation_report(sb):
    rep = sb.isolation
    assert rep["level"] in ("full", "partial")
    assert set(rep["present"]) | set(rep["missing"]) >= set(PRIMITIVES)
    assert "limits" in rep and {"memory", "pids", "cpu_share"} <= set(rep["limits"])


def test_cpu_share_says_not_enforced_when_the_host_turns_autogroups_off(sb, monkeypatch):
    # Without a cpu cgroup the fair share rests on autogroups; a host that disabled them must be told plainly.
    from tirl.sandbox import enforcement

    monkeypatch.setattr(sb._sup, "cg", None)
    monkeypatch.setattr(enforcement, "autogroups_on", lambda: True)
    assert "NOT ENFORCED" not in sb._sup._limit_report({"seccomp"})["cpu_share"]
    monkeypatch.setattr(enforcement, "autogroups_on", lambda: False)
    share = sb._sup._limit_report({"seccomp"})["cpu_share"]
    assert "NOT ENFORCED" in share and "sched_autogroup_enabled" in share


def test_check_reports_level_and_probe():
    rep = check(SandboxConfig(preload=[], max_concurrency=1, max_sessions=0))
    assert rep["probe"]["status"] == "ok" and rep["level"] in ("full", "partial")


def test_strict_names_missing_primitive(sb):
    needs(sb, "cgroup")  # otherwise strict fails for another reason, which is also fine
    with pytest.raises(SandboxUnavailable, match="seccomp"):
        Sandbox(SandboxConfig(isolation="strict", seccomp=False, preload=[], max_sessions=0))


def test_strict_starts_when_everything_is_there(sb):
    if sb.isolation["level"] != "full":
        pytest.skip(f"machine lacks: {sorted(sb.isolation['missing'])}")
    with Sandbox(SandboxConfig(isolation="strict", preload=[], max_concurrency=1, max_sessions=0)) as box:
        assert box.run("print(1)").ok


def test_isolation_none_still_enforces_time_and_output():
    with Sandbox(SandboxConfig(isolation="none", preload=[], max_concurrency=1, max_sessions=0,
                               max_output_bytes=1000)) as box:
        assert box.isolation["level"] == "none"
        assert box.run("print(2)").stdout == "2\n"
        assert box.run("while True: pass", timeout=0.5).status == "timeout"
        assert box.run("print('z' * 5000)").status == "output_limit"


def test_extra_env_and_limits():
    cfg = SandboxConfig(preload=[], max_concurrency=1, max_sessions=0, env={"ANSWER": "42"}, file_size_mb=1)
    with Sandbox(cfg) as box:
        assert box.run("import os\nprint(os.environ['ANSWER'])").stdout == "42\n"
        res = box.run("open('/tmp/f', 'wb').write(b'x' * (2 << 20))")
        assert res.status == "error" and "File too large" in res.stderr


def test_close_leaves_nothing_behind():
    mounts = open("/proc/self/mounts").read()
    box = Sandbox(SandboxConfig(preload=[], max_concurrency=1, max_sessions=0))
    uids = range(box._sup.uid0, box._sup.uid0 + 256)
    zygote = box._sup._proc.pid
    cg = box._sup.cg
    box.run("import os, time\nif os.fork() == 0:\n    time.sleep(100)")
    box.close()
    box.close()  # idempotent
    assert not os.path.exists(f"/proc/{zygote}") or open(f"/proc/{zygote}/stat").read().split()[2] == "Z"
    assert processes_of(uids) == []
    if cg is not None:
        assert not any(os.path.exists(b) for b in cg.bases.values())
    assert open("/proc/self/mounts").read() == mounts
    assert not [n for n in os.listdir("/tmp") if os.lstat(os.path.join("/tmp", n)).st_uid in uids]


def test_zygote_death_is_survived():
    with Sandbox(SandboxConfig(preload=[], max_concurrency=1, max_sessions=0)) as box:
        box._sup._proc.kill()
        box._sup._proc.wait()
        statuses = [box.run("print(5)").status for _ in range(3)]
        assert statuses[-1] == "ok" and set(statuses) <= {"ok", "sandbox_error"}


def test_package_never_imports_torch_or_numpy():
    code = ("import sys, tirl.sandbox, tirl.sandbox.http, tirl.sandbox.session, tirl.sandbox.cli, tirl.sandbox.bench\n"
            "bad = [m for m in ('torch', 'numpy') if m in sys.modules]\nassert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_sandbox_left_open_closes_quietly_at_exit():
    # atexit closes it; waiting for the zygote in an executor thread failed there with
    # "can't register atexit after shutdown" and left the zygote running.
    code = ("import os; from tirl.sandbox import Sandbox; sb = Sandbox(); "
            "print(sb.run('print(6 * 7)').stdout.strip(), sb._sup._proc.pid)")
    r = subprocess.run([sys.executable, "-X", "dev", "-c", code], capture_output=True, text=True, timeout=120)
    out, pid = r.stdout.split()
    assert r.returncode == 0 and out == "42"
    assert r.stderr == "", r.stderr
    assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
