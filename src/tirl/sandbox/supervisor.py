"""The asyncio supervisor driving a warm zygote (see ``_zygote.py``); ``Sandbox`` is its friendly face.

Per call the supervisor takes a free slot (bounded concurrency = the slot pool), hands the zygote a
payload memfd (code, input files, files to fetch), a stdin descriptor, the stdout/stderr/set-up pipes
and a memfd for fetched files, then: drains both streams with a byte cap, enforces the wall-clock
deadline by killing the call (its PID-namespace init takes every descendant along; the slot cgroup is
swept too), and classifies the outcome from trusted sources only (``outcome.classify``).
The zygote is restarted lazily after it dies (in-flight calls then report ``sandbox_error``).
"""
from __future__ import annotations

import array
import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from .cgroups import CgroupSlots, remove_stale
from .config import ExecResult, SandboxConfig, SandboxUnavailable
from .enforcement import limit_report
from .hostview import BASE_ENV, descendants, hide_and_expose, lease_uid_block
from .outcome import Observed, classify
from .plumbing import Drain, check_fetch, check_files, check_timeout, memfd, read_fetched

_ZYGOTE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_zygote.py")
PRIMITIVES = ("cgroup", "namespaces", "pid_namespace", "tmpfs", "fs_hiding", "readonly_fs", "minimal_dev",
              "drop_privileges", "no_new_privs", "seccomp")


@dataclass
class Proc:
    """One sandboxed process (a call or a session) as the supervisor tracks it."""

    cid: int
    slot: int
    started: asyncio.Future
    exited: asyncio.Future
    pid: int = 0  # in the zygote's PID namespace (0 until started)
    init: int = 0  # its own PID namespace's init, seen from the zygote's (0: none)


