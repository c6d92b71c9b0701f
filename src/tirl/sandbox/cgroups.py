"""Per-slot cgroups (memory, pids, cpu share, OOM counting, kill-all) behind one interface for v1 and v2.

A slot is one concurrency lane of the sandbox: it gets a cgroup created once at start-up and reused
by every call that runs in it. The child joins its slot itself (through a descriptor the zygote opened
before the filesystem went read-only); the supervisor reads the slot's members to kill stragglers and
its OOM-kill counter to classify a call as ``memory``. Equal cpu weight per slot keeps a call that
forks busy processes from starving its neighbours.

Detection, not assumption: ``CgroupSlots.create`` returns (None, reason) when no hierarchy is
writable; the sandbox then reports which limits are not enforced.

cgroup v2 follows the kernel's rules: controllers are enabled top-down through ``subtree_control``,
and a non-root cgroup with controllers enabled for its children may hold no processes. So the
supervisor first moves itself into a leaf of its own (``<own>/tirl-sandbox-PID-X/supervisor``), then
enables the controllers in its former cgroup (possible only once that holds no other process, or
when the delegating manager already enabled them), then creates the slots beside its leaf. All file
operations go through ``fs`` so tests can run this against a fake tree that enforces those rules.

Tested: v1 on a real kernel (root); the v2 set-up against ``tests/sandbox/fake_cgroupfs.py``, whose
rules are replayed on a real cgroup2 mount (in a private mount namespace) by the test suite. Not yet
run on a real v2 kernel with memory/pids/cpu delegated: the limit files themselves (memory.max,
pids.max, cpu.weight, cpu.max), the oom_kill counter in memory.events, cgroup.kill, and delegation
through systemd (``user@.service``, ``Delegate=yes`` scopes).
"""
from __future__ import annotations

import errno
import os
import secrets
import signal
import time

_V1_ROOT = "/sys/fs/cgroup"
_V2_CTRLS = ("memory", "pids", "cpu")


