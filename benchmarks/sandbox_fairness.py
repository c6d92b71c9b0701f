"""CPU fairness between sandbox slots: how much a 20-process CPU hog in one slot slows a neighbour's call.

The neighbour runs a fixed pure-Python loop alone, then while a call in the other slot runs one busy
process (the reference: what any ordinary neighbour costs), then while it forks 20 busy processes (each
trying ``setsid``, so autogroups cannot help it either); the three are interleaved so a busy host (a
training run) weighs on all alike. The figures are medians over rounds of (time with the hog) / (time
alone); the issue's bound for the 20-process hog is 1.5. On 2 cores beside one other busy process, an
equal share for every process already gives 1.5 for the reference (3 runnable on 2 cores instead of 2).
Usage:
    python benchmarks/sandbox_fairness.py [--rounds 7] [--hogs 20]
Check ``cat /proc/loadavg`` (printed too): the ratio is meaningful under load, the times are not.
"""
import argparse
import asyncio
import json
import statistics

from tirl.sandbox import Sandbox, SandboxConfig

HONEST = "x = 0\nfor i in range(3_000_000):\n    x += i\nprint(x)"
HOG = (  # the parent sleeps; {n} children spin
    "import os, time\nfor i in range({n}):\n    if os.fork() == 0:\n        try:\n            os.setsid()\n"
    "        except OSError:\n            pass\n        while True:\n            pass\ntime.sleep(60)")


async def _with_hog(sb: Sandbox, hogs: int, settle_s: float, hog_s: float):
    # The hog ends at its own wall clock, which outlasts the neighbour's call.
    hog = asyncio.ensure_future(sb.arun(HOG.format(n=hogs), timeout=settle_s + hog_s))
    await asyncio.sleep(settle_s)  # the hog's processes are all running
    honest = await sb.arun(HONEST, timeout=60)
    await hog
    return honest


def measure(rounds: int = 7, hogs: int = 20, settle_s: float = 0.5) -> dict:
    load = [open("/proc/loadavg").read().split()[:3]]
    times: dict[str, list[float]] = {"alone": [], "one_busy_process": [], f"hog_{hogs}": []}
    with Sandbox(SandboxConfig(max_concurrency=2, max_sessions=0, preload=[])) as sb:
        share = sb.isolation["limits"]["cpu_share"]
        sb.run(HONEST)  # warm
        for _ in range(rounds):
            a = sb.run(HONEST, timeout=60)
            assert a.ok, a
            times["alone"].append(a.duration_s)
            for key, n in (("one_busy_process", 1), (f"hog_{hogs}", hogs)):
                h = asyncio.run(_with_hog(sb, n, settle_s, 3 * a.duration_s + 0.5))
                assert h.ok, h
                times[key].append(h.duration_s)
    load.append(open("/proc/loadavg").read().split()[:3])
    ratio = {k: sorted(round(t / a, 2) for t, a in zip(v, times["alone"])) for k, v in times.items() if k != "alone"}
    return {"cpu_share": share, "rounds": rounds, "ratio_median": {k: statistics.median(v) for k, v in ratio.items()},
            "ratios_sorted": ratio, "alone_s_median": round(statistics.median(times["alone"]), 3),
            "loadavg_before_after": load}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--hogs", type=int, default=20)
    a = ap.parse_args()
    print(json.dumps(measure(a.rounds, a.hogs), indent=1))
