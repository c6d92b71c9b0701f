"""What a sandboxed call sees of the filesystem: built once at the zygote's start-up, refreshed per call.

Start-up (`private_filesystem`, in the zygote's own mount namespace): every top-level entry the
supervisor lists in ``hide`` is covered (a directory by an empty tmpfs, a regular file by /dev/null),
/dev becomes a tmpfs holding only null zero full random urandom, the std streams and an empty shm
mount point, and the interpreter's directories (``expose``) are bound back. The zygote then makes every
mount read-only (`_nsutil.make_readonly`).

Per call (`fresh_tmp`, in the call's own mount namespace): top-level entries made after start-up are
hidden too (`hide_new_top_level`: one listdir when nothing is new), and the call gets a fresh
size-limited /tmp and /dev/shm (POSIX semaphores, which `multiprocessing` needs), both gone when the
call's namespace dies. Standalone (stdlib + `_nsutil`), like the zygote.
"""
import os

from _nsutil import (
    CLONE_NEWNS, DEVICES, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT, mount,
    unshare,
)


def _hide(path):
    """Cover one entry: an empty tmpfs over a directory, /dev/null over a regular file (a memfd cannot be
    bound). Symlinks are left: what they point to is hidden or system."""
    if os.path.islink(path):
        return
    if os.path.isdir(path):
        mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    elif os.path.isfile(path):
        mount("/dev/null", path, None, MS_BIND)


def private_filesystem(expose, hide):
    """Once, in a mount namespace of our own: hide ``hide``, a minimal /dev, ``expose`` bound back.
    Returns the top-level names present now (what `hide_new_top_level` compares against)."""
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Keep a handle on each directory/device to re-expose before a tmpfs covers it.
    handles = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in expose if os.path.isdir(p)}
    devs = {d: os.open(f"/dev/{d}", os.O_PATH) for d in DEVICES if os.path.exists(f"/dev/{d}")}
    for path in sorted(set(hide), key=len):
        if os.path.realpath(path) == path:
            _hide(path)
    mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=755")
    for d, fd in devs.items():
        os.close(os.open(f"/dev/{d}", os.O_CREAT | os.O_WRONLY, 0o666))
        mount(f"/proc/self/fd/{fd}", f"/dev/{d}", None, MS_BIND)
        os.close(fd)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"/dev/{name}")
    os.mkdir("/dev/shm", 0o755)  # mount point of each call's own /dev/shm
    for path, fd in sorted(handles.items(), key=lambda kv: len(kv[0])):
        if not os.path.exists(path):
            os.makedirs(path, exist_ok=True)  # mount point inside a hiding tmpfs
            mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)
    return set(os.listdir("/"))


def hide_new_top_level(known):
    """Hide what appeared at the top of the host's tree after start-up (a checkout, a mount), as
    start-up hid what was there then."""
    for name in set(os.listdir("/")) - known:
        try:
            _hide("/" + name)
        except FileNotFoundError:  # gone again before we got to it
            continue


def fresh_tmp(expose, tmp_size_mb, shm_size_mb):
    """The call's own /tmp and /dev/shm, size-limited tmpfs."""
    # An interpreter or venv under /tmp (a CI checkout) must stay importable: lazily loaded
    # modules (numpy.random) are read after the fresh /tmp covers it, so re-expose it.
    under = [p for p in expose if p == "/tmp" or p.startswith("/tmp/")]
    handles = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in under}
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp_size_mb}m,mode=1777")
    for path, fd in sorted(handles.items(), key=lambda kv: len(kv[0])):
        os.makedirs(path, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.close(fd)
    if shm_size_mb > 0 and os.path.isdir("/dev/shm"):
        mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"size={shm_size_mb}m,mode=1777")
