"""Helpers for the sandbox tests (imported by conftest and the test modules)."""
import os

import pytest

from tirl.sandbox import Sandbox, SandboxConfig  # noqa: F401


FAKE_SECRET = "tirl-fake-secret-7f3a9c"
os.environ["TIRL_TEST_API_KEY"] = FAKE_SECRET  # set before any sandbox starts


def sandbox_uids(sb):
    lo = sb._sup.uid0
    return range(lo, lo + 256)


def processes_of(uids):
    """Pids on the host owned by any of ``uids`` (sandboxed leftovers)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/status") as fh:
                    for line in fh:
                        if line.startswith("Uid:"):
                            if int(line.split()[1]) in uids:
                                found.append(int(name))
                            break
            except OSError:
                pass
    return found


def assert_host_unharmed(sb):
    """Next call works, nothing of earlier calls survives (no process, no cgroup member)."""
    res = sb.run("print('alive')", timeout=10)
    assert res.status == "ok" and res.stdout == "alive\n", res
    assert processes_of(sandbox_uids(sb)) == []
    if sb._sup.cg is not None:
        for i in range(sb._sup.n_slots):
            assert sb._sup.cg.members(i) == []
    assert sb._sup._proc is not None and sb._sup._proc.poll() is None, "zygote died"



def needs(sb, *prims):
    missing = [p for p in prims if p not in sb.isolation["present"]]
    if missing:
        pytest.skip(f"this machine lacks isolation primitive(s): {', '.join(missing)}")
