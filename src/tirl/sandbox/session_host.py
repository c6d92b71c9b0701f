"""A session's processes as the host's /proc shows them: what the supervisor checks between commands.

Why from outside: the session's interpreter has run user code, so whatever it says about itself
(its thread count, its children, the result of its own ``os.kill``) is the program's to patch; the
host's /proc is not. The session is its interpreter (the state holder), everything below it, and
everything below its PID namespace's init (orphans are re-parented there).

Not covered: without a PID namespace (a machine where the probe found none), an orphan whose parent
died is re-parented to the zygote and is no longer seen as the session's; the slot's cgroup sweep
and per-uid sweep of ``Supervisor.empty_slot`` still take it when the session ends.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass

from .hostview import descendants

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name: [state, ppid, ...]; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _pid_ns(pid: int) -> int:
    """The PID namespace of ``pid`` (inode of /proc/PID/ns/pid), 0 when unreadable."""
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
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


@dataclass
class SessionProcs:
    """Host pids of a session's interpreter and of its PID namespace's init (0 when it has none)."""

    pid: int
    init: int
    zygote: int = 0
    ns: int = 0
    """The session's PID namespace: a process made with CLONE_PARENT is the zygote's child, not the
    interpreter's, and is found by its namespace instead."""
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
        procs = cls(found[pid], found.get(init, 0) if init else 0, zygote)
        procs.ns = _pid_ns(procs.pid) if procs.init else 0
        try:
            procs.pidfd = os.pidfd_open(procs.pid)  # signals reach this process even if its pid is reused
        except OSError:
            pass
        return procs

    def signal(self, sig: int) -> None:
        try:
            if self.pidfd >= 0:
                signal.pidfd_send_signal(self.pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def threads(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.pid}/task"))
        except OSError:
            return 0

    async def stop(self, wait_s: float = 1.0) -> None:
        """SIGSTOP the interpreter and wait until the kernel shows it stopped."""
        self.signal(signal.SIGSTOP)
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            st = _stat(self.pid)
            if st is None or st[0] in "TtZX":
                return
            await asyncio.sleep(0.0005)

    def tree(self) -> dict[int, list[str]]:
        """Every process of the session, zombies included, with its stat fields (one pass over /proc)."""
        stats, kids = {}, {}
        for name in os.listdir("/proc"):
            if name.isdigit() and (st := _stat(int(name))) is not None:
                stats[int(name)] = st
                kids.setdefault(int(st[1]), []).append(int(name))

        def below(roots):
            out, todo = {}, [p for p in roots if p in stats]
            while todo:
                p = todo.pop()
                out[p] = stats[p]
                todo += kids.get(p, [])
            return out

        roots = {self.pid, self.init}
        if self.ns:
            roots |= {p for p in below([self.zygote]) if _pid_ns(p) == self.ns}
        return below(roots)

    async def kill_others(self, deadline_s: float = 5.0) -> dict[int, list[str]]:
        """SIGKILL every live process of the session but the interpreter and the init, until none is
        left (a fork bomb's new children show in the next pass); returns the last look at the tree."""
        end = time.monotonic() + deadline_s
        while True:
            tree = self.tree()
            live = [p for p, st in tree.items() if p not in (self.pid, self.init) and st[0] not in "ZX"]
            if not live or time.monotonic() > end:
                return tree
            for p in live:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            await asyncio.sleep(0.001)

    @staticmethod
    def cpu_s(tree: dict[int, list[str]]) -> float:
        """CPU time of everything the session ran: each process's own time and that of the children it
        reaped (utime, stime, cutime, cstime); a zombie still shows its own."""
        return sum(sum(int(v) for v in st[11:15]) for st in tree.values()) / _TICK

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
