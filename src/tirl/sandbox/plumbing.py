"""The descriptors and checked inputs of one call: output drains with a byte cap, memfds, request
validation (timeout, input file names, files to fetch) and the parsing of fetched files (program output,
never trusted: size-capped before it is read, parsed in at most one step per file asked for).
"""
from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import re
from dataclasses import dataclass, field
from json.decoder import scanstring

MAX_FILES_BYTES = 16 << 20  # fetched files, in total (base64 grows it by a third)
FETCHED_CAP = MAX_FILES_BYTES * 4 // 3 + 4096  # the runner's JSON of them, names included
MAX_FETCH = 1000  # names in fetch_files: parsing what comes back takes one step per name
_SPACE = re.compile(r"[ \t\n\r]*")


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
        self._take(chunk)

    def finish(self) -> None:
        """Take what the pipe holds now and close it: for writers that are stopped or dead but whose
        EOF may never come (a stopped session process still holds a copy of the write end)."""
        while self.fd >= 0 and not self.overflow:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                break
            self._take(chunk)
        self.close()

    def _take(self, chunk: bytes) -> None:
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


def check_fetch(fetch_files: list | None) -> list[str]:
    """The names to fetch: a list of at most ``MAX_FETCH`` strings (ValueError otherwise)."""
    fetch = list(fetch_files or [])
    if not all(isinstance(f, str) for f in fetch):
        raise ValueError("fetch_files must be a list of path strings")
    if len(fetch) > MAX_FETCH:
        raise ValueError(f"fetch_files names {len(fetch)} files, over the limit of {MAX_FETCH}")
    return fetch


def read_fetched(fd: int, wanted: set[str]) -> tuple[dict[str, str], str]:
    """Files the program left for ``fetch_files``, and why none came back when that is not the program's
    plain absence of them (a line for the result's message). Program output: capped before it is read."""
    size = os.fstat(fd).st_size
    if not size:
        return {}, ""
    if size > FETCHED_CAP:
        return {}, f"fetch_files: {size} bytes of files, over the limit of {FETCHED_CAP}: none returned"
    try:
        return parse_fetched(os.pread(fd, size, 0).decode(), wanted), ""
    except (ValueError, OSError) as e:
        return {}, (f"fetch_files: the files could not be read back ({e}; over file_size_mb, or the "
                    "program wrote to their descriptor): none returned")


def parse_fetched(text: str, wanted: set[str]) -> dict[str, str]:
    """The runner's ``{"name": "base64", ...}``, one pair at a time, given up after more pairs than
    names were asked for; ValueError for anything else. ``json.loads`` of 16 MB of ``{"0":"","1":"",...}``
    held the event loop for over a second, and being C that keeps the GIL, a thread would not have helped."""
    i, out = _after(text, 0, "{"), {}
    if text.startswith("}", i):
        return _end(text, i + 1, out)
    for _ in range(len(wanted)):
        key, i = _string(text, i)
        value, i = _string(text, _after(text, i, ":"))
        if key in wanted:
            out[key] = value
        i = _SPACE.match(text, i).end()
        if text.startswith("}", i):
            return _end(text, i + 1, out)
        i = _after(text, i, ",")
    raise ValueError("more entries than files asked for")


def _after(text: str, i: int, char: str) -> int:
    """The index past ``char`` at ``i`` (white space around it skipped)."""
    i = _SPACE.match(text, i).end()
    if not text.startswith(char, i):
        raise ValueError(f"expected {char!r} at offset {i}")
    return _SPACE.match(text, i + 1).end()


def _string(text: str, i: int) -> tuple[str, int]:
    """The JSON string at ``i`` and the index past it: one C call, linear in its length."""
    if not text.startswith('"', i):
        raise ValueError(f"expected a string at offset {i}")
    return scanstring(text, i + 1)


def _end(text: str, i: int, out: dict[str, str]) -> dict[str, str]:
    if _SPACE.match(text, i).end() != len(text):
        raise ValueError(f"data after the end at offset {i}")
    return out
