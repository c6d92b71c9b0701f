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
