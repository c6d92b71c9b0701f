"""The warm zygote: a clean interpreter that preloads libraries once and forks one child per call.

Run by the supervisor as ``python -I _zygote.py FD`` with a scrubbed environment; FD is one end of
an AF_UNIX SOCK_SEQPACKET pair. Standalone on purpose (stdlib + optional pyseccomp): the zygote never
imports tirl, never sees the supervisor's environment and holds no secrets.

Protocol (one JSON object per packet):
  supervisor -> zygote: first packet = config (``preload isolation seccomp hide expose tmp_size_mb
  shm_size_mb probe_uid cgroup_slots deny_setsid``); then ``{"op": "run", "id", "slot", "uid", "limits",
  "env", "session"}`` with fds attached [payload memfd, stdin fd, stdout w, stderr w, set-up status w,
  files-out memfd, (session control socket)], ``{"op": "kill", "id"}``, or (root without a PID
  namespace or cgroup) ``{"op": "killuid", "uid", "id"}``.
  zygote -> supervisor: ``{"event": "ready", "caps"}``, ``{"event": "started", "id", "pid", "init"}``,
  ``{"event": "exit", "id", "status", "cpu_s", "maxrss_kb"}`` (the call's process exited and its PID
  namespace's init is killed: the kernel removes whatever the call left behind),
  ``{"event": "killed", "id"}`` (after killuid).

Start-up (each step only if it works here; the probe reports what does): not root -> a user namespace
mapping our uid to 0 (capabilities over our own namespaces only); a private mount namespace where
every top-level entry but the system's is hidden (per call also any made since), /dev holds only
null zero full random urandom, the interpreter is re-exposed, and then every mount is read-only; a
PID namespace of our own (we are its init), so each call can get a fresh child PID namespace;
PR_SET_DUMPABLE 0 (no /proc/<zygote>/mem for anyone). First of all, oom_score_adj 1000, which every call
inherits: the host's OOM killer takes sandboxed processes before the trainer.

Per call: a new PID namespace whose init is ``sleep`` (vfork + exec, prepared while the previous call
runs) and the call's process as pid 2, so kill(-1) and /proc reach only the call itself and killing
the init removes every descendant. Child set-up: own process group (a session, hence a
scheduler autogroup, when there is no cpu cgroup) -> join cgroup slot (fds opened before the
filesystem went read-only) -> unshare(mnt, net, ipc, uts) -> /proc of its PID namespace, a fresh
size-limited /tmp and /dev/shm -> /proc read-only, then drop privileges (root: the slot's uid;
otherwise a nested user namespace and no capabilities) -> input files -> rlimits -> no_new_privs ->
seccomp -> fds 0/1/2 only -> run the code.
A step the probe showed working that then fails aborts the call through the set-up status pipe.
Not covered: disk I/O bandwidth.
Kernel primitives live in ``_nsutil.py``, the filesystem view (start-up and per call) in ``_fsview.py``,
the snippet runner in ``_runner.py``; this file (a little over the usual size) keeps start-up,
per-call set-up and the event loop together, as they share the state.
"""
import ctypes
import errno
import gc
import json
import os
import resource
import shutil
import signal
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # ``python -I`` leaves our directory out
from _nsutil import (  # noqa: E402
    CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUTS, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID,
    MS_RDONLY, MS_REMOUNT,
    PR_SET_CHILD_SUBREAPER, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG, PR_SET_SECCOMP,
    SECCOMP_MODE_FILTER, SockFprog, build_seccomp_bpf, check, drop_capabilities, enter_user_namespace, libc,
    make_readonly, mount, unshare,
)
from _fsview import fresh_tmp, hide_new_top_level, private_filesystem  # noqa: E402
from _runner import run_user_code, session_loop, write_inputs  # noqa: E402

