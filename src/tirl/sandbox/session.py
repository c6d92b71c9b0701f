"""Stateful sessions: one sandboxed interpreter per session keeps its globals between commands.

Use for multi-turn tool use where each code block builds on the previous ones (instead of
re-running all earlier blocks, which breaks randomness and file appends). The interpreter is forked
from the same zygote with the same isolation as a one-shot call, in a slot of its own
(``max_sessions`` slots exist, so the number of live sessions is capped).

Who is trusted. The interpreter runs the program, so nothing in it is: a program reads whatever the
runner keeps (frames, descriptors, memory) and rebinds whatever it calls. So the trusted side of a
session is here and in the zygote, outside the interpreter, and it relies on no secret:
- A command's window: the supervisor resumes the interpreter, hands it the code with three fresh
  pipes (stdout, stderr, status) and reads them only until the command is over. The status pipe
  belongs to that one command, so nothing can answer for another, and no nonce is needed; the
  control socket is one-way (requests in), so the program cannot write on it.
- The end of a command is the end of a thread: the runner (``_runner.session_loop``) runs each
  command on a new thread and never runs user code on its own. After the status, the supervisor
  checks from the host's /proc (``session_host``), not through the interpreter's own ``os`` which
  the program may have patched, that the interpreter is back to its one thread; a thread still
  running (a daemon, or the command itself staying on to read the next request) loses the session.
- Nothing runs between commands: the supervisor stops the interpreter (SIGSTOP) and kills every
  other process of the session (its descendants and its PID namespace's orphans) before it answers,
  and resumes it only to hand over the next command.
- Limits: each command has its wall clock; a session idle for ``session_idle_s`` is closed; the
  CPU time of everything the session ran is summed from /proc after each command and bounded by
  ``session_cpu_s`` (RLIMIT_CPU on the interpreter backs it up).
Why not a fresh fork of the interpreter per command, which would keep the runner out of reach: the
fork's state changes die with it, and the state is the point of a session.

What stays the program's: ok vs error (the rc it reports, like an exit code) and, inherent to any
stateful interpreter, how later commands behave. Earlier code can rebind builtins, install audit
hooks, finalizers or signal handlers through ctypes, or rewrite the interpreter's memory, and so
shape what a later command prints. That happens inside the later command's window and under its
limits: what a result holds was written in its own window, and nothing runs outside one.

On a timeout, OOM, crash, output overflow or CPU budget the process is killed, the result says
``session_lost=True``, and the next call starts a fresh interpreter. Commands run on threads, so
thread-local state (``threading.local``) does not carry over and ``signal.signal`` is refused;
context variables (decimal's context) do carry over.
"""
from __future__ import annotations

import array
import asyncio
import os
import re
import signal
import socket
import time

from .config import ExecResult
from .outcome import Observed, classify
from .plumbing import Drain, check_timeout
from .session_host import SessionProcs
from .supervisor import Proc, Supervisor

_STATUS = re.compile(rb"(\d{1,3}) ([01])\n")
_THREAD_GRACE_S = 0.25  # a command's thread is gone microseconds after it hands over its status
_RESUME_TICK_S = 0.01  # how often a running command's interpreter is checked for a stop