class Supervisor:
    """Runs on one event loop. Use ``await Supervisor.create(cfg)``."""

    def __init__(self, cfg: SandboxConfig):
        self.cfg = cfg
        self.n = cfg.max_concurrency or os.cpu_count() or 1
        self.n_slots = self.n + max(cfg.max_sessions, 0)
        if self.n_slots > 255:
            raise ValueError("max_concurrency + max_sessions must be below 256")
        self.cg: CgroupSlots | None = None
        self.cg_reason = ""
        self.caps: dict = {}
        self.report: dict = {}
        self._ids = itertools.count(1)
        self._procs: dict[int, Proc] = {}
        self._free: asyncio.Queue[int] = asyncio.Queue()
        self._session_slots: list[int] = []
        self._slot_mem: dict[int, int] = {}
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._start_lock = asyncio.Lock()
        self._closed = False
        self._uid_lock = -1
        self.loop = asyncio.get_running_loop()
        self.uid0 = cfg.uid_base  # replaced by a leased block when running as root

    @classmethod
    async def create(cls, cfg: SandboxConfig) -> Supervisor:
        self = cls(cfg)
        try:
            if cfg.isolation != "none":
                if os.geteuid() == 0:
                    self.uid0, self._uid_lock = lease_uid_block(cfg.uid_base)
                    remove_stale()
                self.cg, self.cg_reason = CgroupSlots.create(self.n_slots, cfg.memory_mb << 20, cfg.max_pids,
                                                             cfg.cpu_quota)
            await self._start_zygote()
            self._check_level()
        except BaseException:
            await self.close()
            raise
        for i in range(self.n):
            self._free.put_nowait(i)
        self._session_slots = list(range(self.n, self.n_slots))
        return self

    # ---- zygote ----------------------------------------------------------------------------
    async def _start_zygote(self) -> None:
        cfg = self.cfg
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        errlog = os.memfd_create("zygote-stderr")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", _ZYGOTE, str(child.fileno())], env=dict(BASE_ENV), cwd="/",
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errlog,
                start_new_session=True)  # no terminal, no signals meant for the trainer's process group
        finally:
            child.close()
        hide, expose = hide_and_expose(cfg)
        parent.send(json.dumps({
            "preload": list(cfg.preload), "isolation": cfg.isolation, "seccomp": cfg.seccomp,
            "hide": hide, "expose": expose, "tmp_size_mb": cfg.tmp_size_mb,
            "shm_size_mb": cfg.shm_size_mb, "probe_uid": self.uid0 + 255,
            "cgroup_slots": [self.cg.procs_files(i) for i in range(self.n_slots)] if self.cg else [],
            # Without a cpu cgroup, a call's processes share the scheduler autogroup of its session.
            "deny_setsid": not (self.cg and self.cg.has_cpu),
        }).encode())
        parent.setblocking(False)
        try:
            msg = await asyncio.wait_for(self.loop.sock_recv(parent, 1 << 20), 120)
        except asyncio.TimeoutError:
            msg = b""
        if not msg:
            self._proc.kill()
            self._proc.wait()
            os.lseek(errlog, 0, 0)
            err = os.read(errlog, 1 << 16).decode(errors="replace")
            os.close(errlog)
            parent.close()
            raise SandboxUnavailable(f"zygote failed to start: {err[-2000:]}")
        os.close(errlog)
        self.caps = json.loads(msg)["caps"]
        self._sock = parent
        self.loop.add_reader(parent.fileno(), self._on_message)

    def _check_level(self) -> None:
        feats = set(self.caps.get("features", []))
        missing = dict(self.caps.get("missing", {}))
        if self.cg is None:
            missing["cgroup"] = self.cg_reason or "isolation disabled"
        else:
            feats.add("cgroup")
        for p in PRIMITIVES:  # every absent primitive is named, with a reason
            if p not in feats and p not in missing:
                missing[p] = "disabled: SandboxConfig.seccomp is false" if p == "seccomp" else "not available"
        if self.cfg.isolation == "none":
            level, missing = "none", {p: "isolation=none" for p in PRIMITIVES}
        else:
            level = "full" if all(p in feats for p in PRIMITIVES) else "partial"
        self.report = {
            "level": level, "cgroup": self.cg.version if self.cg else None,
            "present": [p for p in PRIMITIVES if p in feats], "missing": missing,
            "limits": self._limit_report(feats),
            "root": self.caps.get("root"), "preload_errors": self.caps.get("preload_errors", {}),
            "max_concurrency": self.n,
        }
        if self.cfg.isolation == "strict":
            absent = [p for p in PRIMITIVES if p not in feats]
            if absent:
                why = "; ".join(f"{p} ({missing.get(p, 'unavailable')})" for p in absent)
                raise SandboxUnavailable(f"isolation='strict' but missing: {why}")

    def _limit_report(self, feats: set) -> dict[str, str]:
        """How each limit is enforced here, in words; 'NOT ENFORCED' where it cannot be."""
        return limit_report(self.cfg, self.cg, self.cg_reason, self.caps, feats, self.limits(self.cfg.timeout_s)["as"])

    def _on_message(self) -> None:
        try:
            msg = self._sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            msg = b""
        if not msg:
            self._zygote_died()
            return
        ev = json.loads(msg)
        proc = self._procs.get(ev.get("id"))
        if proc is None:
            return
        if ev["event"] == "started":
            proc.pid, proc.init = int(ev.get("pid") or 0), int(ev.get("init") or 0)
            if not proc.started.done():
                proc.started.set_result(None)
        elif ev["event"] in ("exit", "killed") and not proc.exited.done():
            proc.exited.set_result(ev)

    def _zygote_died(self) -> None:
        if self._sock is not None:
            self.loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
        for p in self._procs.values():
            for fut in (p.started, p.exited):
                if not fut.done():
                    fut.set_exception(ConnectionError("zygote died"))

    async def ensure_zygote(self) -> None:
        if self._sock is None:
            async with self._start_lock:
                if self._sock is None and not self._closed:
                    await self._start_zygote()

    async def _send(self, obj: dict, fds: list[int] = ()) -> None:
        data = json.dumps(obj).encode()
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        while True:
            if self._sock is None:
                raise ConnectionError("zygote died")
            try:
                self._sock.sendmsg([data], anc)
                return
            except BlockingIOError:
                await asyncio.sleep(0.001)

    # ---- one-shot calls --------------------------------------------------------------------
    async def run(self, code: str, timeout: float | None = None, *, stdin: str | bytes | None = None,
                  files: dict | None = None, fetch_files: list[str] | None = None,
                  memory_mb: int | None = None) -> ExecResult:
        """Run ``code`` once. Raises ValueError for a malformed request (never for program faults)."""
        timeout = check_timeout(timeout, self.cfg.timeout_s)
        if not isinstance(code, str):
            raise ValueError(f"code must be a string, not {type(code).__name__}")
        payload = {"code": code, "files": check_files(files, self.cfg.tmp_size_mb << 20),
                   "fetch": check_fetch(fetch_files)}
        if memory_mb is not None and (not isinstance(memory_mb, int) or memory_mb <= 0):
            raise ValueError(f"memory_mb must be a positive integer, not {memory_mb!r}")
        stdin_b = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
        slot = await self._free.get()
        try:
            return await self._run_in_slot(slot, payload, stdin_b, timeout, memory_mb)
        finally:
            self._free.put_nowait(slot)

    async def run_batch(self, codes: list[str], timeout: float | None = None) -> list[ExecResult]:
        return list(await asyncio.gather(*(self.run(c, timeout) for c in codes)))

    def limits(self, timeout: float, memory_mb: int | None = None) -> dict:
        cfg = self.cfg
        mem = min(memory_mb or cfg.memory_mb, cfg.memory_mb) << 20
        return {
            "cpu_s": max(1, int(cfg.cpu_time_s or timeout + 1)),
            "fsize": cfg.file_size_mb << 20, "nofile": cfg.max_open_files, "nproc": cfg.max_pids,
            # Backup for machines without a memory cgroup; with one, leave headroom for virtual
            # reservations (BLAS, arenas) so the cgroup, which counts real pages, decides.
            "as": (mem * 2 + (512 << 20)) if self.cg is not None else mem + (256 << 20),
            "memory_bytes": mem,
        }

    async def _run_in_slot(self, slot: int, payload: dict, stdin: bytes, timeout: float,
                           memory_mb: int | None) -> ExecResult:
        t0 = time.monotonic()
        if self._closed:
            return ExecResult("sandbox_error", message="sandbox is closed")
        limits = self.limits(timeout, memory_mb)
        if self.cg is not None and self._slot_mem.get(slot, self.cfg.memory_mb << 20) != limits["memory_bytes"]:
            self.cg.set_memory(slot, limits["memory_bytes"])
            self._slot_mem[slot] = limits["memory_bytes"]
        mine: list[int] = []  # our descriptors, closed whatever happens
        try:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            mine += [out_r, out_w]
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            mine += [err_r, err_w]
            st_r, st_w = os.pipe2(os.O_CLOEXEC)
            mine += [st_r, st_w]
            files_fd = os.memfd_create("files", os.MFD_CLOEXEC)
            mine.append(files_fd)
            send = [memfd("payload", json.dumps(payload).encode()), memfd("stdin", stdin)]
            mine += send
            send += [out_w, err_w, st_w, files_fd]
            proc: Proc | None = None
            killed = False

            def kill() -> None:
                nonlocal killed
                killed = True
                if proc is not None:
                    self.kill(proc)

            cap = self.cfg.max_output_bytes
            out, err, st = Drain(out_r, cap, self.loop, kill), Drain(err_r, cap, self.loop, kill), Drain(st_r, 4096, self.loop)
            mine = [fd for fd in mine if fd not in (out_r, err_r, st_r)]
            oom0 = self.cg.oom_kills(slot) if self.cg else 0
            timed_out = False
            try:
                proc = await self.spawn(slot, limits, send)
                for fd in (out_w, err_w, st_w) + tuple(send[:2]):
                    os.close(fd)
                    mine.remove(fd)
                for d in (out, err, st):
                    d.start()
                try:
                    ev = await asyncio.wait_for(asyncio.shield(proc.exited), timeout)
                except asyncio.TimeoutError:
                    timed_out = True
                    kill()
                    ev = await asyncio.wait_for(proc.exited, 30)
                await self.empty_slot(proc)
                await asyncio.wait_for(asyncio.gather(out.done, err.done, st.done), 10)
            except (ConnectionError, asyncio.TimeoutError, OSError) as e:
                if proc is not None:
                    await self.empty_slot(proc)
                return ExecResult("sandbox_error", duration_s=time.monotonic() - t0,
                                  message=f"sandbox failure: {e!r}")
            finally:
                for d in (out, err, st):
                    d.close()
                if proc is not None:
                    self._procs.pop(proc.cid, None)
            code = os.waitstatus_to_exitcode(ev.get("status", 0))
            res = classify(Observed(
                code, bytes(out.buf), bytes(err.buf), time.monotonic() - t0, out.overflow or err.overflow, cap,
                timed_out, bytes(st.buf).decode(errors="replace"),
                (self.cg.oom_kills(slot) - oom0) if self.cg else 0, ev.get("cpu_s", 0.0), limits["cpu_s"],
                ev.get("maxrss_kb", 0)))
            if payload["fetch"] and not killed:
                res.files, why = read_fetched(files_fd, set(payload["fetch"]))
                res.message = "; ".join(m for m in (res.message, why) if m)
            return res
        finally:
            for fd in mine:
                os.close(fd)

    # ---- building blocks shared with sessions ------------------------------------------------
    async def spawn(self, slot: int, limits: dict, fds: list[int], session: bool = False) -> Proc:
        """Start one sandboxed process in ``slot`` with ``fds`` = [payload, stdin, stdout w, stderr w,
        set-up status w, files-out (, session control)]. The caller still owns (and closes) ``fds``."""
        await self.ensure_zygote()
        proc = Proc(next(self._ids), slot, self.loop.create_future(), self.loop.create_future())
        self._procs[proc.cid] = proc
        req = {"op": "run", "id": proc.cid, "slot": slot if self.cg else None, "uid": self.uid0 + slot,
               "limits": limits, "session": session, "env": {**BASE_ENV, **self.cfg.env}}
        try:
            await self._send(req, fds)
            await proc.started
        except BaseException:
            self._procs.pop(proc.cid, None)
            raise
        return proc

    def kill(self, proc: Proc) -> None:
        """SIGKILL the process and (through its PID-namespace init and the slot cgroup) all it started."""
        if self.cg is not None:
            self.cg.kill_pass(proc.slot)
        if self._sock is not None and not proc.exited.done():
            try:
                self._sock.send(json.dumps({"op": "kill", "id": proc.cid}).encode())
            except BlockingIOError:
                self.loop.create_task(self._send({"op": "kill", "id": proc.cid}))
            except OSError:
                pass

    async def empty_slot(self, proc: Proc) -> None:
        """After the process exited: nothing of it may survive (orphans, double-forked daemons)."""
        self._procs.pop(proc.cid, None)
        if self.cg is not None:
            end = time.monotonic() + 10
            while self.cg.kill_pass(proc.slot) and time.monotonic() < end:
                await asyncio.sleep(0.001)
            return
        feats = self.caps.get("features", [])
        if "pid_namespace" in feats or self._sock is None:
            return  # the zygote killed the call's PID-namespace init: the kernel empties the namespace
        if "drop_privileges" in feats and self.caps.get("root"):
            kid = next(self._ids)
            done = Proc(kid, proc.slot, self.loop.create_future(), self.loop.create_future())
            self._procs[kid] = done
            try:
                await self._send({"op": "killuid", "uid": self.uid0 + proc.slot, "id": kid})
                await asyncio.wait_for(done.exited, 10)
            except (ConnectionError, asyncio.TimeoutError, OSError):
                pass
            finally:
                self._procs.pop(kid, None)

    def leftovers(self) -> int:
        """Processes under the zygote beyond its own (0 when idle and clean): the zygote proper and the
        next call's PID-namespace init are expected when it runs in a PID namespace of its own."""
        if self._proc is None:
            return 0
        expected = 2 if "pid_namespace" in self.caps.get("features", []) else 0
        return max(len(descendants(self._proc.pid)) - expected, 0)

    def zygote_pid(self) -> int:
        """The zygote's process as the host sees it (0 while none runs): every sandboxed process is below it."""
        return self._proc.pid if self._proc is not None else 0

    def oom_kills(self, slot: int) -> int:
        return self.cg.oom_kills(slot) if self.cg else 0

    def take_session_slot(self) -> int | None:
        return self._session_slots.pop() if self._session_slots else None

    def give_session_slot(self, slot: int) -> None:
        self._session_slots.append(slot)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sock is not None:
            self.loop.remove_reader(self._sock.fileno())
            self._sock.close()  # the zygote exits on EOF and SIGKILLs its children
            self._sock = None
        if self._proc is not None:
            # Poll rather than wait in an executor thread: close() also runs from atexit, where Python
            # refuses to start the executor ("can't register atexit after shutdown") and the zygote lingered.
            deadline = self.loop.time() + 5
            while self._proc.poll() is None and self.loop.time() < deadline:
                await asyncio.sleep(0.01)
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self.cg is not None:
            for i in range(self.n_slots):
                self.cg.kill_all(i)
            self.cg.close()
            self.cg = None
        if self._uid_lock >= 0:
            os.close(self._uid_lock)
            self._uid_lock = -1


