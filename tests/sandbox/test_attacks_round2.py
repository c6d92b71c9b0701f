"""Round-2 attacks (``attack_cases.py``), each run as this process's user and as an unprivileged uid.

The ``self`` run uses the shared sandbox of this module's process (root in CI). The ``unprivileged``
run re-launches every case once, in a subprocess under ``setpriv`` as a throwaway uid
(``TIRL_UNPRIV_USER``, default ``tirl-unpriv``, else ``nobody``) with a Python that uid can run
(``TIRL_UNPRIV_PYTHON``, else this interpreter, else /opt/tirl-unpriv-venv/bin/python) and this
checkout's ``src`` on PYTHONPATH; it is skipped, with the reason, when that is impossible. One-time
set-up of such a machine: ``useradd --system tirl-unpriv`` and a venv outside /root with numpy,
sympy, aiohttp, omegaconf, pyseccomp. After each case the host is checked (sandbox answers, nothing
left under the zygote, no cgroup member, no file left in host directories); after the unprivileged
run, nothing of that uid survives.
"""
import json
import os
import pwd
import subprocess
import sys

import pytest

import attack_cases
import session_attacks

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src")
HERE = os.path.dirname(os.path.abspath(__file__))


def _plant(tag):
    """World-readable host data at the top of the tree, under a name no deny-list knows."""
    top = f"/tirl-{tag}-{os.getpid()}"
    os.makedirs(top, mode=0o755)
    paths = [os.path.join(top, "notes.txt"), top + ".txt"]
    for p in paths:
        with open(p, "w") as fh:
            fh.write("host data")
        os.chmod(p, 0o644)
    return top, paths


def _unplant(top, paths):
    for p in paths:
        os.unlink(p)
    os.rmdir(top)


@pytest.fixture(scope="module")
def top_level_probe():
    """As root, files at the top of the host's tree (as a CI clone in /check, a dataset in /scratch),
    planted before the sandbox starts: ``home_and_project_hidden`` must not see them."""
    if os.geteuid() != 0:
        yield ""
        return
    top, paths = _plant("probe")
    os.environ["TIRL_PROBE_PATHS"] = os.pathsep.join(paths)
    yield os.environ["TIRL_PROBE_PATHS"]
    del os.environ["TIRL_PROBE_PATHS"]
    _unplant(top, paths)


@pytest.fixture(scope="module")
def host_sockets():
    """As root, unix sockets anyone may reach under /var/lib (as a host service's): both runs try them."""
    if os.geteuid() != 0:
        yield ""
        return
    top, socks = attack_cases.plant_unix_listeners("/var/lib")
    os.environ["TIRL_HOST_SOCKETS"] = top
    yield top
    del os.environ["TIRL_HOST_SOCKETS"]
    attack_cases.unplant_unix_listeners(top, socks)


@pytest.fixture(scope="module")
def self_results(top_level_probe, host_sockets, sb):
    return {"report": sb.isolation, "cases": attack_cases.run_all(sb)}


def _unpriv_command():
    if os.geteuid() != 0:
        pytest.skip("this process is not root: the 'self' run is already the unprivileged run")
    if subprocess.run(["which", "setpriv"], capture_output=True).returncode:
        pytest.skip("setpriv (util-linux) is not installed")
    for name in (os.environ.get("TIRL_UNPRIV_USER"), "tirl-unpriv", "nobody"):
        try:
            user = pwd.getpwnam(name) if name else None
        except KeyError:
            continue
        if user:
            break
    else:
        pytest.skip("no unprivileged user (set TIRL_UNPRIV_USER or useradd tirl-unpriv)")
    base = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "env", "-i",
            "PATH=/usr/bin:/bin", f"PYTHONPATH={os.path.realpath(SRC)}"]
    tried = []
    for py in (os.environ.get("TIRL_UNPRIV_PYTHON"), sys.executable, "/opt/tirl-unpriv-venv/bin/python"):
        if not py:
            continue
        probe = subprocess.run(base + [py, "-c", "import numpy, sympy, aiohttp, omegaconf, tirl.sandbox"],
                               capture_output=True, cwd="/", timeout=60)
        if probe.returncode == 0:
            return base + [py], user.pw_uid
        tried.append(f"{py}: {probe.stderr.decode(errors='replace').strip().splitlines()[-1:]}")
    pytest.skip(f"uid {user.pw_uid} cannot run a Python with tirl.sandbox's needs ({'; '.join(tried)}); "
                "set TIRL_UNPRIV_PYTHON")


