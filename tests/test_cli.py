"""The `tirl` command, through a subprocess as a user runs it."""

import os
import subprocess
import sys

COMMANDS = ["demo", "recipe", "sft", "train", "eval", "sandbox", "report", "convert", "select", "serve", "config"]


def tirl(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "tirl.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=os.environ.copy())


def test_help_lists_every_command():
    r = tirl("--help")
    assert r.returncode == 0
    for name in COMMANDS:
        assert name in r.stdout


def test_no_command_prints_help_and_fails():
    r = tirl()
    assert r.returncode != 0 and "COMMAND" in r.stdout


def test_every_built_command_has_help():
    from tirl.cli import COMMANDS as table

    for name in table:
        r = tirl(name, "--help")
        assert r.returncode == 0, r.stderr
        assert "usage: tirl " + name in r.stdout


def test_a_malformed_config_file_is_one_line_with_its_line_number(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  steps: 5\n   lr: 3\n")
    r = tirl("train", str(bad), "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and r.stderr.startswith(f"tirl train: {bad}:3: not valid YAML: "), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
