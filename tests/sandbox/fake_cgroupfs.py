"""A cgroup2 tree in memory that enforces the kernel rules ``tirl.sandbox.cgroups`` relies on, and a
trace of operations that checks those rules against a real cgroup2 mount.

Run as ``unshare -m python fake_cgroupfs.py`` (root): mounts cgroup2 in a private mount namespace,
replays ``kernel_rules_trace`` with the first available controller and prints the outcomes as JSON,
so the test can compare the fake with the kernel (on this machine the v2 hierarchy only has hugetlb:
the rules are the same for every controller).
"""
import errno
import json
import os
import signal
import subprocess
import sys
import tempfile


class FakeCgroup2:
    """Rules: a cgroup's controllers are its parent's subtree_control (the root's are ``avail``);
    enabling needs the controller available; a non-root cgroup with controllers enabled for children
    holds no processes, and one holding processes cannot enable any (EBUSY both ways)."""

    root = "/fake/cg"

    def __init__(self, own="/user.slice/app.scope", avail=("memory", "pids", "cpu", "io"), others=0):
        self.top = set(avail)
        self.nodes = {self.root: {"procs": set(), "sub": set()}}
        path = self.root
        for part in [p for p in own.strip("/").split("/") if p]:
            parent, path = path, f"{path}/{part}"
            self.nodes[parent]["sub"] = set(avail)
            self.nodes[path] = {"procs": set(), "sub": set()}
        self.own = path
        self.nodes[path]["procs"] = {os.getpid()} | {10_000 + i for i in range(others)}

    def avail(self, path):  # like the kernel: what the parent enabled for its children, read live
        return self.top if path == self.root else self.nodes[os.path.dirname(path)]["sub"]

    def own_cgroups(self):
        return {"": self.own[len(self.root):] or "/"}

    def exists(self, path):
        d, f = os.path.split(path)
        if path in self.nodes:
            return True
        if d not in self.nodes:
            return False
        return f.startswith("cgroup.") or (f.split(".")[0] in self.avail(d) and f != "memory.swap.max")

    def writable(self, path):
        return True

    def read(self, path):
        d, f = os.path.split(path)
        if d not in self.nodes:
            raise FileNotFoundError(errno.ENOENT, "no such cgroup", path)
        n = self.nodes[d]
        return {"cgroup.controllers": " ".join(sorted(self.avail(d))), "cgroup.subtree_control": " ".join(sorted(n["sub"])),
                "cgroup.procs": "\n".join(map(str, sorted(n["procs"]))), "memory.events": "oom_kill 0\n"}.get(f, "")

    def write(self, path, value):
        d, f = os.path.split(path)
        n = self.nodes[d]
        if f == "cgroup.subtree_control":
            for tok in value.split():
                if tok[1:] not in self.avail(d):
                    raise OSError(errno.ENOENT, "controller not available", path)
            if n["procs"] and d != self.root:
                raise OSError(errno.EBUSY, "no internal processes", path)
            n["sub"] |= {t[1:] for t in value.split() if t[0] == "+"}
            n["sub"] -= {t[1:] for t in value.split() if t[0] == "-"}
        elif f == "cgroup.procs":
            if n["sub"] and d != self.root:
                raise OSError(errno.EBUSY, "no internal processes", path)
            pid = int(value) or os.getpid()
            for other in self.nodes.values():
                other["procs"].discard(pid)
            n["procs"].add(pid)
        elif not self.exists(path):
            raise OSError(errno.ENOENT, "no such file", path)

    def mkdir(self, path):
        self.nodes[path] = {"procs": set(), "sub": set()}

    def rmdir(self, path):
        if path not in self.nodes:
            raise FileNotFoundError(errno.ENOENT, "no such cgroup", path)
        if self.nodes[path]["procs"] or any(p.startswith(path + "/") for p in self.nodes):
            raise OSError(errno.EBUSY, "busy", path)
        del self.nodes[path]

    def listdir(self, path):
        return [p.rsplit("/", 1)[1] for p in self.nodes if os.path.dirname(p) == path]

    def kill(self, pid):
        pass

    def pid_alive(self, pid):
        return True


def kernel_rules_trace(fs, root: str, ctrl: str, pid: int) -> list:
    """Operations whose outcome (ok or errno name) shows the rules; ``pid`` is a spare process."""
    out = []

    def do(label, fn, *a):
        try:
            r = fn(*a)
            out.append([label, "ok" if r is None else r.split()])
        except OSError as e:
            out.append([label, errno.errorcode.get(e.errno, str(e.errno))])

    p, leaf = f"{root}/tirl-rules", f"{root}/tirl-rules/leaf"
    do("mkdir P", fs.mkdir, p)
    do("pid -> P", fs.write, f"{p}/cgroup.procs", str(pid))
    do("P +ctrl while root has not enabled it", fs.write, f"{p}/cgroup.subtree_control", f"+{ctrl}")
    do("root +ctrl", fs.write, f"{root}/cgroup.subtree_control", f"+{ctrl}")
    do("P controllers", fs.read, f"{p}/cgroup.controllers")
    do("P +ctrl while P holds a process", fs.write, f"{p}/cgroup.subtree_control", f"+{ctrl}")
    do("mkdir P/leaf", fs.mkdir, leaf)
    do("pid -> P/leaf", fs.write, f"{leaf}/cgroup.procs", str(pid))
    do("P +ctrl once empty", fs.write, f"{p}/cgroup.subtree_control", f"+{ctrl}")
    do("leaf controllers", fs.read, f"{leaf}/cgroup.controllers")
    do("pid -> P (controllers enabled)", fs.write, f"{p}/cgroup.procs", str(pid))
    do("rmdir P while leaf busy", fs.rmdir, p)
    return out


def _real_trace() -> dict:
    from tirl.sandbox.cgroups import RealFS

    mnt = tempfile.mkdtemp(prefix="tirl-cg2-")
    subprocess.run(["mount", "-t", "cgroup2", "none", mnt], check=True)
    fs = RealFS()
    ctrls = fs.read(f"{mnt}/cgroup.controllers").split()
    had = fs.read(f"{mnt}/cgroup.subtree_control").split()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        if not ctrls:
            return {"skip": "no controller available in the cgroup2 hierarchy"}
        ctrl = ctrls[0]
        return {"ctrl": ctrl, "trace": kernel_rules_trace(fs, mnt, ctrl, sleeper.pid)}
    finally:
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()
        for d in (f"{mnt}/tirl-rules/leaf", f"{mnt}/tirl-rules"):
            try:
                os.rmdir(d)
            except OSError:
                pass
        if ctrls and ctrls[0] not in had:
            try:
                fs.write(f"{mnt}/cgroup.subtree_control", f"-{ctrls[0]}")
            except OSError:
                pass
        subprocess.run(["umount", mnt])
        os.rmdir(mnt)


if __name__ == "__main__":
    json.dump(_real_trace(), sys.stdout)
