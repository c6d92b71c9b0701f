"""Per-slot cgroups (memory + pids limits, OOM counting, kill-all) behind one interface for v1 and v2.

A slot is one concurrency lane of the sandbox: it gets a cgroup created once at start-up and reused
by every call that runs in it. The child joins its slot itself (before dropping privileges); the
supervisor reads the slot's member list to kill every descendant, double-forked daemons included,
and reads the OOM-kill counter to classify a call as ``memory`` from a trusted source.

Detection, not assumption: ``CgroupSlots.create`` returns None when neither hierarchy is writable
(no root, read-only cgroupfs, controllers not delegated); the sandbox then falls back to rlimits and
reports it. cgroup v2 support follows the kernel documentation but is untested on this machine
(v1 hybrid here); the v2 path needs a delegated subtree with the memory and pids controllers.
"""
from __future__ import annotations

import os
import secrets
import signal
import time

_V1_ROOT = "/sys/fs/cgroup"


def _own_cgroups() -> dict[str, str]:
    """controller name ("" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out = {}
    with open("/proc/self/cgroup") as fh:
        for line in fh:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(",") if ctrls else [""]:
                out[c] = path
    return out


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _v2_mount() -> str | None:
    for cand in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if os.path.exists(os.path.join(cand, "cgroup.controllers")):
            return cand
    return None


class CgroupSlots:
    """``n`` slot cgroups with memory and pids limits. Call ``close()`` to remove them."""

    def __init__(self, version: str, bases: dict[str, str], n: int):
        self.version = version
        self.bases = bases  # controller ("memory"/"pids" for v1, "" for v2) -> base dir
        self.n = n

    # ---- creation --------------------------------------------------------------------------
    @classmethod
    def create(cls, n: int, memory_bytes: int, max_pids: int) -> tuple[CgroupSlots | None, str]:
        """Returns (slots, "") or (None, reason)."""
        name = f"tirl-sandbox-{os.getpid()}-{secrets.token_hex(3)}"
        reasons = []
        for maker in (cls._create_v1, cls._create_v2):
            try:
                slots = maker(name, n)
            except OSError as e:
                reasons.append(f"{maker.__name__[8:]}: {e}")
                continue
            if slots is None:
                continue
            try:
                for i in range(n):
                    slots.set_limits(i, memory_bytes, max_pids)
                return slots, ""
            except OSError as e:
                slots.close()
                reasons.append(f"{slots.version} limits: {e}")
        return None, "; ".join(reasons) or "no writable cgroup hierarchy with memory and pids controllers"

    @classmethod
    def _create_v1(cls, name: str, n: int) -> CgroupSlots | None:
        own = _own_cgroups()
        roots = {c: os.path.join(_V1_ROOT, c) for c in ("memory", "pids")}
        if not all(os.path.exists(os.path.join(r, "cgroup.procs")) and c in own for c, r in roots.items()):
            return None
        bases = {}
        try:
            for c, r in roots.items():
                base = os.path.join(r + own[c], name)
                os.mkdir(base)
                bases[c] = base
                for i in range(n):
                    os.mkdir(os.path.join(base, f"s{i}"))
        except OSError:
            cls("v1", bases, n).close()
            raise
        return cls("v1", bases, n)

    @classmethod
    def _create_v2(cls, name: str, n: int) -> CgroupSlots | None:
        mnt = _v2_mount()
        own = _own_cgroups().get("")
        if mnt is None or own is None:
            return None
        parent = mnt + own
        if not {"memory", "pids"} <= set(_read(os.path.join(parent, "cgroup.controllers")).split()):
            return None
        base = os.path.join(parent, name)
        os.mkdir(base)
        slots = cls("v2", {"": base}, n)
        try:
            # Fails with EBUSY when our own cgroup holds processes (no-internal-process rule) unless
            # the controllers are already enabled by whoever delegated the subtree.
            ctl = _read(os.path.join(parent, "cgroup.subtree_control")).split()
            if not {"memory", "pids"} <= set(ctl):
                _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
            _write(os.path.join(base, "cgroup.subtree_control"), "+memory +pids")
            for i in range(n):
                os.mkdir(os.path.join(base, f"s{i}"))
        except OSError:
            slots.close()
            raise
        return slots

    def set_limits(self, i: int, memory_bytes: int, max_pids: int) -> None:
        if self.version == "v1":
            mem = self._dir("memory", i)
            _write(os.path.join(mem, "memory.limit_in_bytes"), str(memory_bytes))
            sw = os.path.join(mem, "memory.memsw.limit_in_bytes")
            if os.path.exists(sw):  # no swapping past the limit either
                _write(sw, str(memory_bytes))
            _write(os.path.join(self._dir("pids", i), "pids.max"), str(max_pids))
        else:
            d = self._dir("", i)
            _write(os.path.join(d, "memory.max"), str(memory_bytes))
            if os.path.exists(os.path.join(d, "memory.swap.max")):
                _write(os.path.join(d, "memory.swap.max"), "0")
            _write(os.path.join(d, "pids.max"), str(max_pids))

    # ---- per-call use ----------------------------------------------------------------------
    def _dir(self, ctrl: str, i: int) -> str:
        return os.path.join(self.bases[ctrl], f"s{i}")

    def procs_files(self, i: int) -> list[str]:
        """Files the child writes its pid into to join slot ``i``."""
        return [os.path.join(self._dir(c, i), "cgroup.procs") for c in self.bases]

    def members(self, i: int) -> list[int]:
        ctrl = "pids" if self.version == "v1" else ""
        try:
            return [int(p) for p in _read(os.path.join(self._dir(ctrl, i), "cgroup.procs")).split()]
        except OSError:
            return []

    def oom_kills(self, i: int) -> int:
        """Monotonic count of OOM kills in slot ``i`` (compare before/after a call)."""
        path = (os.path.join(self._dir("memory", i), "memory.oom_control") if self.version == "v1"
                else os.path.join(self._dir("", i), "memory.events"))
        try:
            for line in _read(path).splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill":
                    return int(v)
        except OSError:
            pass
        return 0

    def kill_pass(self, i: int) -> int:
        """One SIGKILL sweep over slot ``i``; returns how many members were found (0 = empty)."""
        if self.version == "v2" and os.path.exists(os.path.join(self._dir("", i), "cgroup.kill")):
            try:
                _write(os.path.join(self._dir("", i), "cgroup.kill"), "1")
            except OSError:
                pass
        pids = self.members(i)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def kill_all(self, i: int, deadline_s: float = 5.0) -> bool:
        """SIGKILL every process in slot ``i`` until it is empty. Returns False if it would not empty."""
        if self.version == "v2" and os.path.exists(os.path.join(self._dir("", i), "cgroup.kill")):
            try:
                _write(os.path.join(self._dir("", i), "cgroup.kill"), "1")
            except OSError:
                pass
        end = time.monotonic() + deadline_s
        while True:
            pids = self.members(i)
            if not pids:
                return True
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > end:
                return False
            # Killed tasks leave the cgroup only once the kernel has torn them down; the caller is
            # the event loop thread, so keep this wait short (it is microseconds in practice).
            time.sleep(0.0005)

    def close(self) -> None:
        for base in self.bases.values():
            for i in range(self.n):
                d = os.path.join(base, f"s{i}")
                for _ in range(200):
                    try:
                        os.rmdir(d)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:  # still has (dying) members
                        for pid in self.members(i):
                            try:
                                os.kill(pid, signal.SIGKILL)
                            except OSError:
                                pass
                        time.sleep(0.005)
            try:
                os.rmdir(base)
            except OSError:
                pass


def remove_stale(prefix: str = "tirl-sandbox-") -> int:
    """Remove leftover slot cgroups of dead sandboxes (e.g. after a crash). Returns how many."""
    removed = 0
    own = _own_cgroups()
    parents = [os.path.join(_V1_ROOT, c) + own[c] for c in ("memory", "pids") if c in own]
    if (m := _v2_mount()) and "" in own:
        parents.append(m + own[""])
    for parent in parents:
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            if not name.startswith(prefix):
                continue
            try:
                pid = int(name[len(prefix):].split("-")[0])
            except ValueError:
                continue
            if os.path.exists(f"/proc/{pid}"):
                continue
            base = os.path.join(parent, name)
            for sub in os.listdir(base):
                if os.path.isdir(os.path.join(base, sub)):
                    try:
                        os.rmdir(os.path.join(base, sub))
                    except OSError:
                        pass
            try:
                os.rmdir(base)
                removed += 1
            except OSError:
                pass
    return removed