del sys.path[0]  # nothing of ours on the snippet's import path


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
        self.top_known: set[str] = set()  # top-level names at start-up (hidden or system)
        self.own_proc = False  # (in a call) /proc is the call's own mount, ours to make read-only

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
        if want and cfg.get("seccomp", True) and sys.version_info >= (3, 14):
            import multiprocessing  # its new default start method, forkserver, needs socket(): denied inside

            multiprocessing.set_start_method("fork")
        caps = {"root": self.root, "preload_errors": errors, "missing": {}, "oom_score_adj": _oom_first()}
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, None, 0, 0)  # orphans come to us, not to init
        self.cg_fds = [[os.open(p, os.O_WRONLY | os.O_CLOEXEC) for p in paths] for paths in cfg.get("cgroup_slots", [])]
        if want:
            self._start_isolation(caps)
        caps["features"] = sorted(k for k, v in self.features.items() if v)
        libc.prctl(PR_SET_DUMPABLE, 0, None, 0, 0)  # nobody (same uid included) reads or writes our memory
        gc.collect()
        gc.freeze()  # children share the preloaded heap instead of copying it on first GC
        self.send({"event": "ready", "caps": caps})

    def _start_isolation(self, caps):
        cfg, missing = self.cfg, caps["missing"]
        if not self.root:
            try:
                enter_user_namespace()
                self.features["user_namespace"] = True
            except OSError as e:
                missing["user_namespace"] = f"unprivileged user namespaces unavailable: {e}"
        try:
            self.top_known = private_filesystem(cfg["expose"], cfg["hide"])
            self.features["fs_hiding"] = self.features["minimal_dev"] = True
            try:
                make_readonly()
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
                self.fprog = SockFprog(len(bpf) // 8, ctypes.addressof(self._buf))
            except Exception as e:
                missing["seccomp"] = f"pyseccomp/libseccomp unavailable: {e!r}"
        self._probe(caps)

    def _own_pid_namespace(self):
        """Become init of a PID namespace of our own: from it we may create one child namespace per call
        (setns back to it resets the namespace our next children land in), even without root."""
        self.init_bin = shutil.which("sleep", path="/usr/bin:/bin")
        if self.init_bin is None:
            raise OSError(errno.ENOENT, "no 'sleep' binary to serve as the per-call PID-namespace init")
        unshare(CLONE_NEWPID)
        pid = os.fork()
        if pid:  # the original process only mirrors the zygote's fate to the supervisor's Popen
            self.sock.close()
            for fds in self.cg_fds:
                for fd in fds:
                    os.close(fd)
            _, status = os.waitpid(pid, 0)
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, None, 0, 0)  # the parent only waits: no race
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
        check(libc.setns(self.pidns_fd, CLONE_NEWPID), "setns pid")
        unshare(CLONE_NEWPID)
        return os.posix_spawn(self.init_bin, [self.init_bin, "infinity"], {})

    # ---- per-call child set-up -------------------------------------------------------------
    def _step(self, step, req):
        if step == "namespaces":
            unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
            if self.features.get("pid_namespace"):
                mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                self.own_proc = True
        elif step == "tmpfs":
            if self.features.get("fs_hiding"):
                hide_new_top_level(self.top_known)
            fresh_tmp(self.cfg["expose"], int(self.cfg.get("tmp_size_mb", 64)), int(self.cfg.get("shm_size_mb", 0)))
        elif step == "drop_privileges":
            if self.root:
                self._seal_proc()
                uid = req["uid"]
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            else:
                # A user namespace of the call's own: RLIMIT_NPROC then counts this call's processes
                # only, and no capability reaches the zygote's namespaces (mounts stay put). Writing
                # our own uid_map needs /proc/self to be ours, hence dumpable first.
                libc.prctl(PR_SET_DUMPABLE, 1, None, 0, 0)
                enter_user_namespace()
                if self.own_proc:
                    unshare(CLONE_NEWNS)  # owned by the new user namespace: the remount below is ours to make
                    self._seal_proc()
                drop_capabilities()
            libc.prctl(PR_SET_DUMPABLE, 1, None, 0, 0)  # /proc/self stays readable by the call itself
        elif step == "no_new_privs":
            check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0), "no_new_privs")
        elif step == "seccomp":
            check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(self.fprog), 0, 0), "seccomp")

    def _seal_proc(self):
        """The call's /proc read-only from here on: a call must not lower the oom_score_adj it inherits
        (unprivileged, nothing else stops it: oom_score_adj_min is set only by a privileged writer)."""
        if self.own_proc:
            mount(None, "/proc", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)

    def _rlimits(self, lim):
        # Queued signals (a POSIX timer holds one) count per host user through every user namespace: a
        # call must not take the trainer's user's budget. Kernel-sent signals (SIGCHLD...) are never refused.
        pairs = [(resource.RLIMIT_CORE, 0, 0), (resource.RLIMIT_SIGPENDING, 256, 256)]
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
            if self.cfg.get("deny_setsid"):
                os.setsid()  # no cpu cgroup: a session is a scheduler autogroup of its own (~3 ms)
            else:
                os.setpgid(0, 0)  # the zygote already left the trainer's session; a group is enough
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
            write_inputs(payload.get("files") or {})
            self._rlimits(req["limits"])
            if ctl >= 0:
                # A session's orphans come to its interpreter, whose loop reaps them between commands:
                # under the PID namespace's init (``sleep``) they would stay zombies for the session's
                # life, each holding one of its pids (pids.max counts them).
                check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, None, 0, 0), "session subreaper")
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
            session_loop(ctl, req.get("env", {}))
        run_user_code(payload["code"], req.get("env", {}), files_fd, payload.get("fetch") or [])

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
            if call and call["pid"] and not call["init"]:
                try:
                    os.killpg(call["pid"], signal.SIGKILL)
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
        self.calls[req["id"]] = {"pid": pid, "init": init}
        self.by_pid[pid] = req["id"]
        if init:
            self.by_pid[init] = req["id"]
        self.send({"event": "started", "id": req["id"], "pid": pid, "init": init or 0})  # pids in our namespace
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
            if call is None or pid != call["pid"]:
                continue  # an init, or an orphan re-parented to us: reaped, nothing to report
            # The call is over: killing its init makes the kernel kill every leftover process of its PID
            # namespace (no PID namespace: at least its process group; a live pgid is never reused).
            try:
                if call["init"]:
                    os.kill(call["init"], signal.SIGKILL)
                else:
                    os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            del self.calls[cid]
            self.send({"event": "exit", "id": cid, "status": status,
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


def _oom_first():
    """oom_score_adj 1000 for the zygote and so every call it forks: when the host runs out of memory the
    kernel kills sandboxed processes before the trainer. Raising it needs no privilege; as root it also
    becomes the floor (oom_score_adj_min) no call can go below. Returns 1000, or why it failed."""
    try:
        with open("/proc/self/oom_score_adj", "w") as fh:
            fh.write("1000")
        return 1000
    except OSError as e:
        return str(e)


def main():
    sock = socket.socket(fileno=int(sys.argv[1]))
    sock.set_inheritable(False)
    cfg = json.loads(sock.recv(1 << 20))
    z = Zygote(sock, cfg)
    z.start()
    z.serve()


if __name__ == "__main__":
    main()
