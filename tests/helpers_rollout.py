"""Test-only stand-ins for the sandbox, used by the rollout tests (the real `tirl.sandbox.Sandbox` is
exercised separately in `test_rollout.py::test_rollout_through_real_sandbox`)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass
class Result:
    status: str
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0


class SubprocessRunner:
    """Runs each snippet with `python -c` (no isolation: tests only run their own code). Records every
    batch it was given, so tests can assert what was (not) executed and that a turn's code ran together."""

    def __init__(self, timeout: float = 10.0):
        self.timeout = timeout
        self.batches: list[list[str]] = []

    def run_batch(self, codes: list[str]) -> list[Result]:
        self.batches.append(list(codes))
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", c], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for c in codes]  # started together: concurrent
        out = []
        for p in procs:
            try:
                so, se = p.communicate(timeout=self.timeout)
                out.append(Result("ok" if p.returncode == 0 else "error", so, se, time.perf_counter() - t0))
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
                out.append(Result("timeout", "", "", self.timeout))
        return out

    @property
    def executed(self) -> list[str]:
        return [c for b in self.batches for c in b]


class FixedResults:
    """Returns a given result for every snippet (e.g. a timeout or a memory kill)."""

    def __init__(self, result: Result):
        self.result = result
        self.batches: list[list[str]] = []

    def run_batch(self, codes: list[str]) -> list[Result]:
        self.batches.append(list(codes))
        return [self.result for _ in codes]


class BrokenSandbox:
    """A sandbox whose batch call itself fails (worker pool died)."""

    def __init__(self):
        self.calls = 0

    def run_batch(self, codes: list[str]):
        self.calls += 1
        raise ConnectionError("worker pool is gone")


INJECTED = "injected fault: the sandbox server dropped the connection"


class FlakySandbox:
    """Wraps a sandbox and fails a share `rate` of its calls as the infrastructure would (`sandbox_error`,
    as an HTTP client reports a 503 or a dropped connection), drawn per call from a seeded generator.
    `fail_codes` maps a program to how many of its attempts fail (math.inf: all), on top of the random
    share. Records the programs that got a fault (`injected`) and every batch it ran (`batches`).
    Thread-safe (the continuous loop calls it from several threads)."""

    def __init__(self, inner, rate: float = 0.0, seed: int = 0, fail_codes: dict | None = None):
        import random
        import threading

        self.inner, self.rate = inner, rate
        self.rng = random.Random(seed)
        self.fail_codes = dict(fail_codes or {})
        self.injected: list[str] = []
        self.batches: list[list[str]] = []
        self._lock = threading.Lock()

    def _fails(self, code: str) -> bool:
        with self._lock:
            left = self.fail_codes.get(code, 0)
            if left > 0:
                self.fail_codes[code] = left - 1
            fail = left > 0 or (self.rate > 0 and self.rng.random() < self.rate)
            if fail:
                self.injected.append(code)
            return fail

    def run_batch(self, codes, timeout=None):
        from tirl.sandbox import ExecResult

        with self._lock:
            self.batches.append(list(codes))
        fails = [self._fails(c) for c in codes]
        ran = iter(self.inner.run_batch([c for c, f in zip(codes, fails) if not f]) if not all(fails) else [])
        return [ExecResult("sandbox_error", message=INJECTED) if f else next(ran) for f in fails]

    @property
    def isolation(self):
        return getattr(self.inner, "isolation", None)

    def close(self):
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


class HangingSandbox:
    """Answers `ok` at once, except programs containing `hang` (they block until `release` is set)."""

    def __init__(self):
        import threading

        self.release = threading.Event()

    def run_batch(self, codes, timeout=None):
        if any("hang" in c for c in codes):
            self.release.wait(60)
        return [Result("ok", "1\n") for _ in codes]
