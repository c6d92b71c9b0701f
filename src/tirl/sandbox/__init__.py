"""Run untrusted, model-written Python fast and safely.

``Sandbox`` (local: warm zygote + per-call cgroup slot, namespaces, seccomp, rlimits, unprivileged
uid), ``HttpSandbox`` (client of ``tirl sandbox serve`` or any SandboxFusion-compatible server) and
sessions share one result type, ``ExecResult``. ``check()`` reports the isolation this machine allows.
This package never imports torch; numpy is imported only inside the zygote.
"""
from .config import STATUSES, ExecResult, SandboxConfig
from .core import PRIMITIVES, Sandbox, SandboxUnavailable


def check(config: SandboxConfig | None = None) -> dict:
    """Start a sandbox, run one probe call, and report the isolation level achieved and what's missing."""
    with Sandbox(config or SandboxConfig()) as sb:
        report = sb.isolation
        res = sb.run("import math, json, fractions, itertools, collections\nprint('ok')", timeout=30)
        report["probe"] = {"status": res.status, "stderr": res.stderr[-500:], "duration_s": round(res.duration_s, 4)}
    return report


def __getattr__(name):  # keep aiohttp out of the import path of users who never use HTTP
    if name in ("HttpSandbox", "serve"):
        from . import http

        return getattr(http, name)
    if name == "Session":
        from .session import Session

        return Session
    raise AttributeError(name)


__all__ = ["Sandbox", "SandboxConfig", "ExecResult", "SandboxUnavailable", "STATUSES", "PRIMITIVES",
           "check", "HttpSandbox", "Session"]
