"""Runs the snippet inside the sandboxed child, the way ``python -c`` would: one-shot
(``run_user_code``) or as a session (``session_loop``). Standalone (stdlib only), like the zygote.
"""
import _thread
import base64
import contextvars
import io
import json
import os
import signal
import socket
import sys
import traceback
import types


def write_inputs(files):
    """Input files (base64) under the call's /tmp; names are relative paths that stay inside it."""
    for name, b64 in files.items():
        path = os.path.normpath(name)
        if path.startswith(("/", "..")) or "\0" in path:
            raise ValueError(f"input file name must stay inside /tmp: {name!r}")
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(base64.b64decode(b64))


def session_loop(ctl, env):
    """Session mode: keep one ``__main__`` alive and run each command in a thread of its own.

    Each packet on ``ctl`` (read-only here) is one request with fds [code memfd, stdout w, stderr w,
    status w]; once the command's thread is done, the status pipe gets ``b"<rc> <end>\\n"``, the
    program's own verdict (like an exit code). Why a thread per command: its end is the end of a
    thread, which the supervisor checks from outside (/proc), and user code never runs on this
    loop's thread, so it cannot stay in the loop's place and take the next request (session.py).
    The loop calls only C functions bound here before any user code runs: a program can rebind
    ``os.dup2`` or ``builtins.int``, not these locals."""
    main = _prepare(env)
    ctx = contextvars.copy_context()  # decimal's context and other context variables carry over
    recvmsg = socket.socket(fileno=ctl).recvmsg
    space, wnohang = socket.CMSG_SPACE(4 * 4), os.WNOHANG
    dup2, close, write, pread, fstat, waitpid, exit_ = os.dup2, os.close, os.write, os.pread, os.fstat, \
        os.waitpid, os._exit
    from_bytes, order, type_, int_, tuple_, len_ = int.from_bytes, sys.byteorder, type, int, tuple, len
    child_error, start, lock, command = ChildProcessError, _thread.start_new_thread, _thread.allocate_lock(), \
        _command
    listdir, yield_, range_ = os.listdir, os.sched_yield, range
    kill, me, sigstop = os.kill, os.getpid(), signal.SIGSTOP
    null = os.open("/dev/null", os.O_WRONLY)
    while True:
        try:
            while waitpid(-1, wnohang)[0]:  # children and orphans (we are their subreaper) that exited or were killed
                pass
        except child_error:
            pass
        msg, anc, _, _ = recvmsg(64, space)
        if not msg:
            exit_(0)
        data = anc[0][2] if anc else b""
        fds = [from_bytes(data[i:i + 4], order) for i in (0, 4, 8, 12)] if len_(data) == 16 else []
        if not fds:
            exit_(123)
        code = pread(fds[0], fstat(fds[0]).st_size, 0).decode("utf-8", "replace")
        close(fds[0])
        dup2(fds[1], 1)
        dup2(fds[2], 2)
        close(fds[1])
        close(fds[2])
        box = []
        lock.acquire()
        start(command, (code, main, ctx, box, lock))
        lock.acquire()  # released by the command's thread once its code is done
        lock.release()
        alone = False
        for _ in range_(1000):  # ... and gone a moment later: answer once it is (the supervisor checks)
            if len_(listdir("/proc/self/task")) == 1:
                alone = True
                break
            yield_()
        dup2(null, 1)  # the supervisor sees EOF on this command's pipes
        dup2(null, 2)
        got = box[0] if len_(box) == 1 and type_(box[0]) is tuple_ and len_(box[0]) == 2 else (1, 0)
        rc, end = (got[0], got[1]) if type_(got[0]) is int_ and type_(got[1]) is int_ else (1, 0)
        try:
            write(fds[3], b"%d %d\n" % (rc, end))
        except OSError:
            pass
        close(fds[3])
        if end:
            exit_(rc)
        # The supervisor stops us anyway and waits until we are: stopping ourselves spares it waiting
        # for a turn on a busy CPU. Stopped by it before this line, we stop again once resumed for
        # the next command; it sees that and resumes us again. Not while the command's thread is still
        # on its way out: stopped with it, it would stay and read as a thread left running.
        if alone:
            kill(me, sigstop)


def _command(code, main, ctx, box, lock):
    """One command, on its own thread: run ``code`` in ``main``, then tell the loop (rc, end)."""
    rc, end = 0, 0
    try:
        ctx.run(exec, compile(code, "<string>", "exec"), main.__dict__)
    except SystemExit as e:
        rc, end = _exit_code(e), 1
    except BaseException as e:
        _print_user_traceback(e)
        rc = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            rc = rc or 120
    box.append((rc, end))
    lock.release()


def _prepare(env):
    os.environ.clear()
    os.environ.update(env)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="strict")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    sys.argv = ["-c"]
    if "numpy.random" in sys.modules:  # forked children would otherwise share one global RNG state
        sys.modules["numpy.random"].seed()
    main = types.ModuleType("__main__")
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    return main


def run_user_code(code, env, files_fd, fetch):
    """Run ``code`` as a fresh ``__main__`` the way ``python -c`` would, then exit."""
    main = _prepare(env)
    rc = 0
    try:
        exec(compile(code, "<string>", "exec"), main.__dict__)
    except SystemExit as e:
        rc = _exit_code(e)
    except BaseException as e:
        _print_user_traceback(e)
        rc = 1
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()  # like the interpreter: wait for non-daemon threads
        import atexit

        atexit._run_exitfuncs()
    except SystemExit as e:
        rc = _exit_code(e)
    except BaseException:
        traceback.print_exc()
        rc = rc or 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            rc = rc or 120  # what CPython does when flushing stdout fails at exit
    if fetch:  # program output like stdout: the supervisor caps and parses it, never trusts it
        out = {}
        for name in fetch:
            try:
                with open(os.path.join("/tmp", name), "rb") as fh:
                    out[name] = base64.b64encode(fh.read()).decode()
            except (OSError, ValueError):
                pass
        try:
            os.write(files_fd, json.dumps(out).encode())
        except OSError:
            pass
    os._exit(rc)


def _print_user_traceback(e):
    """Print the traceback as ``python -c`` would: without this runner's own frame."""
    try:
        traceback.print_exception(type(e), e, e.__traceback__.tb_next if e.__traceback__ else None)
    except BaseException:
        pass


def _exit_code(e):
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    try:
        print(e.code, file=sys.stderr)
    except BaseException:
        pass
    return 1
