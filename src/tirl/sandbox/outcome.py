"""One place that turns what the supervisor observed about a call into an ``ExecResult`` status.

Used by one-shot calls and session commands alike. Inputs come from trusted sources only: the wait
status (from the zygote), the OOM counter of the slot cgroup, the supervisor's own timers and byte
counts. Order of precedence: set-up failure, output cap, wall clock, CPU limit, fatal OOM, signal,
exit code.
"""
from __future__ import annotations

import re
import signal
from dataclasses import dataclass

from .config import ExecResult

# MemoryError and subclasses such as numpy's ``numpy.core._exceptions._ArrayMemoryError``.
MEMORY_ERROR = re.compile(r"^[\w.]*MemoryError\b")


@dataclass
class Observed:
    """Everything the supervisor saw of one call or session command."""

    exit_code: int | None
    """Exit code; negative = killed by that signal; None = the process never reported one."""
    stdout: bytes = b""
    stderr: bytes = b""
    duration_s: float = 0.0
    overflow: bool = False
    cap: int = 0
    timed_out: bool = False
    setup_error: str = ""
    oom_kills: int = 0
    cpu_s: float = 0.0
    cpu_limit_s: float = 0.0
    maxrss_kb: int = 0


def signal_name(code: int | None) -> str | None:
    if code is not None and code < 0 and -code in signal.valid_signals():
        return signal.Signals(-code).name
    return None


def classify(o: Observed) -> ExecResult:
    stdout = o.stdout.decode("utf-8", errors="replace")
    stderr = o.stderr.decode("utf-8", errors="replace")
    sig = signal_name(o.exit_code)
    res = ExecResult("ok", stdout, stderr, o.exit_code, o.duration_s, sig, o.overflow,
                     cpu_s=round(o.cpu_s, 4), max_rss_mb=round(o.maxrss_kb / 1024, 1))
    if o.setup_error:
        res.status, res.message = "sandbox_error", o.setup_error
    elif o.overflow:
        res.status, res.message = "output_limit", f"output exceeded {o.cap} bytes; process killed"
    elif o.timed_out:
        res.status, res.message = "timeout", f"wall-clock limit of {o.duration_s:.1f}s exceeded; process killed"
    elif sig == "SIGXCPU" or (sig == "SIGKILL" and o.cpu_limit_s and o.cpu_s >= o.cpu_limit_s):
        res.status, res.message = "timeout", "CPU time limit exceeded"
    elif o.oom_kills > 0 and o.exit_code != 0:
        # A program that survives the OOM kill of one of its children and exits 0 is judged on its exit.
        res.status, res.message = "memory", "memory limit exceeded (OOM kill)"
    elif sig is not None:
        res.status, res.message = "killed", f"terminated by {sig}"
    elif o.exit_code is None:
        res.status, res.message = "sandbox_error", "the sandboxed process gave no exit status"
    elif o.exit_code != 0:
        # MemoryError is the interpreter's report of a failed allocation (RLIMIT_AS); a program can
        # fake it, but only to turn its own failure into another failure status.
        tail = stderr.rstrip().rsplit("\n", 1)[-1]
        res.status = "memory" if MEMORY_ERROR.match(tail) else "error"
    if o.oom_kills > 0 and res.status == "ok":
        res.message = "a child process was OOM-killed; the program handled it and exited 0"
    return res