@pytest.fixture(scope="module")
def unpriv_results(top_level_probe, host_sockets):
    cmd, uid = _unpriv_command()
    cmd = cmd[:-1] + [f"TIRL_PROBE_PATHS={top_level_probe}", f"TIRL_HOST_SOCKETS={host_sockets}", cmd[-1]]
    proc = subprocess.run(cmd + [os.path.join(HERE, "attack_cases.py")], capture_output=True, cwd="/", timeout=600)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    out = json.loads(proc.stdout)
    out["survivors"] = [p for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) == uid]
    return out


def _uid_of(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


@pytest.mark.parametrize("name", [*attack_cases.CASES, *session_attacks.CASES])
@pytest.mark.parametrize("who", ["self", "unprivileged"])
def test_attack(request, who, name):
    results = request.getfixturevalue("self_results" if who == "self" else "unpriv_results")
    case = results["cases"][name]
    assert case["verdict"] == "", f"{case['verdict']}: {case['result']}"
    assert case["host"] == "", case["host"]
    if who == "unprivileged":
        assert results["after_close"] == [] and results["survivors"] == [], "processes outlived close()"


def test_unprivileged_report_is_honest(unpriv_results):
    """Where a limit needs a privilege this machine does not give, the report names it."""
    rep = unpriv_results["report"]
    assert rep["root"] is False
    if rep["cgroup"] is None:
        assert rep["level"] == "partial" and "cgroup" in rep["missing"]
        assert rep["limits"]["memory"].startswith("NOT ENFORCED for the call: no memory cgroup")
    assert "NOT ENFORCED" not in rep["limits"]["host_oom"]
    for prim in ("pid_namespace", "readonly_fs", "minimal_dev", "drop_privileges", "seccomp"):
        assert prim in rep["present"], rep["missing"].get(prim)


LATE_CHECK = ("import os\ndef seen(p):\n    try:\n        return bool(open(p, 'rb').read(1))\n    except OSError:\n"
              "        return False\nprint([p for p in {paths!r} if seen(p)])")
LATE_CHILD = """
import json, sys
from tirl.sandbox import Sandbox, SandboxConfig
with Sandbox(SandboxConfig(timeout_s=5, max_concurrency=1, max_sessions=1)) as sb:
    print("ready", flush=True)
    paths = json.loads(sys.stdin.readline())
    r = sb.run(sys.argv[1].format(paths=paths), timeout=5)
    print(json.dumps({"status": r.status, "stdout": r.stdout}), flush=True)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="planting at / needs root")
def test_a_top_level_entry_made_after_start_is_hidden(sb):
    """Start-up hides what is at / then; a checkout or mount made later must not show either."""
    sb.run("print(1)", timeout=5)  # the zygote is up before the entry exists
    top, paths = _plant("late-self")
    try:
        r = sb.run(LATE_CHECK.format(paths=paths), timeout=5)
    finally:
        _unplant(top, paths)
    assert (r.status, r.stdout) == ("ok", "[]\n")


def test_a_top_level_entry_made_after_start_is_hidden_unprivileged():
    cmd, _ = _unpriv_command()
    proc = subprocess.Popen(cmd + ["-c", LATE_CHILD, LATE_CHECK], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-2000:]
        top, paths = _plant("late-unpriv")
        try:
            proc.stdin.write(json.dumps(paths) + "\n")
            proc.stdin.flush()
            out = json.loads(proc.stdout.readline())
        finally:
            _unplant(top, paths)
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert out == {"status": "ok", "stdout": "[]\n"}
