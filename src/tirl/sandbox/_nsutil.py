"""Kernel primitives of the zygote (ctypes over libc): namespaces, mounts, capabilities, a read-only
filesystem view, and the seccomp filter. Standalone (stdlib + optional pyseccomp), like the zygote.
"""
import ctypes
import errno
import os
import socket

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWCGROUP = 0x10000000, 0x20000000, 0x40000000, 0x02000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_SET_CHILD_SUBREAPER, PR_SET_DUMPABLE = 38, 22, 36, 4
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 1, 24, 47, 4
SECCOMP_MODE_FILTER = 2
SYS_MOUNT_SETATTR, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, 0x8000, 1
DEVICES = ("null", "zero", "full", "random", "urandom")

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(src, target, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    check(libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def unshare(flags):
    check(libc.unshare(flags), "unshare")


def write_file(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def enter_user_namespace(inner_uid=0):
    """Map our own uid/gid to ``inner_uid`` in a new user namespace (no setuid helper needed)."""
    uid, gid = os.geteuid(), os.getegid()
    unshare(CLONE_NEWUSER)
    write_file("/proc/self/setgroups", "deny")
    write_file("/proc/self/uid_map", f"{inner_uid} {uid} 1")
    write_file("/proc/self/gid_map", f"{inner_uid} {gid} 1")


def drop_capabilities():
    """Empty bounding, ambient, permitted, effective and inheritable sets (user-namespace path)."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last + 1):
        libc.prctl(PR_CAPBSET_DROP, cap, None, 0, 0)
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, None, 0, 0)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    hdr, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3, all zero
    check(libc.capset(ctypes.byref(hdr), ctypes.byref(data)), "capset")


def make_readonly():
    """Every mount of this namespace read-only (mount_setattr, else one remount per mount point)."""

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    if libc.syscall(SYS_MOUNT_SETATTR, -100, b"/", AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)) == 0:
        return
    with open("/proc/self/mountinfo") as fh:  # kernels before 5.12
        points = [line.split()[4].encode().decode("unicode_escape") for line in fh]
    for p in points:
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        keep = st.f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)  # locked flags must be kept in a user ns
        mount(None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


# Denied outright (EPERM): escape hatches and kernel attack surface a numeric snippet never needs.
_DENY = (
    "ptrace process_vm_readv process_vm_writev kcmp mount umount2 pivot_root chroot move_mount "
    "open_tree fsopen fsmount fsconfig fspick mount_setattr setns unshare keyctl add_key request_key "
    "bpf perf_event_open userfaultfd io_uring_setup io_uring_enter io_uring_register kexec_load "
    "kexec_file_load init_module finit_module delete_module reboot swapon swapoff acct quotactl "
    "syslog open_by_handle_at name_to_handle_at iopl ioperm uselib vhangup lookup_dcookie"
).split()


# Absent (ENOSYS, so a library falls back to a file in the call's capped /tmp or /dev/shm), each for a reason:
# memory that no rlimit counts and only a memory cgroup would bound (memfd pages, SysV shared memory,
# message queues and semaphore arrays), and budgets the kernel counts per host user through every user
# namespace (inotify and fanotify instances, 128 each; POSIX message queues, RLIMIT_MSGQUEUE 800 KB), which
# one call would otherwise take from the trainer's user. Numeric code needs none of them.
_ABSENT = (
    "memfd_create memfd_secret shmget msgget semget mq_open inotify_init inotify_init1 fanotify_init"
).split()


def build_seccomp_bpf(deny_setsid=False):
    """Compile the filter once (in the zygote); children load the raw BPF with one prctl.

    ``deny_setsid``: without a cpu cgroup, a call's processes share one scheduler autogroup (the
    session made at set-up) only if they cannot start sessions of their own; without a PID namespace
    its process group is then also the handle that kills them all (setpgid denied too)."""
    import pyseccomp as sc  # optional dependency; absence is reported, not fatal

    f = sc.SyscallFilter(sc.ALLOW)
    for name in _DENY + (["setsid", "setpgid"] if deny_setsid else []):
        try:
            f.add_rule(sc.ERRNO(errno.EPERM), name)
        except Exception:  # syscall unknown on this architecture
            pass
    # clone3 passes flags in memory seccomp cannot inspect: ENOSYS makes glibc fall back to clone.
    for name in _ABSENT + ["clone3"]:
        try:
            f.add_rule(sc.ERRNO(errno.ENOSYS), name)
        except Exception:  # syscall unknown on this architecture
            pass
    for flag in (CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWIPC, CLONE_NEWUTS, CLONE_NEWCGROUP):
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # No socket() at all: the network namespace hides the host's network and abstract sockets, but not
    # its unix sockets by path (a service's socket under /var/lib, mode 777), and seccomp cannot read the
    # path connect() is given. socketpair() stays (asyncio's self-pipe, multiprocessing.Pipe), stream and
    # seqpacket only: a datagram pair (SOCK_RAW is one too, for AF_UNIX) still sends to any path with
    # sendto(). What this costs: multiprocessing.Manager (a unix socket server) fails inside; Pool, Queue,
    # Pipe, shared_memory and ProcessPoolExecutor work. Python 3.14 defaults multiprocessing to
    # forkserver, which needs socket(): the zygote sets "fork" there.
    f.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socket")
    f.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socketpair", sc.Arg(0, sc.NE, socket.AF_UNIX))
    for kind in (socket.SOCK_DGRAM, socket.SOCK_RAW):
        f.add_rule(sc.ERRNO(errno.EPROTONOSUPPORT), "socketpair", sc.Arg(1, sc.MASKED_EQ, 0xF, kind))
    # Socket buffers are kernel memory no rlimit counts: raised to the host's wmem_max (4 MB here), 100
    # socketpairs queued 1.5 GB in one process. At the default (~0.4 MB a pair) RLIMIT_NOFILE bounds them.
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF, 32, 33):  # 32, 33: SO_SNDBUFFORCE, SO_RCVBUFFORCE
        f.add_rule(sc.ERRNO(errno.EPERM), "setsockopt", sc.Arg(1, sc.EQ, socket.SOL_SOCKET), sc.Arg(2, sc.EQ, opt))
    fd = os.memfd_create("bpf")
    with os.fdopen(fd, "w+b") as fh:
        f.export_bpf(fh)
        fh.seek(0)
        return fh.read()
