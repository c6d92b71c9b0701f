"""Start real `tirl sandbox serve` processes on free loopback ports for tests, and stop them."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(concurrency: int = 2, timeout_s: float = 60.0,
                 token: str | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "TIRL_SANDBOX_TOKEN"}  # only the token asked for
    args = ["--token", token] if token else []
    proc = subprocess.Popen([sys.executable, "-m", "tirl.sandbox.cli", "serve", "--port", str(port),
                             "--max-concurrency", str(concurrency), "--preload", "", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    health = urllib.request.Request(f"{url}/health", headers={"Authorization": f"Bearer {token}"} if token else {})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sandbox server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(health, timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError("sandbox server did not become healthy")


def stop_server(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Signal the server's whole process group (server, zygote, children) and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
