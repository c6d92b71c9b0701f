"""Sandbox configuration and the result of one execution.

``SandboxConfig`` is a plain dataclass (loadable with ``tirl.config.load_config``); ``ExecResult`` is
what every sandbox backend (local ``Sandbox``, ``HttpSandbox``, sessions) returns.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

class SandboxUnavailable(RuntimeError):
    """The sandbox cannot start with the requested isolation (the message names what is missing)."""


STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "killed", "sandbox_error")
INFRA_STATUSES = frozenset({"sandbox_error"})
"""The statuses that are the infrastructure's failure (the sandbox, its server, the transport), never the
program's: every other non-ok status (error, timeout, memory, output_limit, killed) is what the model's
code did. A run that ends in one says nothing about the model: the caller retries it, and a sample that
keeps one is left out of training and scoring (`tirl.rollout.faults`)."""


@dataclass
class SandboxConfig:
    """Limits and isolation of the local sandbox. Every field has a working default."""

    timeout_s: float = 10.0
    """Wall-clock limit per call, enforced from outside (SIGKILL of the whole slot)."""
    memory_mb: int = 1024
    """Memory limit per call (cgroup; RLIMIT_AS fallback). numpy+sympy need ~100 MB of it."""
    max_output_bytes: int = 1_000_000
    """Cap per stream (stdout, stderr); beyond it the call is killed, output kept exact up to the cap."""
    max_pids: int = 64
    """Processes + threads per call (pids cgroup, RLIMIT_NPROC backup): stops fork and thread bombs."""
    cpu_time_s: float = 0.0
    """RLIMIT_CPU backup for the wall-clock limit; 0 = timeout_s + 1 s."""
    file_size_mb: int = 16
    """RLIMIT_FSIZE: largest file a call may write (EFBIG beyond)."""
    tmp_size_mb: int = 64
    """Size of the private tmpfs mounted on /tmp for each call (counts against memory too)."""
    shm_size_mb: int = 16
    """Size of the private tmpfs on /dev/shm for each call: POSIX semaphores and shared memory, which
    `multiprocessing` needs (counts against memory too). 0 = no /dev/shm."""
    max_open_files: int = 256
    """RLIMIT_NOFILE per call."""
    cpu_quota: float = 0.0
    """Optional CPU quota per slot in cores (cgroup cpu.max / cfs_quota); 0 = none. Slots always get
    equal cpu weight, so a call that forks busy processes cannot starve its neighbours."""
    preload: list[str] = field(default_factory=lambda: ["numpy", "sympy"])
    """Modules imported once in the zygote; each call gets them for free (fork shares the pages)."""
    max_concurrency: int = 0
    """Calls running at once; 0 = number of CPU cores (more only queues CPU-bound snippets)."""
    isolation: str = "auto"
    """"auto": strongest available, reported; "strict": refuse to start unless every primitive works
    (the error names the missing one); "none": only timeouts, output caps and rlimits (debugging)."""
    seccomp: bool = True
    """Load the syscall filter (ptrace, mount, namespaces, socket(), memfd, SysV IPC, inotify, bpf... denied)."""
    uid_base: int = 1_500_000_000
    """Root only: first unprivileged uid. Each sandbox leases a block of 256 uids no other sandbox on
    the host holds (a lock file per block), one uid per slot. Unused by any real account."""
    hide_paths: list[str] = field(default_factory=list)
    """Extra directories to hide (tmpfs over them) besides the current directory, /var/tmp, /var/lock
    and every top-level entry but the system ones (``hostview.VISIBLE_TOP``: /usr, /etc, /var, /lib...).
    What stays visible is read-only."""
    max_sessions: int = 8
    """Stateful sessions alive at once (each holds one sandboxed process and one slot)."""
    session_idle_s: float = 300.0
    """A session that runs no command for this long is closed (its process and slot reclaimed; later
    calls on it answer ``sandbox_error``); 0 = never. Nothing runs while a session waits."""
    session_cpu_s: float = 600.0
    """CPU time a session's interpreter may use over its life, its children's included; past it the
    session is ended (``timeout``, ``session_lost``; the next call starts a fresh interpreter with a
    fresh budget); 0 = unbounded. Each command also has its own wall clock (``timeout_s``)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables for the snippet (the trainer's environment is never passed)."""


@dataclass
class ExecResult:
    """Outcome of one execution. ``status`` is decided by the supervisor, never by the program.

    status: "ok" (exit 0), "error" (exception or non-zero exit), "timeout" (wall clock or CPU limit),
    "memory" (OOM kill or MemoryError), "output_limit" (a stream exceeded the cap), "killed" (died
    by a signal, e.g. SIGSEGV), "sandbox_error" (the sandbox itself failed; retry-worthy).
    Whose failure a non-ok status is: ``infra_failed`` (see ``INFRA_STATUSES``).
    """

    status: str
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    """Process exit code; negative = killed by that signal; None when it never ran."""
    duration_s: float = 0.0
    signal: str | None = None
    """Signal name when the process died by a signal (SIGKILL for our own kills)."""
    truncated: bool = False
    """True when stdout or stderr was cut at ``max_output_bytes``."""
    cpu_s: float = 0.0
    max_rss_mb: float = 0.0
    message: str = ""
    """Human-readable detail for non-ok statuses (e.g. which limit, or the sandbox failure)."""
    session_lost: bool = False
    """Session mode: the session's state was discarded (timeout, crash, reclaim)."""
    files: dict[str, str] = field(default_factory=dict)
    """Files asked for with ``fetch_files`` that the program left in /tmp: path -> base64 content."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def infra_failed(self) -> bool:
        """The sandbox or its server failed, not the program (False for ok and for the program's failures)."""
        return self.status in INFRA_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExecResult:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_sandboxfusion(self) -> dict[str, Any]:
        """SandboxFusion's ``/run_code`` response: verl/ToRL clients read status and run_result."""
        if self.status == "sandbox_error":
            overall, run_status = "SandboxError", "Error"
        else:
            overall = "Success" if self.ok else "Failed"
            run_status = "TimeLimitExceeded" if self.status == "timeout" else "Finished"
        return {
            "status": overall,
            "message": self.message,
            "compile_result": None,
            "run_result": {
                "status": run_status,
                "execution_time": self.duration_s,
                "return_code": self.exit_code,
                "stdout": self.stdout,
                "stderr": self.stderr,
            },
            "executor_pod_name": None,
            "files": dict(self.files),
        }

    @classmethod
    def from_sandboxfusion(cls, d: dict[str, Any]) -> ExecResult:
        """Best-effort inverse of ``to_sandboxfusion`` (for responses of a real SandboxFusion)."""
        rr = d.get("run_result") or {}
        if d.get("status") == "SandboxError":
            status = "sandbox_error"
        elif rr.get("status") == "TimeLimitExceeded":
            status = "timeout"
        elif d.get("status") == "Success":
            status = "ok"
        else:
            status = "error"
        return cls(status=status, stdout=rr.get("stdout") or "", stderr=rr.get("stderr") or "",
                   exit_code=rr.get("return_code"), duration_s=rr.get("execution_time") or 0.0,
                   message=d.get("message") or "", files=dict(d.get("files") or {}))
