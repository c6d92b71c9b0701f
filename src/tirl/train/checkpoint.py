"""Atomic, resumable checkpoints shared by the SFT and RL trainers.

A checkpoint is a directory ``checkpoints/step-000042/`` holding the model (and tokenizer) as a
normal ``save_pretrained`` directory, plus ``state.pt`` with optimizer, scheduler, RNG states, the
step, the data position and anything else the trainer needs to continue exactly.

Atomicity: everything is written into a hidden temporary directory, flushed, and only then renamed
into place (a rename within one filesystem is atomic), and ``COMPLETE`` is written last inside it.
`latest_checkpoint` only ever returns directories that have it, so a kill at any moment loses at most
the steps since the last checkpoint and never yields a half-written one.

Not covered: sharded (FSDP/DeepSpeed) state; one process saves everything.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STEP_DIR = re.compile(r"^step-(\d{6,})$")
MARKER = "COMPLETE"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    models: dict[str, Any],
    state: dict[str, Any],
    tokenizer: Any = None,
    keep: int = 2,
    settings: dict[str, Any] | None = None,
) -> Path:
    """Save `models` (name -> model with save_pretrained) and `state` atomically; keep the last `keep`.

    `state` holds picklable trainer state (optimizer/scheduler state dicts, data position...);
    RNG states are added here. `settings` (`tirl.trained_settings`) go next to each model's weights.
    """
    from tirl.trained_settings import write_settings

    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name, model in models.items():
        model.save_pretrained(tmp / name)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / name)
        if settings is not None:
            write_settings(tmp / name, settings)
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / "state.pt")
    _fsync_tree(tmp)
    (tmp / MARKER).write_text(str(step))
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
        shutil.rmtree(final)
    os.rename(tmp, final)
    _prune(root, keep)
    return final


def _complete_steps(root: Path) -> list[tuple[int, Path]]:
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and (p / MARKER).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def _prune(root: Path, keep: int) -> None:
    for _, path in _complete_steps(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    for p in root.glob(".tmp-step-*"):  # leftovers of a killed save
        if not p.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    steps = _complete_steps(Path(run_dir) / "checkpoints")
    return steps[-1][1] if steps else None


def resume_point(run_dir: str | Path, resume: bool) -> Path | None:
    """The checkpoint to continue from (None for a fresh run); refuses a mismatch either way."""
    ckpt = latest_checkpoint(run_dir)
    if resume and ckpt is None:
        raise FileNotFoundError(f"--resume: no complete checkpoint under {Path(run_dir) / 'checkpoints'}")
    if not resume and ckpt is not None:
        raise FileExistsError(f"{run_dir} already has checkpoints: pass --resume, or choose another --run-dir")
    return ckpt


def load_state(checkpoint: str | Path, restore_rng: bool = True) -> dict[str, Any]:
    """The trainer state saved with a checkpoint; restores the RNG states unless asked not to."""
    state = torch.load(Path(checkpoint) / "state.pt", map_location="cpu", weights_only=False)
    if restore_rng:
        set_rng_state(state["rng"])
    return state
