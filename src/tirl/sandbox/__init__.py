"""Run untrusted, model-written Python fast and safely.

``Sandbox`` (local: warm zygote, a PID namespace per call, per-slot cgroup, read-only filesystem with
a private /tmp, seccomp, rlimits, an unprivileged uid or user namespace), ``HttpSandbox`` (client of
``tirl sandbox serve`` or any SandboxFusion-compatible server) and sessions share one result type,
``ExecResult``; callers type against ``SandboxLike``. ``check()`` reports the isolation this machine
allows and which limits it cannot enforce. This package never imports torch; numpy is imported only
inside the zygote.
"""
from .config import INFRA_STATUSES, STATUSES, ExecResult, SandboxConfig, SandboxUnavailable
from .local import Sandbox, check
from .protocol import SandboxLike
from .supervisor import PRIMITIVES


def __getattr__(name):  # keep aiohttp out of the import path of users who never use HTTP
    if name in ("HttpSandbox", "serve"):
        from . import http

        return getattr(http, name)
    if name == "Session":
        from .session import Session

        return Session
    raise AttributeError(name)


__all__ = ["Sandbox", "SandboxConfig", "ExecResult", "SandboxUnavailable", "SandboxLike", "STATUSES", "INFRA_STATUSES",
           "PRIMITIVES", "check", "HttpSandbox", "Session"]
