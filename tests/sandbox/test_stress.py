"""Many mixed calls at full concurrency: no lost or mixed-up results, no leaked processes, fds or cgroup members.

~1,000 calls here (a few seconds); the 10,000-call soak with supervisor memory lives in benchmarks/sandbox.py.
"""
import asyncio
import gc
import os
import random

from _sandbox_helpers import assert_host_unharmed, processes_of, sandbox_uids

KINDS = {
    # kind: (code template, timeout, expected status, expected stdout template)
    "ok": ("print({i})", None, "ok", "{i}\n"),
    "error": ("print({i})\nraise ValueError({i})", None, "error", "{i}\n"),
    "exit": ("import sys\nprint({i})\nsys.exit({i} % 50 + 1)", None, "error", "{i}\n"),
    "timeout": ("print({i}, flush=True)\nwhile True: pass", 0.3, "timeout", "{i}\n"),
    "memory": ("print({i}, flush=True)\nx = bytearray(1 << 30)", None, "memory", "{i}\n"),
    "segv": ("print({i}, flush=True)\nimport ctypes\nctypes.string_at(0)", None, "killed", "{i}\n"),
}
WEIGHTS = {"ok": 800, "error": 100, "exit": 60, "timeout": 10, "memory": 15, "segv": 15}


def test_thousand_mixed_calls(sb):
    plan = [k for k, n in WEIGHTS.items() for _ in range(n)]
    random.Random(0).shuffle(plan)
    gc.collect()  # an earlier test's unreachable file objects would otherwise close during this one
    fds_before = len(os.listdir("/proc/self/fd"))

    async def go():
        async def one(i, kind):
            code, timeout, _, _ = KINDS[kind]
            return await sb.arun(code.format(i=i), timeout=timeout)

        return await asyncio.gather(*(one(i, k) for i, k in enumerate(plan)))

    results = asyncio.run(go())
    assert len(results) == len(plan)
    for i, (kind, res) in enumerate(zip(plan, results)):
        _, _, status, out = KINDS[kind]
        assert res.status == status and res.stdout == out.format(i=i), (i, kind, res)
        if kind == "exit":
            assert res.exit_code == i % 50 + 1
    assert processes_of(sandbox_uids(sb)) == []
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= fds_before  # a leak adds descriptors
    # Other processes use the host /tmp too: check that nothing there belongs to a sandbox uid.
    uids = sandbox_uids(sb)
    assert not [n for n in os.listdir("/tmp") if os.lstat(os.path.join("/tmp", n)).st_uid in uids]
    assert_host_unharmed(sb)


def test_the_bench_soak_mixes_sessions_and_counts_a_wrong_session_answer(sb, monkeypatch):
    """`tirl sandbox bench`'s soak runs session commands beside the one-shot calls, checks the state they
    carry, and a session answer that is wrong is counted (not lost in the one-shot figures)."""
    from tirl.sandbox import bench

    rep = bench._soak(sb, 40, log=lambda _: None)
    assert rep["session_calls"] == 100 and rep["calls"] == 140
    assert rep["wrong"] == 0 and rep["leaked_procs"] == 0

    monkeypatch.setattr(bench, "_session_round", lambda s, start: (5, 2))  # two wrong answers in a round
    assert bench._soak(sb, 40, log=lambda _: None)["wrong"] == 2
