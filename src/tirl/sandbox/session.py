"""Stateful sessions: one sandboxed process per session keeps its globals between calls.

Use for multi-turn tool use where each code block builds on the previous ones (instead of
re-running all earlier blocks, which breaks randomness and file appends). The session process is
forked from the same zygote with the same isolation as a one-shot call, in a slot of its own
(``max_sessions`` slots exist, so the number of live sessions is capped). Time, memory, output caps
and signals are enforced from outside exactly as for ``Sandbox.run``; on a timeout, OOM, crash or
output overflow the process is killed, the result says ``session_lost=True``, and the next call
starts a fresh interpreter.

Control channel: each command carries a fresh random nonce; the runner answers only after killing
every other process of the session, and a command that leaves a thread running loses the session.
So nothing one command starts can answer (or write output) for a later one, and any reply that is
not exactly the expected one (garbage, wrong nonce, extra bytes) is ``sandbox_error`` with the
session reset, never an exception. Inherent caveat: ok vs error of one command is reported by the
runner inside the sandboxed process, so a program can forge its own ok/error.
Not covered: idle reclaim (close sessions you no longer need, or use ``with``).
"""
from __future__ import annotations

import array
import asyncio
import json
import os
import secrets
import socket
import time

from .config import ExecResult
from .outcome import Observed, classify
from .plumbing import Drain, check_timeout
from .supervisor import Proc, Supervisor


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
        self._lock = asyncio.Lock()
        self.restarts = 0

    async def _start(self) -> str:
        sup = self._sup
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        st_r, st_w = os.pipe2(os.O_CLOEXEC)
        fds = [os.memfd_create("payload", os.MFD_CLOEXEC), os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC),
               os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)]
        os.write(fds[0], b'{"code": ""}')
        limits = sup.limits(sup.cfg.timeout_s)
        limits["cpu_s"] = int(sup.cfg.cpu_time_s or 3600)  # CPU time accumulates over the session's life
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
        if st.buf:
            mine.close()
            await sup.empty_slot(proc)
            return bytes(st.buf).decode(errors="replace")
        mine.setblocking(False)
        self._sock, self._proc = mine, proc
        return ""

    async def _stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            self._sup.kill(self._proc)
            try:
                await asyncio.wait_for(asyncio.shield(self._proc.exited), 10)
            except (asyncio.TimeoutError, ConnectionError):
                pass
            await self._sup.empty_slot(self._proc)
            self._proc = None

    async def arun_here(self, code: str, timeout: float | None) -> ExecResult:
        """Runs on the sandbox's loop."""
        timeout = check_timeout(timeout, self._sup.cfg.timeout_s)
        async with self._lock:
            return await self._run(code, timeout)

    async def _run(self, code: str, timeout: float) -> ExecResult:
        sup, t0 = self._sup, time.monotonic()
        if self.slot is None:
            return ExecResult("sandbox_error", message="session is closed")
        if self._sock is None:
            err = await self._start()
            if err:
                return ExecResult("sandbox_error", message=err)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        memfd = os.memfd_create("code", os.MFD_CLOEXEC)
        lost, proc = False, self._proc

        def kill():
            nonlocal lost
            lost = True
            sup.kill(proc)

        cap = sup.cfg.max_output_bytes
        out, err = Drain(out_r, cap, self._loop, kill), Drain(err_r, cap, self._loop, kill)
        oom0 = sup.oom_kills(self.slot)
        nonce = secrets.token_hex(16)
        try:
            os.write(memfd, code.encode("utf-8", errors="replace"))
            self._sock.sendmsg([json.dumps({"nonce": nonce}).encode()],
                               [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [memfd, out_w, err_w]))])
        except OSError:
            pass  # a dead session: the reply never comes and the exit is classified below
        finally:
            for fd in (memfd, out_w, err_w):
                os.close(fd)
        out.start()
        err.start()
        reply = asyncio.ensure_future(self._loop.sock_recv(self._sock, 4096))
        done, _ = await asyncio.wait({reply, proc.exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        timed_out = not done
        msg = reply.result() if reply in done and not reply.exception() else b""
        info, garbage = _parse_reply(msg, nonce) if msg else ({}, "")
        if not info or out.overflow or err.overflow or info.get("end") or info.get("threads", 1) > 1:
            kill()
        reply.cancel()
        try:
            await asyncio.wait_for(asyncio.gather(out.done, err.done), 10)
        except asyncio.TimeoutError:
            pass
        out.close()
        err.close()
        exit_ev = None
        if lost:
            try:
                exit_ev = await asyncio.wait_for(asyncio.shield(proc.exited), 10)
            except (asyncio.TimeoutError, ConnectionError):
                pass
            await self._stop()
            self.restarts += 1
        if info:
            code_ = info["rc"]
        elif exit_ev is not None:
            code_ = os.waitstatus_to_exitcode(exit_ev.get("status", 0))
        else:
            code_ = None
        res = classify(Observed(code_, bytes(out.buf), bytes(err.buf), time.monotonic() - t0,
                                out.overflow or err.overflow, cap, timed_out, garbage,
                                sup.oom_kills(self.slot) - oom0))
        res.session_lost = lost
        if info.get("threads", 1) > 1:
            res.message = (res.message + "; " if res.message else "") + "the command left threads running"
        if lost:
            res.message = (res.message + "; " if res.message else "") + "session state lost; the next call starts fresh"
        return res

    # ---- public, synchronous and async ----------------------------------------------------------
    def run(self, code: str, timeout: float | None = None) -> ExecResult:
        return asyncio.run_coroutine_threadsafe(self.arun_here(code, timeout), self._loop).result()

    async def arun(self, code: str, timeout: float | None = None) -> ExecResult:
        fut = asyncio.run_coroutine_threadsafe(self.arun_here(code, timeout), self._loop)
        return await asyncio.wrap_future(fut)

    def close(self) -> None:
        if self.slot is None:
            return

        async def go():
            async with self._lock:
                await self._stop()
                self._sup.give_session_slot(self.slot)
                self.slot = None

        asyncio.run_coroutine_threadsafe(go(), self._loop).result()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _parse_reply(msg: bytes, nonce: str) -> tuple[dict, str]:
    """The runner's reply, or ({}, why) when it is anything but the well-formed answer to ``nonce``."""
    try:
        info = json.loads(msg.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}, "garbage on the session control channel; session reset"
    if (not isinstance(info, dict) or info.get("nonce") != nonce or not isinstance(info.get("rc"), int)
            or not isinstance(info.get("end"), bool) or not isinstance(info.get("threads"), int)):
        return {}, "unexpected reply on the session control channel; session reset"
    return info, ""
