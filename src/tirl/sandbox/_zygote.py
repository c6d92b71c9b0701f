"""The warm zygote: a clean interpreter that preloads libraries once and forks one child per call.

Run by the supervisor as ``python -I _zygote.py FD`` with a scrubbed environment; FD is one end of
an AF_UNIX SOCK_SEQPACKET pair. This file is deliberately standalone (stdlib + optional pyseccomp):
the zygote never imports tirl, never sees the supervisor's environment, and holds no secrets, so a
child that reads the zygote's memory learns nothing worth having.

Protocol (one JSON object per packet):
  supervisor -> zygote: first packet = config; then ``{"op": "run", "id", "uid", "cgroups", "limits",
  "timeout"}`` with four fds attached (code memfd, stdout w, stderr w, setup-status w), or
  ``{"op": "killuid", "uid"}``.
  zygote -> supervisor: ``{"event": "ready", "caps": {...}}``, ``{"event": "started", "id", "pid"}``,
  ``{"event": "exit", "id", "status", "cpu_s", "maxrss_kb"}``.

Child set-up order (each step only if the start-up probe showed it works; a step that then fails
aborts the call through the setup-status pipe instead of running weaker than reported):
setsid -> join cgroup slot -> unshare(mnt, net, ipc, uts) -> fresh tmpfs /tmp -> rlimits ->
drop to the slot's uid/gid -> no_new_privs -> seccomp -> fds 0/1/2 only -> run the code.

Simplifications: no PID namespace (a second fork per call costs ~4 ms here); instead /proc is mounted
with hidepid=2 and every concurrency slot has its own uid, so a child sees and can signal only its own
processes. Not covered: GPU devices, resource limits on disk I/O bandwidth.
"""
import ctypes
import errno
import gc
import io
import json
import os
import resource
import signal
import socket
import sys
import traceback
import types

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWCGROUP = 0x10000000, 0x20000000, 0x40000000, 0x02000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_SET_CHILD_SUBREAPER, PR_SET_DUMPABLE = 38, 22, 36, 4
SECCOMP_MODE_FILTER = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _unshare(flags):
    _check(_libc.unshare(flags), "unshare")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


# Denied outright (EPERM): escape hatches and kernel attack surface a numeric snippet never needs.
_DENY = (
    "ptrace process_vm_readv process_vm_writev kcmp mount umount2 pivot_root chroot move_mount "
    "open_tree fsopen fsmount fsconfig fspick mount_setattr setns unshare keyctl add_key request_key "
    "bpf perf_event_open userfaultfd io_uring_setup io_uring_enter io_uring_register kexec_load "
    "kexec_file_load init_module finit_module delete_module reboot swapon swapoff acct quotactl "
    "syslog open_by_handle_at name_to_handle_at iopl ioperm uselib vhangup lookup_dcookie"
).split()


def build_seccomp_bpf():
    """Compile the filter once (in the zygote); children load the raw BPF with one prctl."""
    import pyseccomp as sc  # optional dependency; absence is reported, not fatal

    f = sc.SyscallFilter(sc.ALLOW)
    for name in _DENY:
        try:
            f.add_rule(sc.ERRNO(errno.EPERM), name)
        except Exception:  # syscall unknown on this architecture
            pass
    # clone3 passes flags in memory seccomp cannot inspect: ENOSYS makes glibc fall back to clone.
    try:
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    except Exception:
        pass
    for flag in (CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWIPC, CLONE_NEWUTS, CLONE_NEWCGROUP):
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    f.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
    fd = os.memfd_create("bpf")
    with os.fdopen(fd, "w+b") as fh:
        f.export_bpf(fh)
        fh.seek(0)
        return fh.read()


