"""A session's processes as the kernel shows them from outside: what the supervisor checks between commands.

Why from outside: the session's interpreter has run user code, so whatever it says about itself
(its thread count, its children, the result of its own ``os.kill``) is the program's to patch; the
kernel's /proc, read by the supervisor, is not. The session is its interpreter (the state holder)
and every other process of its PID namespace.

Where the session has a PID namespace and a /proc of its own (full isolation), its members are read
from that /proc (``/proc/<interpreter>/root/proc``, checked to be that namespace's): a few entries,
orphans and processes made with CLONE_PARENT included. Otherwise the host's /proc is scanned for the
interpreter's descendants (~2 ms). Processes are signalled through descriptors of their /proc
directories, so a pid reused meanwhile is never hit.

Not covered: without a /proc of its own, a process made with CLONE_PARENT (the zygote's child, not the
interpreter's) and, without a PID namespace, an orphan re-parented to the zygote are not seen as the
session's; the session's end still takes them (its PID namespace's init, or the slot's cgroup and
per-uid sweeps of ``Supervisor.empty_slot``).
"""
from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass

from .hostview import descendants

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(path: str) -> list[str] | None:
    """The fields of PATH/stat after the command name: [state, ppid, ...]; None once it is gone."""
    try:
        with open(f"{path}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _pid_ns(path: str) -> int:
    """The PID namespace of the process at PATH (inode of PATH/ns/pid), 0 when unreadable."""
    try:
        return os.stat(f"{path}/ns/pid").st_ino
    except OSError:
        return 0


def _ns_pids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("NSpid:"):
                    return [int(v) for v in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []


def _signal(path: str, sig: int) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        signal.pidfd_send_signal(fd, sig)  # a /proc/<pid> directory is a pidfd
    except (ProcessLookupError, PermissionError):
        pass
    finally:
        os.close(fd)


@dataclass
class SessionProcs:
    """A session's interpreter and init (as /proc paths) and where its other processes are listed."""

    me: str
    """/proc/<interpreter> on the host."""
    init: str
    """/proc/<init of its PID namespace> on the host; "" when it has none."""
    view: str = ""
    """The session's own /proc as seen from the host; "" = scan the host's /proc below ``me`` and ``init``."""
    ns_me: str = ""
    """The interpreter in ``view`` (its pid in its own namespace)."""
    pidfd: int = -1

    @classmethod
    def find(cls, zygote: int, pid: int, init: int, level: int) -> SessionProcs | None:
        """The processes below ``zygote`` that the zygote knows as ``pid`` and ``init`` in its own PID
        namespace, which sits ``level`` namespaces below the host's /proc (0 or 1)."""
        found = {}
        for p in descendants(zygote):
            ns = _ns_pids(p)
            if len(ns) > level and ns[level] in (pid, init):
                found[ns[level]] = p
        if pid not in found:
            return None
        me = f"/proc/{found[pid]}"
        procs = cls(me, f"/proc/{found[init]}" if init in found else "")
        if procs.init:
            view, ns = f"{me}/root/proc", _pid_ns(me)
            if ns and _pid_ns(f"{view}/1") == ns:  # that namespace's own /proc, not the host's
                procs.view, procs.ns_me = view, f"{view}/{_ns_pids(found[pid])[-1]}"
        try:
            procs.pidfd = os.open(me, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return None
        return procs

    def signal(self, sig: int) -> None:
        try:
            signal.pidfd_send_signal(self.pidfd, sig)
        except ProcessLookupError:
            pass

    def resume_if_stopped(self) -> None:
        st = _stat(self.me)
        if st is not None and st[0] in "Tt":
            self.signal(signal.SIGCONT)

    def threads(self) -> int:
        try:
            return len(os.listdir(f"{self.me}/task"))
        except OSError:
            return 0

    async def stop(self, wait_s: float = 1.0) -> bool:
        """SIGSTOP the interpreter and wait until the kernel shows it stopped (False: it did not)."""
        self.signal(signal.SIGSTOP)
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            for _ in range(100):
                st = _stat(self.me)
                if st is None or st[0] in "TtZX":
                    return True
                os.sched_yield()
            await asyncio.sleep(0.0005)
        return False

    def members(self) -> dict[str, list[str]]:
        """Every process of the session (as a /proc path), zombies included, with its stat fields."""
        if self.view:
            try:
                names = [n for n in os.listdir(self.view) if n.isdigit()]
            except OSError:
                names = []
            out = {f"{self.view}/{n}": _stat(f"{self.view}/{n}") for n in names}
            return {p: st for p, st in out.items() if st is not None}
        stats, kids = {}, {}
        for name in os.listdir("/proc"):
            if name.isdigit() and (st := _stat(f"/proc/{name}")) is not None:
                stats[int(name)] = st
                kids.setdefault(int(st[1]), []).append(int(name))
        out, todo = {}, [int(p[6:]) for p in (self.me, self.init) if p and int(p[6:]) in stats]
        while todo:
            p = todo.pop()
            out[f"/proc/{p}"] = stats[p]
            todo += kids.get(p, [])
        return out

    async def kill_others(self, deadline_s: float = 5.0) -> dict[str, list[str]]:
        """SIGKILL every live process of the session but the interpreter and the init, until none is
        left (a fork bomb's new children show in the next pass); returns the last look at it."""
        keep = {self.me, self.init, self.ns_me, f"{self.view}/1" if self.view else ""}
        end = time.monotonic() + deadline_s
        while True:
            procs = self.members()
            live = [p for p, st in procs.items() if p not in keep and st[0] not in "ZX"]
            if not live or time.monotonic() > end:
                return procs
            for p in live:
                _signal(p, signal.SIGKILL)
            await asyncio.sleep(0.001)

    @staticmethod
    def cpu_s(procs: dict[str, list[str]]) -> float:
        """CPU time of everything the session ran: each process's own time and that of the children it
        reaped (utime, stime, cutime, cstime); a zombie still shows its own."""
        return sum(sum(int(v) for v in st[11:15]) for st in procs.values()) / _TICK

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
