"""`tirl config`: every key of a command's config with its type, default and the docstring under the field;
`docs/config.md` is its output and may not drift from the code."""

import os
import subprocess
import sys
from pathlib import Path

from tirl.config_command import SCHEMAS, command_reference, document

ROOT = Path(__file__).resolve().parents[1]


def test_docs_config_md_is_what_tirl_config_prints():
    doc = (ROOT / "docs" / "config.md").read_text()
    assert doc == document(), "docs/config.md is stale: run `tirl config > docs/config.md`"


def test_a_command_lists_its_keys_with_type_default_and_the_fields_docstring():
    text = command_reference("train")
    # a section's own defaults, not its class's: RLConfig builds RolloutConfig(n=4, ...)
    assert "- `rollout.n` (int, default `4`)" in text
    assert "- `trainer.optim` (OptimConfig, section)" in text
    assert "- `trainer.prompts_per_step` (int, default `4`): Prompts per step; the batch is prompts_per_step x" in text
    assert "### algorithm" in text and "`algorithm.kl_coef`" in text


def test_every_command_with_a_config_is_covered_and_every_key_appears():
    import importlib

    from tirl.config import dotted_keys

    for name, where in SCHEMAS.items():
        module, _, cls = where.partition(":")
        text = command_reference(name)
        keys = dotted_keys(getattr(importlib.import_module(module), cls))
        missing = [k for k in keys if f"`{k}`" not in text and f"### {k}\n" not in text]
        assert not missing, (name, missing)


def test_tirl_config_prints_one_command_and_has_help():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "tirl.cli", "config", "sandbox"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0 and r.stdout == command_reference("sandbox"), r.stderr
    r = subprocess.run([sys.executable, "-m", "tirl.cli", "config", "--help"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0 and "docs/config.md" in r.stdout
