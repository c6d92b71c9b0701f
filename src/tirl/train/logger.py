"""Per-step metrics: always a JSONL file in the run directory; TensorBoard, W&B, trackio when asked.

One JSON object per line: ``{"step": 3, "reward/mean": 0.2, ...}``; an undefined figure (NaN) is
null (`tirl.jsonl`'s rule). On resume the file is cut back to the checkpoint's step first, so a
resumed run's file has each step exactly once. Every backend gets the same names and the same step
numbers as the file (only the numeric figures: dashboards plot numbers).

The optional backends are extras (`pip install tirl[tensorboard]`, `tirl[wandb]`, `tirl[trackio]`).
W&B honours its own environment (`WANDB_MODE=offline` writes to the run directory with no network);
trackio is local-first (a SQLite store under `TRACKIO_DIR`, by default `~/.cache/huggingface/trackio`).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tirl.jsonl import append_rows, read_rows, truncate_after_step


@dataclass
class LogConfig:
    """`trainer.log` in both `tirl sft` and `tirl train`."""
    project: str = "tirl"
    """W&B / trackio project."""
    run_name: str = ""
    """W&B / trackio run name; empty = the run directory's name."""
    tensorboard: bool = False
    """Event files in RUN_DIR/tensorboard (`tensorboard --logdir RUN_DIR`)."""
    wandb: bool = False
    """Set WANDB_MODE=offline to log with no network (`wandb sync` later)."""
    trackio: bool = False
    """Local dashboard: `trackio show --project PROJECT`."""
    progress_every: int = 10
    """When stdout is not a terminal (CI, nohup): one plain line every N steps; 0 = none."""


# Figures worth a glance in a progress line, in this order, when the step has them.
_HEADLINE = ("loss/sft", "eval/loss", "reward/mean", "eval/accuracy", "loss/policy", "kl/mean", "train/grad_norm")


def _missing(extra: str, package: str) -> RuntimeError:
    return RuntimeError(f"trainer.log.{extra}=true needs the {package} package: pip install 'tirl[{extra}]'")


class MetricsLogger:
    def __init__(self, run_dir: str | Path, log: LogConfig | None = None, *, config: dict[str, Any] | None = None,
                 label: str = "train", total_steps: int = 0, interactive: bool | None = None) -> None:
        self.cfg = log or LogConfig()
        run_dir = Path(run_dir)
        self.path = run_dir / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.label, self.total = label, total_steps
        self._plain = not (sys.stdout.isatty() if interactive is None else interactive)
        self._t0 = time.perf_counter()
        name = self.cfg.run_name or run_dir.resolve().name
        self._tb = self._wandb = self._trackio = None
        if self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise _missing("tensorboard", "tensorboard") from e
            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        if self.cfg.wandb:
            try:
                import wandb
            except ImportError as e:
                raise _missing("wandb", "wandb") from e
            self._wandb = wandb.init(project=self.cfg.project, name=name, dir=str(run_dir), config=config or {})
        if self.cfg.trackio:
            try:
                import trackio
            except ImportError as e:
                raise _missing("trackio", "trackio") from e
            # embed=False: no notebook widget; trackio writes to its local store and never needs a server.
            self._trackio = trackio.init(project=self.cfg.project, name=name, config=config or {}, embed=False)

    def truncate_after(self, step: int) -> None:
        """Drop lines with a step beyond `step` (they were logged after the checkpoint we resume)."""
        truncate_after_step(self.path, step)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        append_rows(self.path, [{"step": step, **metrics}])
        numeric = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)
        if self._trackio is not None:
            self._trackio.log(numeric, step=step)
        every = self.cfg.progress_every
        if self._plain and every and (step % every == 0 or step == self.total):
            print(self.progress_line(step, numeric), flush=True)

    def progress_line(self, step: int, numeric: dict[str, float]) -> str:
        of = f"/{self.total}" if self.total else ""
        figures = "  ".join(f"{k} {numeric[k]:.4g}" for k in _HEADLINE if k in numeric)
        return f"{self.label} step {step}{of}  {figures}  ({time.perf_counter() - self._t0:.0f}s)".rstrip()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._trackio is not None:
            self._trackio.finish()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return read_rows(path)
