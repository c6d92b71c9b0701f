"""The local sandbox: an asyncio supervisor driving a warm zygote (see ``_zygote.py``).

Per call the supervisor takes a free slot (bounded concurrency = the slot pool), creates three pipes
(stdout, stderr, set-up status) and a memfd holding the code, hands them to the zygote which forks
the child, then: drains both streams with a byte cap, enforces the wall-clock deadline with SIGKILL
of the whole slot, kills every remaining process of the slot once the child has exited (daemons
included), and classifies the outcome from trusted sources only (wait status from the zygote, OOM
counter of the slot cgroup, its own timers and byte counts).

``Sandbox`` wraps the supervisor for synchronous callers with a private event loop in a background
thread; ``arun`` works from any other event loop. Simplifications: the zygote is restarted lazily
after it dies (in-flight calls then report ``sandbox_error``); no PID namespace (see ``_zygote.py``).
"""
from __future__ import annotations

import array
import asyncio
import atexit
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from .cgroups import CgroupSlots, remove_stale
from .config import ExecResult, SandboxConfig

_ZYGOTE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_zygote.py")
PRIMITIVES = ("cgroup", "namespaces", "tmpfs", "fs_hiding", "setuid", "no_new_privs", "seccomp")
# Scrubbed environment for the zygote and the snippets: nothing of the trainer's (tokens, keys).
BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/tmp",
    "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8",
    # One thread per BLAS: calls run side by side, and a thread pool per fork would multiply.
    "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1",
}
_SYSTEM_DIRS = ("/", "/usr", "/etc", "/lib", "/lib64", "/bin", "/sbin", "/proc", "/sys", "/dev", "/var", "/run")


