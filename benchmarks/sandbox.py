"""Sandbox benchmark: latency, throughput, naive-subprocess ratio, output sizes, 10,000-call soak.

Same code as ``tirl sandbox bench`` (``tirl.sandbox.bench.run_bench``). Usage:
    python benchmarks/sandbox.py [--soak 10000] [--json out.json]
Check ``cat /proc/loadavg`` first: figures on a busy machine are not comparable.
"""
import argparse
import json

from tirl.sandbox.bench import run_bench

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-n", type=int, default=200)
    ap.add_argument("--throughput-n", type=int, default=1000)
    ap.add_argument("--naive-n", type=int, default=10)
    ap.add_argument("--soak", type=int, default=10_000)
    ap.add_argument("--json", default=None, help="write the figures to this file")
    a = ap.parse_args()
    res = run_bench(latency_n=a.latency_n, throughput_n=a.throughput_n, naive_n=a.naive_n, soak_n=a.soak)
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=1)
