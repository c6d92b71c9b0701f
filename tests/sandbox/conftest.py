"""Shared fixtures: one Sandbox per test module (start-up costs ~0.5 s) and host checks.

Module scope, not session scope: the leak check at teardown counts this process's file
descriptors, and in a full run other test files (grading workers, servers) open their own.

The fake secret is put into this process's environment (by ``_sandbox_helpers``) before any sandbox
starts, so tests can assert it never reaches a snippet.
"""
import os

import pytest
from _sandbox_helpers import assert_host_unharmed, processes_of, sandbox_uids

from tirl.sandbox import Sandbox, SandboxConfig


@pytest.fixture(scope="module")
def sb():
    cfg = SandboxConfig(timeout_s=5, memory_mb=256, max_concurrency=2, max_sessions=2)
    fds_before = len(os.listdir("/proc/self/fd"))
    box = Sandbox(cfg)
    yield box
    cg = box._sup.cg
    uids = sandbox_uids(box)
    box.close()
    assert processes_of(uids) == []
    if cg is not None:
        for base in cg.bases.values():
            assert not os.path.exists(base), f"cgroup left behind: {base}"
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2  # pytest itself may hold a file


@pytest.fixture
def unharmed(sb):
    """Use in every attack test: after the attack, the host and the sandbox must be fine."""
    yield sb
    assert_host_unharmed(sb)
