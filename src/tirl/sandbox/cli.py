"""``tirl sandbox serve | bench | check``: argparse wiring, mounted under ``tirl`` by ``tirl.cli``.

Heavy imports (aiohttp, the supervisor) happen inside ``run`` so ``tirl --help`` stays fast.
"""
from __future__ import annotations

import argparse


def _config_args(p: argparse.ArgumentParser) -> None:
    from tirl.config import add_config_arguments

    add_config_arguments(p, example="memory_mb=512 timeout_s=5")
    S = argparse.SUPPRESS  # a flag not given leaves the config's value (SandboxConfig's defaults) alone
    p.add_argument("--timeout", type=float, default=S, help="default wall-clock limit per call, seconds (10)")
    p.add_argument("--memory-mb", type=int, default=S, help="memory limit per call in MB (1024)")
    p.add_argument("--max-concurrency", type=int, default=S, help="calls at once (0 = number of cores)")
    p.add_argument("--isolation", choices=["auto", "strict", "none"], default=S,
                   help="auto: strongest available, reported; strict: refuse to start if any primitive is missing")
    p.add_argument("--preload", default=S, help="comma-separated modules imported once in the zygote (numpy,sympy)")


def _serve_args(p: argparse.ArgumentParser) -> None:
    import os

    p.add_argument("--token", default=os.environ.get("TIRL_SANDBOX_TOKEN") or None,
                   help="every request needs 'Authorization: Bearer TOKEN' (default: $TIRL_SANDBOX_TOKEN; prefer it, "
                        "a flag shows in the process list). Required with a --host other than loopback")
    p.add_argument("--max-connections", type=int, default=256, help="open connections; at the cap the one idle "
                                                                    "longest is dropped for a new one")
    p.add_argument("--read-timeout", type=float, default=10.0, help="seconds for a request's headers, and for its "
                                                                    "body once its turn comes")
    p.add_argument("--write-timeout", type=float, default=30.0, help="seconds a client has to take its response")
    p.add_argument("--max-body-mb", type=int, default=64, help="largest request body (413 beyond)")
    p.add_argument("--max-requests", type=int, default=0, help="requests read, run and answered at once; the "
                                                               "others wait holding only their headers "
                                                               "(0 = the sandbox's slots)")


def _limits(args):
    from .http import ServeLimits

    return ServeLimits(max_connections=args.max_connections, read_timeout_s=args.read_timeout,
                       write_timeout_s=args.write_timeout, max_body_mb=args.max_body_mb,
                       max_requests=args.max_requests)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sandbox_command", required=True, metavar="{serve,bench,check}")
    p = sub.add_parser("serve", help="SandboxFusion-compatible HTTP server (POST /run_code, GET /health)",
                       description="Serve the sandbox over HTTP with SandboxFusion's /run_code request and "
                                   "response shape, so verl/ToRL can point their sandbox URL at it.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; one other machines reach needs a token")
    p.add_argument("--port", type=int, default=8080, help="TCP port")
    _serve_args(p)
    _config_args(p)
    p = sub.add_parser("bench", help="latency, throughput, naive-subprocess ratio, output sizes, soak",
                       description="Benchmark the local sandbox (same code as benchmarks/sandbox.py). Check "
                                   "the machine is quiet first; the load average is reported.")
    p.add_argument("--latency-n", type=int, default=200, help="sequential print(1) calls for the latency median")
    p.add_argument("--throughput-n", type=int, default=1000, help="calls for the throughput figure")
    p.add_argument("--naive-n", type=int, default=10, help="fresh `python -c 'import numpy, sympy'` runs")
    p.add_argument("--soak", type=int, default=10_000, help="mixed calls in the leak soak (0 = skip)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    _config_args(p)
    p = sub.add_parser("check", help="report the isolation level this machine allows and what is missing",
                       description="Start a sandbox, run one probe call and print the isolation report. "
                                   "Exit code 0 when the level is 'full', 1 when partial, 2 when it cannot start.")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _config_args(p)


def _config(args):
    """SandboxConfig from its defaults, then CONFIG, then key=value overrides, then the flags."""
    from tirl.commands import command_config

    from .config import SandboxConfig

    flags = {"timeout": "timeout_s", "memory_mb": "memory_mb", "max_concurrency": "max_concurrency",
             "isolation": "isolation"}
    cfg = command_config(SandboxConfig, args, flags)
    if hasattr(args, "preload"):
        cfg.preload = [m for m in args.preload.split(",") if m]
    return cfg


def run(args: argparse.Namespace) -> int:
    from tirl.commands import fail
    from tirl.config import ConfigError

    cmd = args.sandbox_command
    try:
        _config(args)
    except ConfigError as e:
        return fail(f"sandbox {cmd}", e)
    if cmd == "serve":
        from tirl.commands import UserError, check_port_free

        from .http import check_exposure, serve

        try:  # before the sandbox starts and says where it serves
            limits = _limits(args)
            check_exposure(args.host, args.token)
            check_port_free(args.host, args.port)
        except (UserError, ValueError) as e:
            return fail(f"sandbox {cmd}", e)
        serve(args.host, args.port, _config(args), limits, args.token)
        return 0
    if cmd == "bench":
        from .bench import run_bench

        res = run_bench(_config(args), latency_n=args.latency_n, throughput_n=args.throughput_n,
                        naive_n=args.naive_n, soak_n=args.soak)
        if args.json:
            from tirl.jsonl import atomic_write, pretty

            atomic_write(args.json, pretty(res) + "\n")  # an undefined figure is null: NaN is not JSON
        return 0
    if cmd == "check":
        from . import SandboxUnavailable, check

        try:
            rep = check(_config(args))
        except SandboxUnavailable as e:
            return fail(f"sandbox {cmd}", f"sandbox unavailable: {e}")
        if args.json:
            from tirl.jsonl import pretty

            print(pretty(rep))
        else:
            print(f"isolation level: {rep['level']} (cgroup {rep['cgroup']}, root {rep['root']})")
            print(f"present: {', '.join(rep['present']) or '-'}")
            for name, why in rep["missing"].items():
                print(f"missing: {name}: {why}")
            for name, how in rep.get("limits", {}).items():
                print(f"limit {name}: {how}")
            print(f"probe call: {rep['probe']['status']} in {rep['probe']['duration_s']} s")
        return 0 if rep["level"] == "full" and rep["probe"]["status"] == "ok" else 1
    raise ValueError(cmd)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m tirl.sandbox.cli check``), same as ``tirl sandbox check``."""
    ap = argparse.ArgumentParser(prog="tirl sandbox")
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