class Session:
    """``with sandbox.session() as s: s.run("x = 2"); s.run("print(x)")``."""

    def __init__(self, sup: Supervisor, loop: asyncio.AbstractEventLoop):
        self._sup, self._loop = sup, loop
        self.slot = sup.take_session_slot()
        if self.slot is None:
            raise RuntimeError(f"all {sup.cfg.max_sessions} session slots are in use "
                               "(close a session or raise SandboxConfig.max_sessions)")
        self._sock: socket.socket | None = None
        self._proc: Proc | None = None
        self._host: SessionProcs | None = None
        self._lock = asyncio.Lock()
        self._idle: asyncio.TimerHandle | None = None
        self._commands = 0  # an idle deadline armed before a later command no longer applies
        self._cpu_seen = 0.0  # the interpreter's CPU time up to the last command
        self.closed_why = ""
        self.restarts = 0
        loop.call_soon_threadsafe(self._arm_idle)

    # ---- the interpreter's life ---------------------------------------------------------------
    async def _start(self) -> str:
        sup = self._sup
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.shutdown(socket.SHUT_WR)  # one-way: requests in, never anything out
        st_r, st_w = os.pipe2(os.O_CLOEXEC)
        fds = [os.memfd_create("payload", os.MFD_CLOEXEC), os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC),
               os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)]
        os.write(fds[0], b'{"code": ""}')
        limits = sup.limits(sup.cfg.timeout_s)
        budget = sup.cfg.session_cpu_s
        limits["cpu_s"] = int(budget) + 1 if budget > 0 else 0  # RLIMIT_CPU over the interpreter's life
        st = Drain(st_r, 4096, self._loop)
        try:
            proc = await sup.spawn(self.slot, limits, [fds[0], fds[1], fds[2], fds[2], st_w, fds[2], theirs.fileno()],
                                   session=True)
        except (ConnectionError, OSError) as e:
            mine.close()
            st.close()
            return f"session start failed: {e!r}"
        finally:
            for fd in fds + [st_w]:
                os.close(fd)
            theirs.close()
        st.start()
        await asyncio.wait_for(st.done, 30)
        st.close()
        level = 1 if "pid_namespace" in sup.caps.get("features", []) else 0
        host = SessionProcs.find(sup.zygote_pid(), proc.pid, proc.init, level) if not st.buf else None
        if host is None:
            mine.close()
            sup.kill(proc)
            await sup.empty_slot(proc)
            return bytes(st.buf).decode(errors="replace") or "session start failed: its process is not in /proc"
        mine.setblocking(False)
        self._sock, self._proc, self._host = mine, proc, host
        return ""

    async def _stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._host is not None:
            self._host.close()
            self._host = None
        if self._proc is not None:
            self._sup.kill(self._proc)
            try:
                await asyncio.wait_for(asyncio.shield(self._proc.exited), 10)
            except (asyncio.TimeoutError, ConnectionError):
                pass
            await self._sup.empty_slot(self._proc)
            self._proc = None

    # ---- the idle deadline ----------------------------------------------------------------------
    def _arm_idle(self) -> None:
        idle = self._sup.cfg.session_idle_s
        if idle > 0 and self.slot is not None:
            n = self._commands
            self._idle = self._loop.call_later(idle, lambda: self._loop.create_task(self._expire(n)))

    def _disarm_idle(self) -> None:
        self._commands += 1
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    async def _expire(self, n: int) -> None:
        async with self._lock:
            if n != self._commands or self.slot is None:
                return
            await self._stop()
            self._sup.give_session_slot(self.slot)
            self.slot = None
            self.closed_why = f"session closed: idle for over {self._sup.cfg.session_idle_s:g} s"

    # ---- one command ----------------------------------------------------------------------------
    async def arun_here(self, code: str, timeout: float | None) -> ExecResult:
        """Runs on the sandbox's loop."""
        timeout = check_timeout(timeout, self._sup.cfg.timeout_s)
        async with self._lock:
            self._disarm_idle()
            try:
                return await self._run(code, timeout)
            finally:
                self._arm_idle()

    async def _run(self, code: str, timeout: float) -> ExecResult:
        sup, t0 = self._sup, time.monotonic()
        if self.slot is None:
            return ExecResult("sandbox_error", message=self.closed_why or "session is closed",
                              session_lost=bool(self.closed_why))
        if self._sock is None:
            err = await self._start()
            if err:
                return ExecResult("sandbox_error", message=err)
        lost, proc = False, self._proc

        def kill():
            nonlocal lost
            lost = True
            sup.kill(proc)

        cap = sup.cfg.max_output_bytes
        oom0 = sup.oom_kills(self.slot)
        out_r, err_r, st_r = self._hand_over(code)
        out, err = Drain(out_r, cap, self._loop, kill), Drain(err_r, cap, self._loop, kill)
        out.start()
        err.start()
        status = _read_line(st_r, self._loop)
        timed_out = not await self._wait(status, proc, t0 + timeout)
        line = status.result() if status.done() else b""
        status.cancel()
        m = _STATUS.fullmatch(line)
        garbage = "" if m or not line else "unexpected status from the session; session reset"
        why, cpu = "", 0.0
        if m and not lost:
            why, cpu = await self._settle()
        if not m or why or m.group(2) == b"1":
            kill()
        exit_ev = None
        if lost:
            try:
                exit_ev = await asyncio.wait_for(asyncio.shield(proc.exited), 10)
            except (asyncio.TimeoutError, ConnectionError):
                pass
        out.finish()
        err.finish()
        if lost:
            await self._stop()
            self.restarts += 1
        if why == "cpu":
            code_ = -9  # ended by us for its CPU: classified as the CPU limit
        elif m:
            code_ = int(m.group(1))
        elif exit_ev is not None:
            code_ = os.waitstatus_to_exitcode(exit_ev.get("status", 0))
        else:
            code_ = None
        res = classify(Observed(code_, bytes(out.buf), bytes(err.buf), time.monotonic() - t0,
                                out.overflow or err.overflow, cap, timed_out, garbage,
                                sup.oom_kills(self.slot) - oom0, cpu, sup.cfg.session_cpu_s))
        res.session_lost = lost
        res.cpu_s, self._cpu_seen = round(max(cpu - self._cpu_seen, 0.0), 4), 0.0 if lost else cpu
        notes = [res.message] if res.message else []
        if why == "threads":
            notes.append("the command left threads running")
        if why == "cpu":
            notes.append(f"session CPU budget of {sup.cfg.session_cpu_s:g} s used up")
        if why == "stop":
            notes.append("the interpreter could not be stopped after the command")
        if lost:
            notes.append("session state lost; the next call starts fresh")
        res.message = "; ".join(notes)
        return res

    def _hand_over(self, code: str) -> tuple[int, int, int]:
        """Send the request (code, and fresh stdout, stderr and status pipes) and resume the interpreter;
        returns the read ends."""
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        st_r, st_w = os.pipe2(os.O_CLOEXEC)
        memfd = os.memfd_create("code", os.MFD_CLOEXEC)
        try:
            os.write(memfd, code.encode("utf-8", errors="replace"))
            self._sock.sendmsg([b"run"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                           array.array("i", [memfd, out_w, err_w, st_w]))])
        except OSError:
            pass  # a dead session: no status comes and the exit is classified
        finally:
            for fd in (memfd, out_w, err_w, st_w):
                os.close(fd)
        self._host.signal(signal.SIGCONT)  # stopped since the last command; the request is waiting
        return out_r, err_r, st_r

    async def _wait(self, status: asyncio.Future, proc: Proc, deadline: float) -> bool:
        """Until the status or the exit (True) or the deadline (False); resumes the interpreter when it
        is found stopped (its own late stop after the last command, or the program's)."""
        while True:
            left = deadline - time.monotonic()
            done, _ = await asyncio.wait({status, proc.exited}, timeout=min(max(left, 0), _RESUME_TICK_S),
                                         return_when=asyncio.FIRST_COMPLETED)
            if done:
                return True
            if left <= _RESUME_TICK_S:
                return False
            self._host.resume_if_stopped()

    async def _settle(self) -> tuple[str, float]:
        """After a command's status: its thread is gone, the interpreter is stopped, every other process
        of the session is killed. Returns (why the session must end: "threads" | "stop" | "cpu" | "",
        the CPU time the session has used)."""
        host = self._host
        end = time.monotonic() + _THREAD_GRACE_S
        while host.threads() > 1 and time.monotonic() < end:
            await asyncio.sleep(0.001)
        stopped = await host.stop()
        tree = await host.kill_others()
        cpu = host.cpu_s(tree)
        if host.threads() > 1:
            return "threads", cpu
        if not stopped:
            return "stop", cpu
        budget = self._sup.cfg.session_cpu_s
        return ("cpu" if budget and cpu >= budget else ""), cpu

    # ---- public, synchronous and async ----------------------------------------------------------
    def run(self, code: str, timeout: float | None = None) -> ExecResult:
        return asyncio.run_coroutine_threadsafe(self.arun_here(code, timeout), self._loop).result()

    async def arun(self, code: str, timeout: float | None = None) -> ExecResult:
        fut = asyncio.run_coroutine_threadsafe(self.arun_here(code, timeout), self._loop)
        return await asyncio.wrap_future(fut)

    def close(self) -> None:
        async def go():
            async with self._lock:
                self._disarm_idle()
                if self.slot is None:
                    return
                await self._stop()
                self._sup.give_session_slot(self.slot)
                self.slot = None

        asyncio.run_coroutine_threadsafe(go(), self._loop).result()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_line(fd: int, loop: asyncio.AbstractEventLoop, cap: int = 64) -> asyncio.Future:
    """The first line written to ``fd`` (or what came before EOF or past ``cap``); closes ``fd``. A line,
    not EOF: the program may hold a copy of the write end."""
    fut, buf = loop.create_future(), bytearray()
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            chunk = os.read(fd, cap)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        buf.extend(chunk)
        if (not chunk or b"\n" in buf or len(buf) > cap) and not fut.done():
            fut.set_result(bytes(buf[:buf.find(b"\n") + 1 or None]) if chunk else bytes(buf))

    def close(_=None) -> None:
        loop.remove_reader(fd)
        os.close(fd)

    loop.add_reader(fd, readable)
    fut.add_done_callback(close)
    return fut
