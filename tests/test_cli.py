"""The `tirl` command, through a subprocess as a user runs it."""

import os
import subprocess
import sys

COMMANDS = ["demo", "recipe", "sft", "train", "eval", "sandbox", "report", "convert", "select", "serve"]


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
