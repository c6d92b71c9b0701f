"""Runs the snippet inside the sandboxed child, the way ``python -c`` would: one-shot
(``run_user_code``) or as a session (``session_loop``). Standalone (stdlib only), like the zygote.
"""
import base64
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
    """Session mode: keep one ``__main__`` alive; each packet on ``ctl`` is ``{"nonce"}`` with fds
    [code memfd, stdout w, stderr w]; the reply ``{"nonce", "rc", "end", "threads"}`` comes after
    every other process of the call is killed, so nothing of one command can answer for the next.
    The program can still forge its own ok/error (time, memory, output, signals are judged outside)."""
    main = _prepare(env)
    sock = socket.socket(fileno=ctl)
    null = os.open("/dev/null", os.O_WRONLY)
    while True:
        msg, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(4 * 4))
        if not msg:
            os._exit(0)
        fds = []
        for _, _, data in anc:
            fds.extend(int.from_bytes(data[i:i + 4], sys.byteorder) for i in range(0, len(data), 4))
        nonce = json.loads(msg)["nonce"]
        code_fd, out_w, err_w = fds[:3]
        code = os.pread(code_fd, os.fstat(code_fd).st_size, 0).decode("utf-8", errors="replace")
        os.close(code_fd)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.close(out_w)
        os.close(err_w)
        rc, end = 0, False
        try:
            exec(compile(code, "<string>", "exec"), main.__dict__)
        except SystemExit as e:
            rc, end = _exit_code(e), True
        except BaseException as e:
            _print_user_traceback(e)
            rc = 1
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                rc = rc or 120
        os.dup2(null, 1)  # the supervisor sees EOF on this command's pipes
        os.dup2(null, 2)
        try:
            os.kill(-1, signal.SIGKILL)  # every other process this command started (never ourselves)
        except OSError:
            pass
        threads = len(os.listdir("/proc/self/task"))
        sock.send(json.dumps({"nonce": nonce, "rc": rc, "end": end, "threads": threads}).encode())
        if end:
            os._exit(rc)


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