class Zygote:
    def __init__(self, sock, cfg):
        self.sock, self.cfg = sock, cfg
        self.children = {}  # pid -> call id
        self.features = {}  # primitive -> True when the probe showed it works
        self.bpf = None
        self.fprog = None

    # ---- start-up -------------------------------------------------------------------------
    def start(self):
        cfg = self.cfg
        errors = {}
        for mod in cfg.get("preload", []):
            try:
                __import__(mod)
            except Exception as e:  # reported to the supervisor, which decides whether it matters
                errors[mod] = repr(e)
        want = cfg["isolation"] != "none"
        caps = {"root": os.geteuid() == 0, "preload_errors": errors, "missing": {}}
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, None, 0, 0)  # orphans come to us, not to init
        if want:
            try:
                self._private_filesystem()
                self.features["fs_hiding"] = True
            except OSError as e:
                caps["missing"]["fs_hiding"] = str(e)
            if cfg.get("seccomp", True):
                try:
                    self.bpf = build_seccomp_bpf()
                    self._buf = ctypes.create_string_buffer(self.bpf, len(self.bpf))
                    self.fprog = _SockFprog(len(self.bpf) // 8, ctypes.addressof(self._buf))
                except Exception as e:
                    caps["missing"]["seccomp"] = f"pyseccomp/libseccomp unavailable: {e!r}"
            self._probe(caps)
        caps["features"] = sorted(k for k, v in self.features.items() if v)
        gc.collect()
        gc.freeze()  # children share the preloaded heap instead of copying it on first GC
        self.send({"event": "ready", "caps": caps})

    def _private_filesystem(self):
        """Once, in the zygote's own mount namespace: hide home/project dirs, expose the interpreter."""
        _unshare(CLONE_NEWNS)
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        try:  # hidepid=2: a child cannot even list processes of other uids (the zygote, the trainer)
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
        except OSError:
            pass
        # Keep a handle on each directory to re-expose before the tmpfs covers it.
        handles = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in self.cfg["expose"] if os.path.isdir(p)}
        for path in sorted(set(self.cfg["hide"]), key=len):
            if os.path.isdir(path) and os.path.realpath(path) == path:
                _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
        for path, fd in sorted(handles.items(), key=lambda kv: len(kv[0])):
            if not os.path.exists(path):
                os.makedirs(path, exist_ok=True)  # mount point inside a hiding tmpfs
                self._bind_ro(f"/proc/self/fd/{fd}", path)
            os.close(fd)

    @staticmethod
    def _bind_ro(src, dst):
        _mount(src, dst, None, MS_BIND | MS_REC)
        _mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)

    def _probe(self, caps):
        """Fork a child that tries every per-call primitive; keep only those that work."""
        tries = {"namespaces": None, "tmpfs": None, "setuid": None, "no_new_privs": None}
        if self.fprog is not None:
            tries["seccomp"] = None
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            out = {}
            for step in tries:
                try:
                    self._step(step, {"uid": self.cfg["probe_uid"], "limits": {}})
                    out[step] = ""
                except Exception as e:
                    out[step] = str(e) or repr(e)
            os.write(w, json.dumps(out).encode())
            os._exit(0)
        os.close(w)
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
        os.close(r)
        os.waitpid(pid, 0)
        result = json.loads(data or b"{}")
        for step in tries:
            msg = result.get(step, "probe child died")
            self.features[step] = not msg
            if msg:
                caps["missing"][step] = msg

    # ---- per-call child set-up -------------------------------------------------------------
    def _step(self, step, req):
        if step == "namespaces":
            _unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
        elif step == "tmpfs":
            size = int(self.cfg.get("tmp_size_mb", 64))
            # An interpreter or venv under /tmp (a CI checkout) must stay importable: lazily loaded
            # modules (numpy.random) are read after the fresh /tmp covers it, so re-expose it.
            under = [p for p in self.cfg["expose"] if p == "/tmp" or p.startswith("/tmp/")]
            handles = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in under}
            _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={size}m,mode=1777")
            for path, fd in sorted(handles.items(), key=lambda kv: len(kv[0])):
                os.makedirs(path, exist_ok=True)
                self._bind_ro(f"/proc/self/fd/{fd}", path)
                os.close(fd)
        elif step == "setuid":
            uid = req["uid"]
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            _libc.prctl(PR_SET_DUMPABLE, 1, None, 0, 0)  # /proc/self stays readable by itself
        elif step == "no_new_privs":
            _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0), "no_new_privs")
        elif step == "seccomp":
            _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(self.fprog), 0, 0), "seccomp")

    def _rlimits(self, lim):
        pairs = [(resource.RLIMIT_CORE, 0, 0)]
        if lim.get("cpu_s"):
            pairs.append((resource.RLIMIT_CPU, int(lim["cpu_s"]), int(lim["cpu_s"]) + 1))
        if lim.get("fsize"):
            pairs.append((resource.RLIMIT_FSIZE, int(lim["fsize"]), int(lim["fsize"])))
        if lim.get("nofile"):
            pairs.append((resource.RLIMIT_NOFILE, int(lim["nofile"]), int(lim["nofile"])))
        if lim.get("as"):
            pairs.append((resource.RLIMIT_AS, int(lim["as"]), int(lim["as"])))
        if lim.get("nproc") and self.features.get("setuid"):
            # Per-uid count; every slot has its own uid, so this is a per-call limit (backs up pids cgroup).
            pairs.append((resource.RLIMIT_NPROC, int(lim["nproc"]), int(lim["nproc"])))
        for res, soft, hard in pairs:
            resource.setrlimit(res, (soft, hard))

    def child(self, req, fds):
        code_fd, out_w, err_w, status_w = fds[:4]
        ctl = fds[4] if req.get("session") and len(fds) > 4 else -1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            os.setsid()
            self.sock.close()
            for path in req.get("cgroups", []):
                with open(path, "w") as fh:
                    fh.write(str(os.getpid()))
            code = os.pread(code_fd, os.fstat(code_fd).st_size, 0).decode("utf-8", errors="replace")
            null = os.open("/dev/null", os.O_RDONLY)
            feats = self.features
            if feats.get("namespaces"):
                self._step("namespaces", req)
                if feats.get("tmpfs"):
                    self._step("tmpfs", req)
            self._rlimits(req["limits"])
            for step in ("setuid", "no_new_privs", "seccomp"):
                if feats.get(step):
                    self._step(step, req)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            keep = sorted({status_w, ctl} - {-1})
            lo = 3
            for fd in keep:  # close everything else: no inherited descriptor reaches user code
                os.closerange(lo, fd)
                lo = fd + 1
            os.closerange(lo, 1 << 16)
            os.chdir("/tmp")
        except BaseException as e:  # trusted channel: the user code has not started yet
            try:
                os.write(status_w, f"sandbox set-up failed: {e!r}".encode())
            finally:
                os._exit(121)
        os.close(status_w)  # EOF without data tells the supervisor set-up succeeded
        if ctl >= 0:
            _session_loop(ctl, req.get("env", {}))
        _run_user_code(code, req.get("env", {}))

    # ---- main loop -------------------------------------------------------------------------
    def send(self, obj):
        try:
            self.sock.send(json.dumps(obj).encode())
        except OSError:
            os._exit(0)  # supervisor gone: nothing left to serve

    def serve(self):
        import selectors

        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd)
        signal.signal(signal.SIGCHLD, lambda *a: None)
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, "sock")
        sel.register(rfd, selectors.EVENT_READ, "sig")
        while True:
            for key, _ in sel.select():
                if key.data == "sig":
                    try:
                        while os.read(rfd, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    self._reap()
                else:
                    self._handle()

    def _handle(self):
        try:
            msg, anc, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(16 * 4))
        except InterruptedError:
            return
        if not msg:
            self._shutdown()
        fds = []
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(int.from_bytes(data[i:i + 4], sys.byteorder) for i in range(0, len(data), 4))
        req = json.loads(msg)
        if req["op"] == "run":
            pid = os.fork()
            if pid == 0:
                try:
                    self.child(req, fds)  # never returns...
                finally:
                    os._exit(122)  # ...and if it ever did, it must not fall back into the zygote's loop
            for fd in fds:
                os.close(fd)
            self.children[pid] = req["id"]
            self.send({"event": "started", "id": req["id"], "pid": pid})
        elif req["op"] == "killuid":
            # No cgroup here: a helper with the slot's uid sends SIGKILL to every process of that uid.
            # kill(-1) walks the task list under a lock, so a fork bomb cannot outrun it.
            # Synchronous, so that the next call of this slot cannot start before the sweep.
            pid = os.fork()
            if pid == 0:
                try:
                    os.setresuid(req["uid"], req["uid"], req["uid"])
                    os.kill(-1, signal.SIGKILL)
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
            self.send({"event": "killed", "id": req.get("id")})
        for fd in fds if req["op"] != "run" else ():
            os.close(fd)

    def _reap(self):
        while True:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            call = self.children.pop(pid, None)
            if call is not None:
                self.send({"event": "exit", "id": call, "status": status,
                           "cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_kb": ru.ru_maxrss})

    def _shutdown(self):
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        os._exit(0)


def _session_loop(ctl, env):
    """Session mode: keep one ``__main__`` alive; each packet on ``ctl`` carries [code memfd, stdout w,
    stderr w]; the reply reports the exit code. The reply comes from inside the sandbox, so a program
    can forge its own ok/error (time, memory, output and signals are still judged from outside)."""
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
        sock.send(json.dumps({"rc": rc, "end": end}).encode())
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


def _run_user_code(code, env):
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


def main():
    sock = socket.socket(fileno=int(sys.argv[1]))
    cfg = json.loads(sock.recv(1 << 20))
    z = Zygote(sock, cfg)
    z.start()
    z.serve()


if __name__ == "__main__":
    main()
