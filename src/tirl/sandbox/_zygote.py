"""The warm zygote: a clean interpreter that preloads libraries once and forks one child per call.

Run by the supervisor as ``python -I _zygote.py FD`` with a scrubbed environment; FD is one end of
an AF_UNIX SOCK_SEQPACKET pair. Standalone on purpose (stdlib + optional pyseccomp): the zygote never
imports tirl, never sees the supervisor's environment and holds no secrets.

Protocol (one JSON object per packet):
  supervisor -> zygote: first packet = config (``preload isolation seccomp hide expose tmp_size_mb
  probe_uid cgroup_slots deny_setsid``); then ``{"op": "run", "id", "slot", "uid", "limits",
  "env", "session"}`` with fds attached [payload memfd, stdin fd, stdout w, stderr w, set-up status w,
  files-out memfd, (session control socket)], or ``{"op": "kill", "id"}``.
  zygote -> supervisor: ``{"event": "ready", "caps"}``, ``{"event": "started", "id"}``,
  ``{"event": "exit", "id", "status", "cpu_s", "maxrss_kb"}`` (sent once nothing of the call is left).

Start-up (each step only if it works here; the probe reports what does): not root -> a user namespace
mapping our uid to 0 (capabilities over our own namespaces only); a private mount namespace where
home/project/runtime dirs are hidden, /dev holds only null zero full random urandom, the interpreter
is re-exposed, and then every mount is read-only; a PID namespace of our own (we are its init), so
each call can get a fresh child PID namespace; PR_SET_DUMPABLE 0 (no /proc/<zygote>/mem for anyone).

Per call: a new PID namespace whose init is ``sleep`` (spawned with vfork, ~0.5 ms) and the call's
process as pid 2, so kill(-1) and /proc reach only the call itself and killing the init removes every
descendant. Child set-up: setsid -> join cgroup slot (fds opened before the filesystem went
read-only) -> unshare(mnt, net, ipc, uts) -> /proc of its PID namespace, fresh size-limited /tmp and
/dev/shm, input files -> rlimits -> drop privileges (root: the slot's uid; otherwise a nested user
namespace and no capabilities) -> no_new_privs -> seccomp -> fds 0/1/2 only -> run the code.
A step the probe showed working that then fails aborts the call through the set-up status pipe.
Not covered: GPU devices, disk I/O bandwidth.
"""
import base64
import ctypes
import errno
import gc
import io
import json
import os
import resource
import shutil
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
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 1, 24, 47, 4
SECCOMP_MODE_FILTER = 2
SYS_MOUNT_SETATTR, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, 0x8000, 1
DEVICES = ("null", "zero", "full", "random", "urandom")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _unshare(flags):
    _check(_libc.unshare(flags), "unshare")


