"""Stateful sessions: one sandboxed process per session keeps its globals between calls.

Use for multi-turn tool use where each code block builds on the previous ones (instead of
re-running all earlier blocks, which breaks randomness and file appends). The session process is
forked from the same zygote with the same isolation as a one-shot call, in a slot of its own
(``max_sessions`` slots exist, so the number of live sessions is capped). Time, memory, output caps
and signals are enforced from outside exactly as for ``Sandbox.run``; on a timeout, OOM, crash or
output overflow the process is killed, the result says ``session_lost=True``, and the next call
starts a fresh interpreter.

Caveat (documented, inherent): ok vs error of one command is reported by the runner inside the
sandboxed process, so a program can forge its own ok/error; nothing else is taken from it.
Not covered: idle reclaim (close sessions you no longer need, or use ``with``).
"""
from __future__ import annotations

import array
import asyncio
import json
import os
import signal
import socket
import time

from .config import ExecResult
from .core import BASE_ENV, _MEMORY_ERROR, Sandbox, _Call, _Drain


class Session:
    """``with sandbox.session() as s: s.run("x = 2"); s.run("print(x)")``."""

    def __init__(self, sandbox: Sandbox):
        self._sb = sandbox
        self._sup = sandbox._sup
        self.slot = self._sup.take_session_slot()
        if self.slot is None:
            raise RuntimeError(f"all {sandbox.config.max_sessions} session slots are in use "
                               "(close a session or raise SandboxConfig.max_sessions)")
        self._sock: socket.socket | None = None
        self._call: _Call | None = None
        self._lock = asyncio.Lock()
        self.restarts = 0

    async def _start(self) -> str:
        sup = self._sup
        await sup._ensure_zygote()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        st_r, st_w = os.pipe2(os.O_CLOEXEC)
        null = os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)
        code = os.memfd_create("code", os.MFD_CLOEXEC)
        cid = next(sup._ids)
        call = _Call(sup.loop.create_future(), sup.loop.create_future())
        sup._calls[cid] = call
        limits = sup._limits(sup.cfg.timeout_s)
        limits["cpu_s"] = int(sup.cfg.cpu_time_s or 3600)  # CPU time accumulates over the session's life
        req = {"op": "run", "id": cid, "uid": sup.uid0 + self.slot, "limits": limits, "session": True,
               "cgroups": sup.cg.procs_files(self.slot) if sup.cg else [], "env": {**BASE_ENV, **sup.cfg.env}}
        try:
            await sup._send(req, [code, null, null, st_w, theirs.fileno()])
        finally:
            for fd in (code, null, st_w):
                os.close(fd)
            theirs.close()
        st = _Drain(st_r, 4096, sup.loop)
        st.start()
        await asyncio.wait_for(st.done, 30)
        if st.buf:
            mine.close()
            await sup._empty_slot(self.slot, call)
            return bytes(st.buf).decode(errors="replace")
        mine.setblocking(False)
        self._sock, self._call = mine, call
        return ""

    async def _stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._call is not None:
            await self._sup._empty_slot(self.slot, self._call)
            self._sup._calls = {k: v for k, v in self._sup._calls.items() if v is not self._call}
            self._call = None

    async def arun_here(self, code: str, timeout: float | None) -> ExecResult:
        """Runs on the sandbox's loop."""
        async with self._lock:
            return await self._run(code, float(timeout if timeout is not None else self._sup.cfg.timeout_s))

    async def _run(self, code: str, timeout: float) -> ExecResult:
        sup, t0 = self._sup, time.monotonic()
        if self.slot is None:
            return ExecResult("sandbox_error", message="session is closed")
        if self._sock is None:
            err = await self._start()
            if err:
                return ExecResult("sandbox_error", message=err)
        pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(2)]
        memfd = os.memfd_create("code", os.MFD_CLOEXEC)
        os.write(memfd, code.encode("utf-8", errors="replace"))
        lost = False

        def kill():
            nonlocal lost
            lost = True
            sup._kill_slot(self.slot, self._call)

        cap = sup.cfg.max_output_bytes
        out, err = _Drain(pipes[0][0], cap, sup.loop, kill), _Drain(pipes[1][0], cap, sup.loop, kill)
        oom0 = sup.cg.oom_kills(self.slot) if sup.cg else 0
        fds = array.array("i", [memfd, pipes[0][1], pipes[1][1]])
        self._sock.sendmsg([b"run"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        for fd in (memfd, pipes[0][1], pipes[1][1]):
            os.close(fd)
        out.start()
        err.start()
        reply = asyncio.ensure_future(sup.loop.sock_recv(self._sock, 4096))
        done, _ = await asyncio.wait({reply, self._call.exited}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        timed_out = not done
        msg = reply.result() if reply in done and not reply.exception() else b""
        if not msg or out.overflow or err.overflow:
            kill()
            lost = True
        reply.cancel()
        try:
            await asyncio.wait_for(asyncio.gather(out.done, err.done), 10)
        except asyncio.TimeoutError:
            pass
        out.close()
        err.close()
        info = json.loads(msg) if msg else {}
        if info.get("end"):
            lost = True
        exit_ev = None
        if lost:
            try:
                exit_ev = await asyncio.wait_for(asyncio.shield(self._call.exited), 10)
            except (asyncio.TimeoutError, ConnectionError):
                pass
            await self._stop()
            self.restarts += 1
        res = ExecResult("ok", bytes(out.buf).decode("utf-8", errors="replace"),
                         bytes(err.buf).decode("utf-8", errors="replace"), info.get("rc"),
                         time.monotonic() - t0, truncated=out.overflow or err.overflow, session_lost=lost)
        oom = (sup.cg.oom_kills(self.slot) - oom0) if sup.cg else 0
        if exit_ev is not None and not msg:
            res.exit_code = os.waitstatus_to_exitcode(exit_ev.get("status", 0))
            if res.exit_code < 0:
                res.signal = signal.Signals(-res.exit_code).name
        if out.overflow or err.overflow:
            res.status = "output_limit"
        elif timed_out:
            res.status = "timeout"
        elif oom:
            res.status = "memory"
        elif res.signal:
            res.status = "killed"
        elif res.exit_code != 0:
            tail = res.stderr.rstrip().rsplit("\n", 1)[-1]
            res.status = "memory" if _MEMORY_ERROR.match(tail) else "error"
        if lost:
            res.message = (res.message + " " if res.message else "") + "session state lost; the next call starts fresh"
        return res

    # ---- public, synchronous and async ----------------------------------------------------------
    def run(self, code: str, timeout: float | None = None) -> ExecResult:
        return self._sb._call(self.arun_here(code, timeout))

    async def arun(self, code: str, timeout: float | None = None) -> ExecResult:
        fut = asyncio.run_coroutine_threadsafe(self.arun_here(code, timeout), self._sb._loop)
        return await asyncio.wrap_future(fut)

    def close(self) -> None:
        if self.slot is None:
            return

        async def go():
            async with self._lock:
                await self._stop()
                self._sup.give_session_slot(self.slot)
                self.slot = None

        self._sb._call(go())

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
