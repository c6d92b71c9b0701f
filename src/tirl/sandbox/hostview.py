"""What a sandboxed call sees of the host and who it runs as: the scrubbed environment, the hidden
directories, the interpreter re-exposed read-only, and (root) a uid block no other sandbox holds.
"""
from __future__ import annotations

import fcntl
import os
import sys

from .config import SandboxConfig, SandboxUnavailable

# Scrubbed environment for the zygote and the snippets: nothing of the trainer's (tokens, keys).
BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/tmp",
    "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8",
    # One thread per BLAS: calls run side by side, and a thread pool per fork would multiply.
    "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1",
}
_SYSTEM_DIRS = ("/", "/usr", "/etc", "/lib", "/lib64", "/bin", "/sbin", "/proc", "/sys", "/dev", "/var", "/run")
# What a call may see at the top of the host's tree: the system and read-only software stores. Every
# other top-level entry is hidden, so a checkout, dataset or mount in a place we never heard of
# (/check, /data, /scratch) is as hidden as /home. /run, /var/tmp and the lock directories are host
# runtime state (on the host's disk or RAM): a call must not leave data there.
VISIBLE_TOP = frozenset({"usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "proc", "sys", "dev",
                         "var", "nix", "gnu", "snap"})
HIDDEN_BELOW = ("/var/tmp", "/var/lock", "/var/run")
_UID_LOCK_DIR = "/run/tirl-sandbox"


def hidden_top_level(root: str = "/") -> list[str]:
    """Every entry at the top of the host's tree that is not system: directories get an empty tmpfs,
    regular files an empty file bound over them."""
    out = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name not in VISIBLE_TOP and not os.path.islink(path):
            out.append(path)
    return out


def hide_and_expose(cfg: SandboxConfig) -> tuple[list[str], list[str]]:
    hide = hidden_top_level() + list(HIDDEN_BELOW)
    cwd = os.path.realpath(os.getcwd())
    if not any(cwd == d or d.startswith(cwd.rstrip("/") + "/") for d in _SYSTEM_DIRS):
        hide.append(cwd)
    hide += [os.path.realpath(p) for p in cfg.hide_paths]
    # The interpreter and its packages stay readable (read-only) so lazy imports work in the child;
    # project sources on sys.path (editable installs) stay hidden.
    expose = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    expose |= {os.path.realpath(p) for p in sys.path if p and ("site-packages" in p or "dist-packages" in p)}
    expose.add(os.path.dirname(os.path.realpath(sys.executable)))
    return sorted(set(hide)), sorted(p for p in expose if os.path.isdir(p))


def lease_uid_block(base: int, blocks: int = 4096) -> tuple[int, int]:
    """A block of 256 uids no other sandbox on this host holds: (first uid, lock fd to keep open).

    flock conflicts between two open files even within one process, and the kernel drops the lock
    when its holder dies, so a crashed trainer never leaks its block."""
    os.makedirs(_UID_LOCK_DIR, mode=0o700, exist_ok=True)
    first = os.getpid() % blocks
    for k in range(blocks):
        b = (first + k) % blocks
        fd = os.open(os.path.join(_UID_LOCK_DIR, f"uids-{b}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return base + b * 256, fd
        except BlockingIOError:
            os.close(fd)
    raise SandboxUnavailable(f"all {blocks} sandbox uid blocks on this host are taken")


def descendants(root_pid: int) -> set[int]:
    """Every live process below ``root_pid`` (from /proc's parent links)."""
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(name))
    out, todo = set(), [root_pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.add(k)
            todo.append(k)
    return out