def _write_file(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _enter_user_namespace(inner_uid=0):
    """Map our own uid/gid to ``inner_uid`` in a new user namespace (no setuid helper needed)."""
    uid, gid = os.geteuid(), os.getegid()
    _unshare(CLONE_NEWUSER)
    _write_file("/proc/self/setgroups", "deny")
    _write_file("/proc/self/uid_map", f"{inner_uid} {uid} 1")
    _write_file("/proc/self/gid_map", f"{inner_uid} {gid} 1")


def _drop_capabilities():
    """Empty bounding, ambient, permitted, effective and inheritable sets (user-namespace path)."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last + 1):
        _libc.prctl(PR_CAPBSET_DROP, cap, None, 0, 0)
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, None, 0, 0)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    hdr, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3, all zero
    _check(_libc.capset(ctypes.byref(hdr), ctypes.byref(data)), "capset")


def _make_readonly():
    """Every mount of this namespace read-only (mount_setattr, else one remount per mount point)."""

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    if _libc.syscall(SYS_MOUNT_SETATTR, -100, b"/", AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)) == 0:
        return
    with open("/proc/self/mountinfo") as fh:  # kernels before 5.12
        points = [line.split()[4].encode().decode("unicode_escape") for line in fh]
    for p in points:
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        keep = st.f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)  # locked flags must be kept in a user ns
        _mount(None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep)


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


def build_seccomp_bpf(deny_setsid=False):
    """Compile the filter once (in the zygote); children load the raw BPF with one prctl.

    ``deny_setsid``: without a cpu cgroup, a call's processes share one scheduler autogroup (the
    session made at set-up) only if they cannot start sessions of their own."""
    import pyseccomp as sc  # optional dependency; absence is reported, not fatal

    f = sc.SyscallFilter(sc.ALLOW)
    for name in _DENY + (["setsid"] if deny_setsid else []):
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
        self.root = os.geteuid() == 0
        self.calls = {}  # call id -> {"pid", "init", "status", "ru"}
        self.by_pid = {}  # pid -> call id (the call's process and its PID-namespace init)
        self.features = {}  # primitive -> True when it works here
        self.fprog = None
        self.pidns_fd = -1
        self.spare_init = None  # init of the PID namespace the next call will use
        self.init_bin = None
        self.cg_fds = []  # per slot: fds of the slot's cgroup.procs files, opened before going read-only

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
        caps = {"root": self.root, "preload_errors": errors, "missing": {}}
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, None, 0, 0)  # orphans come to us, not to init
        self.cg_fds = [[os.open(p, os.O_WRONLY | os.O_CLOEXEC) for p in paths] for paths in cfg.get("cgroup_slots", [])]
        if want:
            self._start_isolation(caps)
        caps["features"] = sorted(k for k, v in self.features.items() if v)
        _libc.prctl(PR_SET_DUMPABLE, 0, None, 0, 0)  # nobody (same uid included) reads or writes our memory
        gc.collect()
        gc.freeze()  # children share the preloaded heap instead of copying it on first GC
        self.send({"event": "ready", "caps": caps})

    def _start_isolation(self, caps):
        cfg, missing = self.cfg, caps["missing"]
        if not self.root:
            try:
                _enter_user_namespace()
                self.features["user_namespace"] = True
            except OSError as e:
                missing["user_namespace"] = f"unprivileged user namespaces unavailable: {e}"
        try:
            self._private_filesystem()
            self.features["fs_hiding"] = self.features["minimal_dev"] = True
            try:
                _make_readonly()
                self.features["readonly_fs"] = True
            except OSError as e:
                missing["readonly_fs"] = str(e)
        except OSError as e:
            for p in ("fs_hiding", "minimal_dev", "readonly_fs"):
                missing[p] = str(e)
        try:
            self._own_pid_namespace()
            self.features["pid_namespace"] = True
        except OSError as e:
            missing["pid_namespace"] = str(e)
        if cfg.get("seccomp", True):
            try:
                bpf = build_seccomp_bpf(bool(cfg.get("deny_setsid")))
                self._buf = ctypes.create_string_buffer(bpf, len(bpf))
                self.fprog = _SockFprog(len(bpf) // 8, ctypes.addressof(self._buf))
            except Exception as e:
                missing["seccomp"] = f"pyseccomp/libseccomp unavailable: {e!r}"
        self._probe(caps)

    def _private_filesystem(self):
        """Once, in our own mount namespace: hide home/project/runtime dirs, minimal /dev, expose the interpreter."""
        _unshare(CLONE_NEWNS)
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        # Keep a handle on each directory/device to re-expose before a tmpfs covers it.
        handles = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in self.cfg["expose"] if os.path.isdir(p)}
        devs = {d: os.open(f"/dev/{d}", os.O_PATH) for d in DEVICES if os.path.exists(f"/dev/{d}")}
        for path in sorted(set(self.cfg["hide"]), key=len):
            if os.path.isdir(path) and os.path.realpath(path) == path:
                _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
        _mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=755")
        for d, fd in devs.items():
            os.close(os.open(f"/dev/{d}", os.O_CREAT | os.O_WRONLY, 0o666))
            _mount(f"/proc/self/fd/{fd}", f"/dev/{d}", None, MS_BIND)
            os.close(fd)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                             ("stderr", "/proc/self/fd/2")):
            os.symlink(target, f"/dev/{name}")
        for path, fd in sorted(handles.items(), key=lambda kv: len(kv[0])):
            if not os.path.exists(path):
                os.makedirs(path, exist_ok=True)  # mount point inside a hiding tmpfs
                _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            os.close(fd)

    def _own_pid_namespace(self):
        """Become init of a PID namespace of our own: from it we may create one child namespace per call
        (setns back to it resets the namespace our next children land in), even without root."""
        self.init_bin = shutil.which("sleep", path="/usr/bin:/bin")
        if self.init_bin is None:
            raise OSError(errno.ENOENT, "no 'sleep' binary to serve as the per-call PID-namespace init")
        _unshare(CLONE_NEWPID)
        pid = os.fork()
        if pid:  # the original process only mirrors the zygote's fate to the supervisor's Popen
            self.sock.close()
            for fds in self.cg_fds:
                for fd in fds:
                    os.close(fd)
            _, status = os.waitpid(pid, 0)
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, None, 0, 0)  # the parent only waits: no race
        self.pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)

    def _probe(self, caps):
        """Fork a child that tries every per-call primitive; keep only those that work."""
        tries = ["namespaces", "tmpfs", "drop_privileges", "no_new_privs"]
        if self.fprog is not None:
            tries.append("seccomp")
        r, w = os.pipe()
        init = self._new_pid_namespace() if self.features.get("pid_namespace") else None
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
        if init:
            os.kill(init, signal.SIGKILL)
            os.waitpid(init, 0)
        result = json.loads(data or b"{}")
        for step in tries:
            msg = result.get(step, "probe child died")
            self.features[step] = not msg
            if msg:
                caps["missing"][step] = msg

    def _new_pid_namespace(self):
        """Point our next children at a fresh PID namespace whose init is ``sleep`` (vfork + exec)."""
        _check(_libc.setns(self.pidns_fd, CLONE_NEWPID), "setns pid")
        _unshare(CLONE_NEWPID)
        return os.posix_spawn(self.init_bin, [self.init_bin, "infinity"], {})

    # ---- per-call child set-up -------------------------------------------------------------
    def _step(self, step, req):
        if step == "namespaces":
            _unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
            if self.features.get("pid_namespace"):
                _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        elif step == "tmpfs":
            size = int(self.cfg.get("tmp_size_mb", 64))
            # An interpreter or venv under /tmp (a CI checkout) must stay importable: lazily loaded
            # modules (numpy.random) are read after the fresh /tmp covers it, so re-expose it.
            under = [p for p in self.cfg["expose"] if p == "/tmp" or p.startswith("/tmp/")]
            handles = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in under}
            _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={size}m,mode=1777")
            for path, fd in sorted(handles.items(), key=lambda kv: len(kv[0])):
                os.makedirs(path, exist_ok=True)
                _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
                _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
                os.close(fd)
        elif step == "drop_privileges":
            if self.root:
                uid = req["uid"]
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            else:
                # A user namespace of the call's own: RLIMIT_NPROC then counts this call's processes
                # only, and no capability reaches the zygote's namespaces (mounts stay put). Writing
                # our own uid_map needs /proc/self to be ours, hence dumpable first.
                _libc.prctl(PR_SET_DUMPABLE, 1, None, 0, 0)
                _enter_user_namespace()
                _drop_capabilities()
            _libc.prctl(PR_SET_DUMPABLE, 1, None, 0, 0)  # /proc/self stays readable by the call itself
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
        if lim.get("nproc") and self.features.get("drop_privileges"):
            # Counted per (user namespace, uid): each call has its own uid (root) or its own user
            # namespace (otherwise), so this is a per-call limit (backs up the pids cgroup).
            pairs.append((resource.RLIMIT_NPROC, int(lim["nproc"]), int(lim["nproc"])))
        for res, soft, hard in pairs:
            resource.setrlimit(res, (soft, hard))

    def child(self, req, fds):
        payload_fd, stdin_fd, out_w, err_w, status_w, files_fd = fds[:6]
        ctl = fds[6] if req.get("session") and len(fds) > 6 else -1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            os.setsid()  # also a scheduler autogroup of its own
            self.sock.close()
            slot = req.get("slot")
            if slot is not None and slot < len(self.cg_fds):
                for fd in self.cg_fds[slot]:
                    os.write(fd, b"0")  # "0" = the writer, whatever its pid in this namespace
            for fdl in self.cg_fds:
                for fd in fdl:
                    os.close(fd)
            payload = json.loads(os.pread(payload_fd, os.fstat(payload_fd).st_size, 0))
            os.close(payload_fd)
            feats = self.features
            if feats.get("namespaces"):
                self._step("namespaces", req)
                if feats.get("tmpfs"):
                    self._step("tmpfs", req)
            os.chdir("/tmp")
            if feats.get("drop_privileges"):  # the snippet's input files, owned by it
                self._step("drop_privileges", req)
            _write_inputs(payload.get("files") or {})
            self._rlimits(req["limits"])
            for step in ("no_new_privs", "seccomp"):
                if feats.get(step):
                    self._step(step, req)
            os.dup2(stdin_fd, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            keep = sorted({status_w, files_fd, ctl} - {-1})
            lo = 3
            for fd in keep:  # close everything else: no inherited descriptor reaches user code
                os.closerange(lo, fd)
                lo = fd + 1
            os.closerange(lo, 1 << 16)
        except BaseException as e:  # trusted channel: the user code has not started yet
            try:
                os.write(status_w, f"sandbox set-up failed: {e!r}".encode())
            finally:
                os._exit(121)
        os.close(status_w)  # EOF without data tells the supervisor set-up succeeded
        if ctl >= 0:
            os.close(files_fd)
            _session_loop(ctl, req.get("env", {}))
        _run_user_code(payload["code"], req.get("env", {}), files_fd, payload.get("fetch") or [])

    # ---- main loop -------------------------------------------------------------------------
    def send(self, obj):
        try:
            self.sock.send(json.dumps(obj).encode())
        except OSError:
            self._shutdown()  # supervisor gone: nothing left to serve

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
            # CLOEXEC: the per-call init (spawned with exec) must not inherit another call's pipes.
            msg, anc, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(16 * 4), socket.MSG_CMSG_CLOEXEC)
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
            self._start_call(req, fds)
        elif req["op"] == "kill":
            call = self.calls.get(req["id"])
            for pid in (call["pid"], call["init"]) if call else ():
                if pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        elif req["op"] == "killuid":
            # No PID namespace and no cgroup: a helper with the slot's uid SIGKILLs every process of
            # that uid (kill(-1) walks the task list under a lock, so a fork bomb cannot outrun it).
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

    def _start_call(self, req, fds):
        init = None
        try:
            if self.features.get("pid_namespace"):
                # The namespace prepared after the previous call (off the critical path), if still alive.
                init, self.spare_init = self.spare_init, None
                if init is None:
                    init = self._new_pid_namespace()
            try:
                pid = os.fork()
            except OSError:  # the spare's init died (ENOMEM: namespace gone): one fresh try
                if not init:
                    raise
                self._kill_init(init)
                init = self._new_pid_namespace()
                pid = os.fork()
        except OSError as e:
            if init:
                self._kill_init(init)
            os.write(fds[4], f"sandbox set-up failed: {e!r}".encode())
            for fd in fds:
                os.close(fd)
            self.send({"event": "started", "id": req["id"]})
            self.send({"event": "exit", "id": req["id"], "status": 121 << 8, "cpu_s": 0.0, "maxrss_kb": 0})
            return
        if pid == 0:
            try:
                self.child(req, fds)  # never returns...
            finally:
                os._exit(122)  # ...and if it ever did, it must not fall back into the zygote's loop
        for fd in fds:
            os.close(fd)
        self.calls[req["id"]] = {"pid": pid, "init": init, "status": None, "ru": None}
        self.by_pid[pid] = req["id"]
        if init:
            self.by_pid[init] = req["id"]
        self.send({"event": "started", "id": req["id"]})
        if init:
            try:
                self.spare_init = self._new_pid_namespace()
            except OSError:
                self.spare_init = None

    def _kill_init(self, pid):
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass

    def _reap(self):
        while True:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            cid = self.by_pid.pop(pid, None)
            call = self.calls.get(cid)
            if call is None:
                continue  # an orphan re-parented to us: reaped, nothing to report
            if pid == call["pid"]:
                call["pid"], call["status"], call["ru"] = None, status, ru
                if call["init"]:  # the call is over: its init takes every leftover process with it
                    try:
                        os.kill(call["init"], signal.SIGKILL)
                    except OSError:
                        pass
            else:
                call["init"] = None
                if call["pid"]:  # init died first (killed): the kernel kills the call process too
                    continue
            if call["pid"] is None and call["init"] is None:
                del self.calls[cid]
                ru = call["ru"]
                self.send({"event": "exit", "id": cid, "status": call["status"],
                           "cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_kb": ru.ru_maxrss})

    def _shutdown(self):
        if self.spare_init:
            os.kill(self.spare_init, signal.SIGKILL)
        for call in self.calls.values():
            for pid in (call["pid"], call["init"]):
                if pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        os._exit(0)


def _write_inputs(files):
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


def _session_loop(ctl, env):
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


def _run_user_code(code, env, files_fd, fetch):
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


def main():
    sock = socket.socket(fileno=int(sys.argv[1]))
    sock.set_inheritable(False)
    cfg = json.loads(sock.recv(1 << 20))
    z = Zygote(sock, cfg)
    z.start()
    z.serve()


if __name__ == "__main__":
    main()
