"""Per-step metrics: always a JSONL file in the run directory, TensorBoard / W&B when asked.

One JSON object per line: ``{"step": 3, "reward/mean": 0.2, ...}``; an undefined figure (NaN) is
null (`tirl.jsonl`'s rule). On resume the file is cut back to the checkpoint's step first, so a
resumed run's file has each step exactly once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tirl.jsonl import append_rows, read_rows, truncate_after_step


class MetricsLogger:
    def __init__(self, run_dir: str | Path, *, tensorboard: bool = False, wandb: bool = False,
                 wandb_project: str = "tirl", config: dict[str, Any] | None = None) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError("tensorboard logging needs `pip install tirl[tensorboard]`") from e
            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if wandb:
            try:
                import wandb as wb
            except ImportError as e:
                raise RuntimeError("W&B logging needs `pip install tirl[wandb]`") from e
            self._wandb = wb.init(project=wandb_project, dir=str(run_dir), config=config or {})

    def truncate_after(self, step: int) -> None:
        """Drop lines with a step beyond `step` (they were logged after the checkpoint we resume)."""
        truncate_after_step(self.path, step)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        append_rows(self.path, [{"step": step, **metrics}])
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return read_rows(path)
