"""Smoke tests of `tirl sandbox serve | bench | check` through a subprocess, as a user runs them."""
import json
import subprocess
import sys


def _cli(*args, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "tirl.cli", "sandbox", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_help_lists_subcommands():
    out = _cli("--help")
    assert out.returncode == 0 and all(c in out.stdout for c in ("serve", "bench", "check"))


def test_check_json():
    out = _cli("check", "--json", "--preload", "", "--max-concurrency", "1")
    rep = json.loads(out.stdout)
    assert out.returncode == (0 if rep["level"] == "full" else 1)
    assert rep["probe"]["status"] == "ok"


def test_bench_tiny(tmp_path):
    out = _cli("bench", "--latency-n", "5", "--throughput-n", "10", "--naive-n", "1", "--soak", "0",
               "--preload", "", "--json", str(tmp_path / "b.json"))
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "b.json").read_text())
    assert res["latency_ms_median"] > 0 and res["output"]["100KB"]["status"] == "ok"


def test_config_file_overrides_and_flags(tmp_path):
    cfg = tmp_path / "sandbox.yaml"
    cfg.write_text("memory_mb: 300\npreload: []\n")
    out = _cli("check", str(cfg), "max_concurrency=1", "--timeout", "3", "--json")
    assert out.returncode in (0, 1), out.stdout + out.stderr
    assert json.loads(out.stdout)["probe"]["status"] == "ok"
    bad = _cli("check", str(cfg), "memroy_mb=1")
    assert bad.returncode == 2 and "unknown key 'memroy_mb'" in bad.stderr and "memory_mb" in bad.stderr


def test_serve_on_a_taken_port_is_one_line_before_anything_starts():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = _cli("serve", "--port", str(port), "--preload", "", timeout=60)
    assert out.returncode == 2 and out.stdout == "", out.stdout + out.stderr  # no "serving on" first
    assert out.stderr == f"tirl sandbox serve: port {port} is in use: choose another with --port\n", out.stderr


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def test_serve_beyond_loopback_needs_a_token():
    import os

    env = {k: v for k, v in os.environ.items() if k != "TIRL_SANDBOX_TOKEN"}
    out = _cli("serve", "--host", "0.0.0.0", "--port", str(_free_port()), "--preload", "", timeout=30, env=env)
    assert out.returncode == 2 and out.stdout == "", out.stdout + out.stderr  # refused before the sandbox starts
    assert out.stderr.count("\n") == 1 and "--host 0.0.0.0" in out.stderr and "TIRL_SANDBOX_TOKEN" in out.stderr


def test_serve_beyond_loopback_with_a_token_gets_past_that_check():
    import os
    import socket

    env = {**os.environ, "TIRL_SANDBOX_TOKEN": "s3cret"}
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        out = _cli("serve", "--host", "0.0.0.0", "--port", str(port), "--preload", "", timeout=30, env=env)
    assert out.returncode == 2 and "is in use" in out.stderr and "token" not in out.stderr, out.stderr
    bad = _cli("serve", "--write-timeout", "0", "--preload", "", timeout=30)
    assert bad.returncode == 2 and bad.stderr == "tirl sandbox serve: write_timeout_s must be above 0, not 0.0\n"


def test_bench_json_writes_an_undefined_figure_as_null(tmp_path, monkeypatch):
    """A figure with nothing to measure (NaN) must not make the file invalid JSON (`NaN` is not JSON)."""
    import argparse

    from tirl.sandbox import bench, cli

    monkeypatch.setattr(bench, "run_bench", lambda cfg, **kw: {"latency_ms_median": float("nan"), "cores": 2})
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "b.json"
    assert cli.run(parser.parse_args(["bench", "--json", str(out)])) == 0
    text = out.read_text()
    assert "NaN" not in text and json.loads(text) == {"latency_ms_median": None, "cores": 2}