class RealFS:
    """The file operations cgroup code needs; a fake with the same methods stands in for tests."""

    root = "/sys/fs/cgroup"

    def own_cgroups(self) -> dict[str, str]:
        """controller name ("" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
        out = {}
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                for c in ctrls.split(",") if ctrls else [""]:
                    out[c] = path
        return out

    def read(self, path: str) -> str:
        with open(path) as fh:
            return fh.read()

    def write(self, path: str, value: str) -> None:
        with open(path, "w") as fh:
            fh.write(value)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def writable(self, path: str) -> bool:
        return os.access(path, os.W_OK)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)

    def pid_alive(self, pid: int) -> bool:
        return os.path.exists(f"/proc/{pid}")


def _v2_mount(fs) -> str | None:
    for cand in (fs.root, os.path.join(fs.root, "unified")):
        if fs.exists(os.path.join(cand, "cgroup.controllers")):
            return cand
    return None


class CgroupSlots:
    """``n`` slot cgroups with memory, pids and (when available) cpu limits. ``close()`` removes them."""

    def __init__(self, version: str, bases: dict[str, str], n: int, fs=None):
        self.version = version
        self.bases = bases  # controller ("memory"/"pids"/"cpu" for v1, "" for v2) -> base dir
        self.n = n
        self.fs = fs or RealFS()
        self.has_cpu = "cpu" in bases if version == "v1" else True

    # ---- creation --------------------------------------------------------------------------
    @classmethod
    def create(cls, n: int, memory_bytes: int, max_pids: int, cpu_quota: float = 0.0,
               fs=None) -> tuple[CgroupSlots | None, str]:
        """Returns (slots, "") or (None, reason)."""
        fs = fs or RealFS()
        name = f"tirl-sandbox-{os.getpid()}-{secrets.token_hex(3)}"
        reasons = []
        for maker in (cls._create_v1, cls._create_v2):
            try:
                slots = maker(fs, name, n)
            except OSError as e:
                where = f" ({e.filename})" if getattr(e, "filename", None) else ""
                reasons.append(f"{maker.__name__[8:]}: {e.strerror or e}{where}")
                continue
            if slots is None:
                continue
            try:
                for i in range(n):
                    slots.set_limits(i, memory_bytes, max_pids, cpu_quota)
                return slots, ""
            except OSError as e:
                slots.close()
                reasons.append(f"{slots.version} limits: {e}")
        return None, "; ".join(reasons) or "no writable cgroup hierarchy with memory and pids controllers"

    @classmethod
    def _create_v1(cls, fs, name: str, n: int) -> CgroupSlots | None:
        own = fs.own_cgroups()
        roots = {c: os.path.join(fs.root, c) for c in ("memory", "pids", "cpu")}
        usable = {c: r for c, r in roots.items() if fs.exists(os.path.join(r, "cgroup.procs")) and c in own}
        if not {"memory", "pids"} <= set(usable):
            return None
        bases = {}
        try:
            for c, r in usable.items():
                base = os.path.join(r + own[c], name)
                try:
                    fs.mkdir(base)
                except OSError:
                    if c == "cpu":  # a cpu share is a bonus on v1; memory and pids are not
                        continue
                    raise
                bases[c] = base
                for i in range(n):
                    fs.mkdir(os.path.join(base, f"s{i}"))
        except OSError:
            cls("v1", bases, n, fs).close()
            raise
        return cls("v1", bases, n, fs)

    @classmethod
    def _create_v2(cls, fs, name: str, n: int) -> CgroupSlots | None:
        mnt = _v2_mount(fs)
        own = fs.own_cgroups().get("")
        if mnt is None or own is None:
            return None
        parent = os.path.join(mnt, own.lstrip("/")).rstrip("/")
        avail = set(fs.read(os.path.join(parent, "cgroup.controllers")).split())
        if not {"memory", "pids"} <= avail:
            raise OSError(errno.ENOENT, f"memory and pids controllers not delegated to {parent} "
                                        f"(available: {' '.join(sorted(avail)) or 'none'})")
        want = [c for c in _V2_CTRLS if c in avail]
        base = os.path.join(parent, name)
        fs.mkdir(base)
        slots = cls("v2", {"": base}, n, fs)
        slots.has_cpu = "cpu" in want
        try:
            enabled = set(fs.read(os.path.join(parent, "cgroup.subtree_control")).split())
            if not set(want) <= enabled:
                # No internal processes: leave our cgroup for a leaf of our own before enabling.
                leaf = os.path.join(base, "supervisor")
                fs.mkdir(leaf)
                fs.write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
                try:
                    fs.write(os.path.join(parent, "cgroup.subtree_control"),
                             " ".join(f"+{c}" for c in want if c not in enabled))
                except OSError as e:
                    if e.errno == errno.EBUSY:
                        raise OSError(errno.EBUSY, f"{parent} holds other processes, so its controllers cannot "
                                                   "be enabled; start the trainer in a delegated cgroup of its own "
                                                   "(e.g. systemd-run --user --scope -p Delegate=yes)") from None
                    raise
            fs.write(os.path.join(base, "cgroup.subtree_control"), " ".join(f"+{c}" for c in want))
            for i in range(n):
                fs.mkdir(os.path.join(base, f"s{i}"))
        except OSError:
            slots.close()
            raise
        return slots

    def set_limits(self, i: int, memory_bytes: int, max_pids: int, cpu_quota: float = 0.0) -> None:
        self.set_memory(i, memory_bytes)
        fs = self.fs
        if self.version == "v1":
            fs.write(os.path.join(self._dir("pids", i), "pids.max"), str(max_pids))
            if "cpu" in self.bases:
                d = self._dir("cpu", i)
                fs.write(os.path.join(d, "cpu.shares"), "1024")
                if cpu_quota > 0:
                    fs.write(os.path.join(d, "cpu.cfs_period_us"), "100000")
                    fs.write(os.path.join(d, "cpu.cfs_quota_us"), str(int(cpu_quota * 100000)))
        else:
            d = self._dir("", i)
            if fs.exists(os.path.join(d, "memory.swap.max")):
                fs.write(os.path.join(d, "memory.swap.max"), "0")
            fs.write(os.path.join(d, "pids.max"), str(max_pids))
            if self.has_cpu:
                fs.write(os.path.join(d, "cpu.weight"), "100")
                if cpu_quota > 0:
                    fs.write(os.path.join(d, "cpu.max"), f"{int(cpu_quota * 100000)} 100000")

    def set_memory(self, i: int, memory_bytes: int) -> None:
        fs = self.fs
        if self.version == "v1":
            mem = self._dir("memory", i)
            sw = os.path.join(mem, "memory.memsw.limit_in_bytes")
            # memsw must stay >= the memory limit: lower it second when shrinking, first when growing.
            cur = int(fs.read(os.path.join(mem, "memory.limit_in_bytes")).strip() or 0) if fs.exists(sw) else 0
            order = ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
            if fs.exists(sw) and memory_bytes > cur:
                order.reverse()
            for f in order:
                if f == "memory.limit_in_bytes" or fs.exists(sw):  # no swapping past the limit either
                    fs.write(os.path.join(mem, f), str(memory_bytes))
        else:
            fs.write(os.path.join(self._dir("", i), "memory.max"), str(memory_bytes))

    # ---- per-call use ----------------------------------------------------------------------
    def _dir(self, ctrl: str, i: int) -> str:
        return os.path.join(self.bases[ctrl], f"s{i}")

    def procs_files(self, i: int) -> list[str]:
        """Files a process writes "0" into to join slot ``i``."""
        return [os.path.join(self._dir(c, i), "cgroup.procs") for c in self.bases]

    def members(self, i: int) -> list[int]:
        ctrl = "pids" if self.version == "v1" else ""
        try:
            return [int(p) for p in self.fs.read(os.path.join(self._dir(ctrl, i), "cgroup.procs")).split()]
        except OSError:
            return []

    def oom_kills(self, i: int) -> int:
        """Monotonic count of OOM kills in slot ``i`` (compare before/after a call)."""
        path = (os.path.join(self._dir("memory", i), "memory.oom_control") if self.version == "v1"
                else os.path.join(self._dir("", i), "memory.events"))
        try:
            for line in self.fs.read(path).splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill":
                    return int(v)
        except OSError:
            pass
        return 0

    def kill_pass(self, i: int) -> int:
        """One SIGKILL sweep over slot ``i``; returns how many members were found (0 = empty)."""
        if self.version == "v2" and self.fs.exists(os.path.join(self._dir("", i), "cgroup.kill")):
            try:
                self.fs.write(os.path.join(self._dir("", i), "cgroup.kill"), "1")
            except OSError:
                pass
        pids = self.members(i)
        for pid in pids:
            try:
                self.fs.kill(pid)
            except ProcessLookupError:
                pass
        return len(pids)

    def kill_all(self, i: int, deadline_s: float = 5.0) -> bool:
        """SIGKILL every process in slot ``i`` until it is empty. Returns False if it would not empty."""
        end = time.monotonic() + deadline_s
        while self.kill_pass(i):
            if time.monotonic() > end:
                return False
            # Killed tasks leave the cgroup only once the kernel has torn them down; the caller is
            # the event loop thread, so keep this wait short (it is microseconds in practice).
            time.sleep(0.0005)
        return True

    def close(self) -> None:
        fs = self.fs
        for base in self.bases.values():
            for i in range(self.n):
                d = os.path.join(base, f"s{i}")
                for _ in range(200):
                    try:
                        fs.rmdir(d)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:  # still has (dying) members
                        self.kill_pass(i)
                        time.sleep(0.005)
            if self.version == "v2":
                self._leave_leaf(base)
            try:
                fs.rmdir(base)
            except OSError:
                pass

    def _leave_leaf(self, base: str) -> None:
        """Our own leaf cannot be removed while we are in it: move back up when the parent allows
        processes again (nothing enabled), else leave it for ``remove_stale`` after we exit."""
        leaf = os.path.join(base, "supervisor")
        if not self.fs.exists(leaf):
            return
        parent = os.path.dirname(base)
        try:
            self.fs.write(os.path.join(parent, "cgroup.procs"), str(os.getpid()))
            self.fs.rmdir(leaf)
        except OSError:
            pass


def remove_stale(prefix: str = "tirl-sandbox-", fs=None) -> int:
    """Remove leftover slot cgroups of dead sandboxes (e.g. after a crash). Returns how many."""
    fs = fs or RealFS()
    removed = 0
    own = fs.own_cgroups()
    parents = [os.path.join(fs.root, c) + own[c] for c in ("memory", "pids", "cpu") if c in own]
    if (m := _v2_mount(fs)) and "" in own:
        parents.append(os.path.join(m, own[""].lstrip("/")).rstrip("/"))
    for parent in parents:
        try:
            names = fs.listdir(parent)
        except OSError:
            continue
        for name in names:
            if not name.startswith(prefix):
                continue
            try:
                pid = int(name[len(prefix):].split("-")[0])
            except ValueError:
                continue
            if fs.pid_alive(pid):
                continue
            base = os.path.join(parent, name)
            try:
                subs = fs.listdir(base)
            except OSError:
                continue
            for sub in subs:
                try:
                    fs.rmdir(os.path.join(base, sub))
                except OSError:
                    pass
            try:
                fs.rmdir(base)
                removed += 1
            except OSError:
                pass
    return removed
