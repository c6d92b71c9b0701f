"""The progress bar every long command shows (rich), hidden when output is not a terminal.

Set TIRL_PROGRESS=1 to show it anyway (e.g. under `tee`).
"""

from __future__ import annotations

import os
from typing import Any


def progress(description: str, total: int, disable: bool | None = None) -> Any:
    """A rich Progress with one task (`bar.task_ids[0]`) and an `info` field for running figures."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if disable is None:
        disable = not (os.isatty(1) or os.environ.get("TIRL_PROGRESS") == "1")
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("{task.fields[info]}"), disable=disable)
    bar.add_task(description, total=total, info="")
    return bar
