"""Peak resident memory of a stage of this process (SFT, RL, evaluation), for `summary.json`.

Linux keeps a process's high-water mark of resident memory (`VmHWM` in /proc/self/status) and lets the
process reset it to the current size (writing 5 to /proc/self/clear_refs), so a stage's own peak is the
mark read at its end after a reset at its start. Stages nest (the demo's RL stage holds `train_rl`,
which may evaluate): an inner stage's reset would hide what the outer stage reached before it, so each
reset first hands the mark so far to every open outer stage.

Not covered: other systems (no `VmHWM` to reset; `peak_rss_mb` is then the process's peak so far from
`getrusage`, and `scope` says so), child processes (the sandbox's interpreters are not counted), and
stages on other threads (the peak is the process's, whichever thread allocated).
"""

from __future__ import annotations

import contextlib
import functools
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _status_kb(field: str) -> int | None:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Resident memory now, MB (None where /proc is missing)."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def _process_peak_mb() -> float:
    """The process's peak since it started (ru_maxrss: KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _reset_mark() -> bool:
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass(eq=False)  # the open stages are told apart by identity: two fresh ones compare equal by value
class StagePeak:
    """A stage's peak resident memory, filled in when its `stage_peak` block ends."""
    peak_rss_mb: float | None = None
    scope: str = "stage"
    """"stage" (reset at its start) or "process" (no reset possible: the process's peak so far)."""
    _seen_kb: int = 0

    def as_dict(self) -> dict[str, float | str | None]:
        mb = None if self.peak_rss_mb is None else round(self.peak_rss_mb, 1)
        return {"peak_rss_mb": mb, "scope": self.scope}


_open: list[StagePeak] = []


@contextlib.contextmanager
def stage_peak() -> Iterator[StagePeak]:
    """`with stage_peak() as p: ...` then `p.peak_rss_mb` is the block's peak resident memory (MB)."""
    mark = _status_kb("VmHWM")
    for outer in _open:  # the mark is about to be reset: outer stages keep what it held
        outer._seen_kb = max(outer._seen_kb, mark or 0)
    p = StagePeak(scope="stage" if mark is not None and _reset_mark() else "process")
    _open.append(p)
    try:
        yield p
    finally:
        _open.remove(p)
        end = _status_kb("VmHWM")
        if p.scope == "stage" and end is not None:
            p.peak_rss_mb = max(p._seen_kb, end) / 1024
        else:
            p.peak_rss_mb = _process_peak_mb()


_last_trim: tuple[float, float] | None = None  # (time.monotonic(), resident MB) just after the last hand-back


def release_free_memory() -> bool:
    """Hand the memory the C allocator holds free back to the system (glibc's `malloc_trim`); False where
    there is no glibc. Why: PyTorch's CPU tensors come from malloc, and glibc keeps what they free. An RL
    step alternates two allocation patterns (decoding's caches, then the update's activations and the
    optimizer's state), so freed pages of one phase sit resident beside the next phase's fresh ones and
    the resident peak climbs step after step (SmolLM2, micro-batch 8 x 384: 5.2 GB at the first update,
    7.3 GB at the second; benchmarks/memory.py). The cost: page faults on the pages the next step touches
    again (~0.1 s per GB)."""
    global _last_trim
    trim = _malloc_trim()
    released = bool(trim and trim(0) >= 0)
    _last_trim = (time.monotonic(), rss_mb() or 0.0)
    return released


def release_if_grown(mb: float = 64.0, every_s: float = 2.0) -> bool:
    """`release_free_memory` for loops that would otherwise call it after every step: only once resident
    memory has grown by `mb` since the last hand-back, and at most once every `every_s` seconds. Why:
    each hand-back costs the page faults of the next step touching those pages again, which on the toy
    demo's SFT (2,500 steps of ~80 ms) was 37 ms a step, +40% of the stage; a slow step (SmolLM2's
    update micro-batches take seconds) still hands back after every one. True if it handed back."""
    if _last_trim is not None:
        if time.monotonic() - _last_trim[0] < every_s:  # the clock first: most calls stop here, /proc unread
            return False
        now = rss_mb()
        if now is not None and now - _last_trim[1] < mb:
            return False
    return release_free_memory()


@functools.cache
def _malloc_trim() -> Any:
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