# MemoryError and subclasses such as numpy's ``numpy.core._exceptions._ArrayMemoryError``.
_MEMORY_ERROR = re.compile(r"^[\w.]*MemoryError\b")


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot start with the requested isolation (the message names what is missing)."""


@dataclass
class _Call:
    started: asyncio.Future
    exited: asyncio.Future
    pid: int | None = None


@dataclass
class _Drain:
    """Non-blocking reader of one pipe, keeping at most ``cap`` bytes."""

    fd: int
    cap: int
    loop: asyncio.AbstractEventLoop
    on_overflow: object = None
    buf: bytearray = field(default_factory=bytearray)
    overflow: bool = False
    done: asyncio.Future | None = None

    def start(self) -> None:
        os.set_blocking(self.fd, False)
        self.done = self.loop.create_future()
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.close()
            return
        room = self.cap - len(self.buf)
        if len(chunk) > room:
            self.buf += chunk[:max(room, 0)]
            if not self.overflow:
                self.overflow = True
                if self.on_overflow:
                    self.on_overflow()
        else:
            self.buf += chunk

    def close(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


def _hide_and_expose(cfg: SandboxConfig) -> tuple[list[str], list[str]]:
    hide = ["/root", "/home", "/work", "/tmp", "/var/tmp", "/dev/shm", "/mnt", "/media", "/srv", "/opt"]
    cwd = os.path.realpath(os.getcwd())
    if not any(cwd == d or d.startswith(cwd.rstrip("/") + "/") for d in _SYSTEM_DIRS):
        hide.append(cwd)
    hide += [os.path.realpath(p) for p in cfg.hide_paths]
    # The interpreter and its packages stay readable (read-only) so lazy imports work in the child;
    # project sources on sys.path (editable installs) stay hidden.
    expose = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    expose |= {os.path.realpath(p) for p in sys.path if p and ("site-packages" in p or "dist-packages" in p)}
    expose.add(os.path.dirname(os.path.realpath(sys.executable)))
    return sorted(set(hide)), sorted(p for p in expose if os.path.isdir(p))


class Supervisor:
    """Runs on one event loop. Use ``await Supervisor.create(cfg)``; ``Sandbox`` is the friendly face."""

    def __init__(self, cfg: SandboxConfig):
        self.cfg = cfg
        self.n = cfg.max_concurrency or os.cpu_count() or 1
        self.n_slots = self.n + max(cfg.max_sessions, 0)
        self.cg: CgroupSlots | None = None
        self.cg_reason = ""
        self.caps: dict = {}
        self.report: dict = {}
        self._ids = itertools.count(1)
        self._calls: dict[int, _Call] = {}
        self._free: asyncio.Queue[int] = asyncio.Queue()
        self._session_slots: list[int] = []
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._start_lock = asyncio.Lock()
        self._closed = False
        self.loop = asyncio.get_running_loop()
        # Offset per supervisor process so two sandboxes on one host never share a uid.
        self.uid0 = cfg.uid_base + (os.getpid() % 2_000_000) * 256
        if self.n_slots > 255:
            raise ValueError("max_concurrency + max_sessions must be below 256")

    @classmethod
    async def create(cls, cfg: SandboxConfig) -> Supervisor:
        self = cls(cfg)
        try:
            if cfg.isolation != "none" and os.geteuid() == 0:
                remove_stale()
                self.cg, self.cg_reason = CgroupSlots.create(self.n_slots, cfg.memory_mb << 20, cfg.max_pids)
            elif cfg.isolation != "none":
                self.cg_reason = "not root: cannot create cgroups"
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
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errlog)
        finally:
            child.close()
        hide, expose = _hide_and_expose(cfg)
        parent.send(json.dumps({
            "preload": list(cfg.preload), "isolation": cfg.isolation, "seccomp": cfg.seccomp,
            "hide": hide, "expose": expose, "tmp_size_mb": cfg.tmp_size_mb, "probe_uid": self.uid0 + 255,
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
        if self.cfg.isolation == "none":
            level, missing = "none", {p: "isolation=none" for p in PRIMITIVES}
        else:
            level = "full" if all(p in feats for p in PRIMITIVES) else "partial"
        self.report = {
            "level": level, "cgroup": self.cg.version if self.cg else None,
            "present": [p for p in PRIMITIVES if p in feats], "missing": missing,
            "root": self.caps.get("root"), "preload_errors": self.caps.get("preload_errors", {}),
            "max_concurrency": self.n,
        }
        if self.cfg.isolation == "strict":
            absent = [p for p in PRIMITIVES if p not in feats]
            if absent:
                why = "; ".join(f"{p} ({missing.get(p, 'unavailable')})" for p in absent)
                raise SandboxUnavailable(f"isolation='strict' but missing: {why}")

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
        call = self._calls.get(ev.get("id"))
        if call is None:
            return
        if ev["event"] == "started":
            call.pid = ev["pid"]
            if not call.started.done():
                call.started.set_result(ev["pid"])
        elif ev["event"] in ("exit", "killed") and not call.exited.done():
            call.exited.set_result(ev)

    def _zygote_died(self) -> None:
        if self._sock is not None:
            self.loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
        for call in self._calls.values():
            for fut in (call.started, call.exited):
                if not fut.done():
                    fut.set_exception(ConnectionError("zygote died"))

    async def _ensure_zygote(self) -> None:
        if self._sock is None:
            async with self._start_lock:
                if self._sock is None and not self._closed:
                    await self._start_zygote()

    async def _send(self, obj: dict, fds: list[int] = ()) -> None:
        data = json.dumps(obj).encode()
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        while True:
            try:
                self._sock.sendmsg([data], anc)
                return
            except BlockingIOError:
                await asyncio.sleep(0.001)

    # ---- calls -----------------------------------------------------------------------------
    async def run(self, code: str, timeout: float | None = None) -> ExecResult:
        slot = await self._free.get()
        try:
            return await self.run_in_slot(slot, code, timeout)
        finally:
            self._free.put_nowait(slot)

    async def run_batch(self, codes: list[str], timeout: float | None = None) -> list[ExecResult]:
        return list(await asyncio.gather(*(self.run(c, timeout) for c in codes)))

    def _limits(self, timeout: float) -> dict:
        cfg = self.cfg
        mem = cfg.memory_mb << 20
        return {
            "cpu_s": max(1, int(cfg.cpu_time_s or timeout + 1)),
            "fsize": cfg.file_size_mb << 20, "nofile": cfg.max_open_files, "nproc": cfg.max_pids,
            # Backup for machines without a memory cgroup; with one, leave headroom for virtual
            # reservations (BLAS, arenas) so the cgroup, which counts real pages, decides.
            "as": (mem * 2 + (512 << 20)) if self.cg is not None else mem + (256 << 20),
        }

    async def run_in_slot(self, slot: int, code: str, timeout: float | None) -> ExecResult:
        """Run ``code`` once in ``slot`` (which the caller owns). Never raises for program faults."""
        timeout = float(timeout if timeout is not None else self.cfg.timeout_s)
        t0 = time.monotonic()
        if self._closed:
            return ExecResult("sandbox_error", message="sandbox is closed")
        try:
            await self._ensure_zygote()
        except Exception as e:
            return ExecResult("sandbox_error", message=f"zygote restart failed: {e}")
        cid = next(self._ids)
        call = _Call(self.loop.create_future(), self.loop.create_future())
        self._calls[cid] = call
        pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(3)]
        memfd = os.memfd_create("code", os.MFD_CLOEXEC)
        view = memoryview(code.encode("utf-8", errors="replace"))
        while view:
            view = view[os.write(memfd, view):]
        killed_by_us = False

        def kill() -> None:
            nonlocal killed_by_us
            killed_by_us = True
            self._kill_slot(slot, call)

        cap = self.cfg.max_output_bytes
        out = _Drain(pipes[0][0], cap, self.loop, kill)
        err = _Drain(pipes[1][0], cap, self.loop, kill)
        st = _Drain(pipes[2][0], 4096, self.loop)
        oom0 = self.cg.oom_kills(slot) if self.cg else 0
        timed_out, lost = False, ""
        try:
            req = {"op": "run", "id": cid, "uid": self.uid0 + slot, "limits": self._limits(timeout),
                   "cgroups": self.cg.procs_files(slot) if self.cg else [],
                   "env": {**BASE_ENV, **self.cfg.env}}
            try:
                await self._send(req, [memfd, pipes[0][1], pipes[1][1], pipes[2][1]])
            finally:
                for fd in (memfd, pipes[0][1], pipes[1][1], pipes[2][1]):
                    os.close(fd)
            for d in (out, err, st):
                d.start()
            try:
                ev = await asyncio.wait_for(asyncio.shield(call.exited), timeout)
            except asyncio.TimeoutError:
                timed_out = True
                kill()
                ev = await asyncio.wait_for(call.exited, 30)
            await self._empty_slot(slot, call)
            await asyncio.wait_for(asyncio.gather(out.done, err.done, st.done), 10)
        except (ConnectionError, asyncio.TimeoutError, OSError) as e:
            lost = f"sandbox failure: {e!r}"
            ev = None
        finally:
            for d in (out, err, st):
                d.close()
            self._calls.pop(cid, None)
        dur = time.monotonic() - t0
        if ev is None:
            await self._empty_slot(slot, call)
            return ExecResult("sandbox_error", duration_s=dur, message=lost)
        oom = (self.cg.oom_kills(slot) - oom0) if self.cg else 0
        return _classify(ev, out, err, st, dur, timed_out, killed_by_us, oom, self._limits(timeout)["cpu_s"])

    def _kill_slot(self, slot: int, call: _Call) -> None:
        if self.cg is not None:
            self.cg.kill_pass(slot)
        if call.pid is not None and not call.exited.done():
            try:  # the zygote has not reaped it yet, so the pid cannot have been reused
                os.kill(call.pid, signal.SIGKILL)
            except OSError:
                pass
        if self.cg is None and call.pid is not None:
            try:
                os.killpg(call.pid, signal.SIGKILL)
            except OSError:
                pass

    async def _empty_slot(self, slot: int, call: _Call) -> None:
        """After the call: nothing of it may survive (orphans, double-forked daemons)."""
        if self.cg is not None:
            end = time.monotonic() + 10
            while self.cg.kill_pass(slot) and time.monotonic() < end:
                await asyncio.sleep(0.001)
            return
        self._kill_slot(slot, call)
        if "setuid" in self.caps.get("features", []) and self._sock is not None:
            # No cgroup: a helper with the slot's uid kills everything of that uid.
            kid = next(self._ids)
            done = _Call(self.loop.create_future(), self.loop.create_future())
            self._calls[kid] = done
            try:
                await self._send({"op": "killuid", "uid": self.uid0 + slot, "id": kid})
                await asyncio.wait_for(done.exited, 10)
            except (ConnectionError, asyncio.TimeoutError, OSError):
                pass
            finally:
                self._calls.pop(kid, None)

    # ---- sessions' slots -------------------------------------------------------------------
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
            try:
                await asyncio.wait_for(self.loop.run_in_executor(None, self._proc.wait), 5)
            except asyncio.TimeoutError:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self.cg is not None:
            for i in range(self.n_slots):
                self.cg.kill_all(i)
            self.cg.close()
            self.cg = None


def _classify(ev, out, err, st, dur, timed_out, killed_by_us, oom, cpu_limit) -> ExecResult:
    stdout = bytes(out.buf).decode("utf-8", errors="replace")
    stderr = bytes(err.buf).decode("utf-8", errors="replace")
    status_raw = ev.get("status", 0)
    code = os.waitstatus_to_exitcode(status_raw)
    sig = signal.Signals(-code).name if code < 0 and -code in signal.valid_signals() else None
    res = ExecResult("ok", stdout, stderr, code, dur, sig, out.overflow or err.overflow,
                     cpu_s=round(ev.get("cpu_s", 0.0), 4), max_rss_mb=round(ev.get("maxrss_kb", 0) / 1024, 1))
    if st.buf:
        res.status, res.message = "sandbox_error", bytes(st.buf).decode(errors="replace")
    elif out.overflow or err.overflow:
        res.status, res.message = "output_limit", f"output exceeded {out.cap} bytes; process killed"
    elif timed_out:
        res.status, res.message = "timeout", f"wall-clock limit of {dur:.1f}s exceeded; process killed"
    elif oom > 0:
        res.status, res.message = "memory", "memory limit exceeded (OOM kill)"
    elif sig == "SIGXCPU" or (sig == "SIGKILL" and res.cpu_s >= cpu_limit):
        res.status, res.message = "timeout", "CPU time limit exceeded"
    elif sig is not None:
        res.status, res.message = "killed", f"terminated by {sig}"
    elif code != 0:
        # MemoryError is the interpreter's report of a failed allocation (RLIMIT_AS); a program can
        # fake it, but only to turn its own failure into another failure status.
        tail = stderr.rstrip().rsplit("\n", 1)[-1]
        res.status = "memory" if _MEMORY_ERROR.match(tail) else "error"
    return res


class Sandbox:
    """Run untrusted Python snippets. Usable from synchronous code and (via ``arun``) async code.

    >>> with Sandbox() as sb:
    ...     sb.run("print(6 * 7)").stdout
    '42\\n'
    """

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tirl-sandbox", daemon=True)
        self._thread.start()
        self._closed = False
        try:
            self._sup: Supervisor = self._call(Supervisor.create(self.config))
        except BaseException:
            self._stop_loop()
            raise
        atexit.register(self.close)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @property
    def isolation(self) -> dict:
        """What this sandbox achieved: level ("full" | "partial" | "none"), present/missing primitives."""
        return dict(self._sup.report)

    def run(self, code: str, timeout: float | None = None) -> ExecResult:
        return self._call(self._sup.run(code, timeout))

    def run_batch(self, codes: list[str], timeout: float | None = None) -> list[ExecResult]:
        """Run all ``codes`` with at most ``max_concurrency`` at once; results in input order."""
        return self._call(self._sup.run_batch(list(codes), timeout))

    async def arun(self, code: str, timeout: float | None = None) -> ExecResult:
        fut = asyncio.run_coroutine_threadsafe(self._sup.run(code, timeout), self._loop)
        return await asyncio.wrap_future(fut)

    async def arun_batch(self, codes: list[str], timeout: float | None = None) -> list[ExecResult]:
        fut = asyncio.run_coroutine_threadsafe(self._sup.run_batch(list(codes), timeout), self._loop)
        return await asyncio.wrap_future(fut)

    def session(self):
        """A stateful session (globals survive between calls); see ``tirl.sandbox.session``."""
        from .session import Session

        return Session(self)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            self._call(self._sup.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
