"""Sandbox benchmark shared by ``tirl sandbox bench`` and ``benchmarks/sandbox.py``.

Measures, in one run: median/p90 latency of ``print(1)`` (numpy+sympy preloaded, full isolation when
available), throughput at ``max_concurrency``, the naive peer (a fresh ``python -c 'import numpy,
sympy; print(1)'`` per call) and the ratio, output sizes (100 KB, 1 MB, 100 MB), and a mixed soak
(ok, errors, timeouts, memory bombs) checking results, leaked processes/fds and supervisor memory.
Figures depend on machine load: the load average is recorded alongside.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from .config import SandboxConfig
from .local import Sandbox

_MIX = [  # (code, timeout, expected status)
    ("print({i})", None, "ok"),
    ("raise ValueError({i})", None, "error"),
    ("print({i})", None, "ok"),
    ("import sympy\nprint(sympy.factorint({i} + 2))", None, "ok"),
    ("import numpy as np\nprint(int(np.arange({i} % 100 + 1).sum()))", None, "ok"),
]


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_bench(cfg: SandboxConfig | None = None, latency_n: int = 200, throughput_n: int = 1000,
              naive_n: int = 10, soak_n: int = 10_000, log=print) -> dict:
    cfg = cfg or SandboxConfig()
    out: dict = {"loadavg_before": open("/proc/loadavg").read().split()[:3], "cores": os.cpu_count()}
    t = time.perf_counter()
    with Sandbox(cfg) as sb:
        out["startup_s"] = round(time.perf_counter() - t, 3)
        out["isolation"] = sb.isolation["level"]
        out["missing"] = sorted(sb.isolation["missing"])
        log(f"sandbox up in {out['startup_s']} s, isolation {out['isolation']} (missing: {out['missing']})")
        for _ in range(20):  # warm caches
            sb.run("print(1)")
        lat = []
        for _ in range(latency_n):
            t = time.perf_counter()
            r = sb.run("print(1)")
            lat.append(time.perf_counter() - t)
            assert r.ok, r
        out["latency_ms_median"] = round(statistics.median(lat) * 1000, 2)
        out["latency_ms_p90"] = round(sorted(lat)[int(0.9 * len(lat))] * 1000, 2)
        log(f"latency print(1): median {out['latency_ms_median']} ms, p90 {out['latency_ms_p90']} ms")

        t = time.perf_counter()
        res = sb.run_batch(["print(1)"] * throughput_n)
        dt = time.perf_counter() - t
        assert all(r.ok for r in res)
        out["throughput_calls_s"] = round(throughput_n / dt, 1)
        log(f"throughput ({sb.isolation['max_concurrency']} slots): {out['throughput_calls_s']} calls/s")

        naive = []
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OPENBLAS_NUM_THREADS": "1"}
        for _ in range(naive_n):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import numpy, sympy; print(1)"], capture_output=True,
                           check=True, env=env)
            naive.append(time.perf_counter() - t)
        out["naive_ms_median"] = round(statistics.median(naive) * 1000, 1)
        out["speedup_vs_naive"] = round(statistics.median(naive) / statistics.median(lat), 1)
        log(f"naive python -c 'import numpy, sympy': median {out['naive_ms_median']} ms "
            f"-> sandbox {out['speedup_vs_naive']}x faster")

        sizes = {}
        for label, n in (("100KB", 100_000), ("1MB", 1 << 20), ("100MB", 100 << 20)):
            t = time.perf_counter()
            r = sb.run(f"import sys\nsys.stdout.write('a' * {n})", timeout=60)
            sizes[label] = {"status": r.status, "bytes": len(r.stdout), "truncated": r.truncated,
                            "s": round(time.perf_counter() - t, 3)}
        out["output"] = sizes
        log(f"output: {sizes}")

        if soak_n:
            out["soak"] = _soak(sb, soak_n, log)
    out["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
    return out


def _soak(sb: Sandbox, n: int, log) -> dict:
    fds0 = len(os.listdir("/proc/self/fd"))
    rss = [_rss_mb()]
    wrong, chunk, calls = 0, 1000, 0
    t = time.perf_counter()
    for start in range(0, n, chunk):
        plan = []
        for i in range(start, min(n, start + chunk)):
            if i % 500 == 7:
                plan.append(("while True: pass", 0.2, "timeout", None))
            elif i % 500 == 9:
                plan.append(("x = bytearray(1 << 40)", None, "memory", None))
            else:
                code, _, st = _MIX[i % len(_MIX)]
                plan.append((code.format(i=i), None, st, f"{i}\n" if code == "print({i})" else None))
        # run_batch takes one timeout; the few timeout cases use the config's own timeout otherwise.
        quick = [p for p in plan if p[1] is None]
        slow = [p for p in plan if p[1] is not None]
        res = sb.run_batch([p[0] for p in quick]) + sb.run_batch([p[0] for p in slow], timeout=0.2)
        for (code, _, st, outp), r in zip(quick + slow, res):
            if r.status != st or (outp is not None and r.stdout != outp):
                wrong += 1
        session_calls, session_wrong = _session_round(sb, start)
        calls += len(plan) + session_calls
        wrong += session_wrong
        rss.append(_rss_mb())
    dt = time.perf_counter() - t
    rep = {"calls": calls, "session_calls": calls - n, "wrong": wrong, "s": round(dt, 1),
           "calls_s": round(calls / dt, 1),
           "leaked_procs": sb.leftovers(),
           "leaked_fds": len(os.listdir("/proc/self/fd")) - fds0,
           "supervisor_rss_mb_first_last": [round(rss[1], 1), round(rss[-1], 1)]}
    log(f"soak: {rep}")
    return rep


def _session_round(sb: Sandbox, start: int, commands: int = 100) -> tuple[int, int]:
    """A stateful session beside the one-shot calls (when the sandbox has sessions): state carried and
    checked on every command, then an error, then a timeout (it ends the interpreter), then closed.
    Returns (calls, wrong)."""
    if not getattr(getattr(sb, "config", None), "max_sessions", 0):
        return 0, 0
    wrong = 0
    with sb.session() as s:
        wrong += s.run(f"total = {start}").status != "ok"
        for i in range(commands - 3):
            r = s.run(f"total += {i}\nprint(total)")
            wrong += r.status != "ok" or r.stdout != f"{start + i * (i + 1) // 2}\n"
        wrong += s.run("raise ValueError('kept?')").status != "error"
        wrong += s.run("while True: pass", timeout=0.2).status != "timeout"
    return commands, wrong
