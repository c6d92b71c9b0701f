"""The descriptors and checked inputs of one call: output drains with a byte cap, memfds, request
validation (timeout, input files) and the parsing of fetched files (program output, never trusted).
"""
from __future__ import annotations

import asyncio
import base64
import json
import math
import os
from dataclasses import dataclass, field

MAX_FILES_BYTES = 16 << 20  # fetched files, in total (base64 grows it by a third)


@dataclass
class Drain:
    """Non-blocking reader of one pipe, keeping at most ``cap`` bytes."""

    fd: int
    cap: int
    loop: asyncio.AbstractEventLoop
    on_overflow: object = None
    buf: bytearray = field(default_factory=bytearray)
    overflow: bool = False
    done: asyncio.Future | None = None

    def start(self) -> None:
        os.set_blocking(self.fd, False)
        self.done = self.loop.create_future()
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.close()
            return
        room = self.cap - len(self.buf)
        if len(chunk) > room:
            self.buf += chunk[:max(room, 0)]
            if not self.overflow:
                self.overflow = True
                if self.on_overflow:
                    self.on_overflow()
        else:
            self.buf += chunk

    def close(self) -> None:
        if self.fd >= 0:
            if self.done is not None:
                self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


def check_timeout(timeout: float | None, default: float) -> float:
    t = default if timeout is None else timeout
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise ValueError(f"timeout must be a number of seconds, not {timeout!r}") from None
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"timeout must be a finite positive number of seconds, not {timeout!r}")
    return t


def check_files(files: dict | None, limit_bytes: int) -> dict[str, str]:
    """Input files as {relative path: base64}; raises ValueError for bad names or a total over the limit.

    Every name the call's set-up would fail to write is refused here, as the caller's mistake: there it
    would be ``sandbox_error``, the status that means "retry", and a retry fails the same way."""
    out, total, paths = {}, 0, set()
    for name, data in (files or {}).items():
        paths.add(_check_name(name, paths))
        if isinstance(data, str):
            raw = base64.b64decode(data, validate=True)
        elif isinstance(data, (bytes, bytearray)):
            raw = bytes(data)
        else:
            raise ValueError(f"input file {name!r} must be bytes or a base64 string")
        total += len(raw)
        out[name] = base64.b64encode(raw).decode()
    if total > limit_bytes:
        raise ValueError(f"input files hold {total} bytes, over the limit of {limit_bytes} (tmp_size_mb)")
    return out


def _check_name(name, taken: set[str]) -> str:
    """The normalised path of one input file name; ValueError unless it names a file inside /tmp that no
    other input file uses as a directory, or the other way round."""
    path = os.path.normpath(name) if isinstance(name, str) and name and "\0" not in name else ""
    if not path or path == "." or path.startswith(("/", "../")) or path == "..":
        raise ValueError(f"input file name must be a relative path to a file inside /tmp: {name!r}")
    if len(path.encode()) >= 4096 or any(len(part.encode()) > 255 for part in path.split("/")):
        raise ValueError(f"input file name too long (255 bytes a component, 4095 in all): {name[:80]!r}...")
    parents = {path.rsplit("/", i)[0] for i in range(1, path.count("/") + 1)}
    if path in taken or parents & taken or any(p.startswith(path + "/") for p in taken):
        raise ValueError(f"input file name {name!r} is also another input file, or its directory")
    return path


def memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)  # stdin is read through this very file offset
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_fetched(fd: int, wanted: set[str]) -> dict[str, str]:
    """Files the program left for ``fetch_files``: program output, so parsed defensively and capped."""
    size = os.fstat(fd).st_size
    if not size or size > MAX_FILES_BYTES * 4 // 3 + 4096:
        return {}
    try:
        got = json.loads(os.pread(fd, size, 0))
    except (ValueError, OSError):
        return {}
    if not isinstance(got, dict):
        return {}
    return {k: v for k, v in got.items() if k in wanted and isinstance(v, str)}
