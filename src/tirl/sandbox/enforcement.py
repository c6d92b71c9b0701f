"""How each limit is enforced on this machine, in words: the ``limits`` of the isolation report.

Every limit the sandbox cannot hold here says ``NOT ENFORCED`` and why (``isolation.summarise`` lists
those keys in a run's summary). The figures come from the same config the calls run under.
Not covered: kernel memory a call holds outside RLIMIT_AS where no cgroup counts it: socketpair buffers
at their default size (~0.4 MB a pair, so ~50 MB a process under RLIMIT_NOFILE 256; raising them is
denied) and pipe buffers (bounded by the host's pipe-user-pages-soft, 64 MB per user).
"""
from __future__ import annotations

from .config import SandboxConfig


def autogroups_on() -> bool:
    """Without a cpu cgroup, fairness between calls rests on the kernel giving each session its own autogroup."""
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            return f.read().strip() != "0"
    except OSError:
        return False  # a kernel without CONFIG_SCHED_AUTOGROUP


def limit_report(cfg: SandboxConfig, cg, cg_reason: str, caps: dict, feats: set, as_bytes: int) -> dict[str, str]:
    """``cg``: the slot cgroups (None without), ``caps``: what the zygote reported, ``feats``: the
    primitives that work, ``as_bytes``: RLIMIT_AS of one process of a call."""
    cpu_share = ("cpu cgroup per slot (equal weight)" if cg and cg.has_cpu else
                 "NOT ENFORCED: no cpu cgroup and no seccomp to keep a call in one autogroup"
                 if "seccomp" not in feats else
                 "NOT ENFORCED: no cpu cgroup and the host disabled scheduler autogroups "
                 "(kernel.sched_autogroup_enabled=0)" if not autogroups_on() else
                 "scheduler autogroup per call (setsid denied inside)")
    return {
        "wall_clock": "SIGKILL of the whole call from outside",
        "memory": "cgroup memory limit for the whole call (its /tmp and /dev/shm included)" if cg else
                  _memory_without_cgroup(cfg, cg_reason, feats, as_bytes >> 20),
        "host_oom": _host_oom(caps, feats),
        "pids": "cgroup pids limit" if cg else
                ("RLIMIT_NPROC per call (own uid or user namespace)" if "drop_privileges" in feats else
                 "NOT ENFORCED (no cgroup, no per-call uid)"),
        "cpu_share": cpu_share,
        "cleanup": "PID namespace per call (its init takes every descendant)" if "pid_namespace" in feats else
                   ("cgroup sweep" if cg else "per-uid sweep" if caps.get("root") else
                    "process group only (setpgid/setsid denied): NOT ENFORCED for a process that escapes it"),
    }


def _memory_without_cgroup(cfg: SandboxConfig, cg_reason: str, feats: set, as_mb: int) -> str:
    """RLIMIT_AS counts one process's mappings only: a call of many processes is not bounded, and without
    the syscall filter neither is one process (memfd and SysV shared memory pages count against no rlimit)."""
    tmpfs = f"+ {cfg.tmp_size_mb} MB /tmp + {cfg.shm_size_mb} MB /dev/shm"
    if "seccomp" in feats:
        per_proc = f"each process is held to RLIMIT_AS ({as_mb} MB; memfd and SysV IPC denied)"
    else:
        per_proc = f"RLIMIT_AS ({as_mb} MB) per process, which memfd and SysV shared memory escape (no seccomp)"
    return (f"NOT ENFORCED for the call: no memory cgroup ({cg_reason or 'isolation disabled'}); {per_proc}, "
            f"but up to {cfg.max_pids} processes of one call may hold {cfg.max_pids} x {as_mb} MB {tmpfs}")


def _host_oom(caps: dict, feats: set) -> str:
    """oom_score_adj 1000, set by the zygote for every call; root's write also sets the floor no call can go
    below, otherwise only a read-only /proc inside keeps a call from lowering its own."""
    adj = caps.get("oom_score_adj")
    if adj != 1000:
        return f"NOT ENFORCED: oom_score_adj could not be raised ({adj}); the kernel may kill the trainer first"
    own_proc = {"namespaces", "pid_namespace"} <= feats
    sealed = caps.get("root") or ("drop_privileges" in feats if own_proc else "readonly_fs" in feats)
    if not sealed:
        return "NOT ENFORCED: oom_score_adj 1000, but a call may lower its own to 0 (/proc writable inside)"
    return "oom_score_adj 1000: the kernel's OOM killer takes a call's processes before the trainer's"
