"""`tirl.json`: how a model was prompted and how its tool loop ran, saved next to its weights.

Every checkpoint model directory (`checkpoints/step-N/policy/`) and every SFT model (`model/`) gets
one, so `tirl eval --model DIR` and `tirl serve DIR` prompt the model exactly as it was trained: a
model trained without a system prompt and evaluated with one answers something else (issue 11: 0%
instead of 96.5%). Explicit settings (a config file, `key=value` overrides, flags) still win.

    {"prompt": {"style": ..., "system_prompt": ..., "prompt_template": ..., "chat": ...},
     "rollout": {"max_tool_calls": ..., "max_output_chars": ..., "max_output_tokens": ...,
                 "error_lines": ..., "on_tool_cap": ...}}

Only settings that shape what the model sees are saved; sampling (n, temperature, budget) is the
evaluator's choice. No torch here: the files are plain JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

FILE = "tirl.json"
ROLLOUT_KEYS = ("max_tool_calls", "max_output_chars", "max_output_tokens", "error_lines", "on_tool_cap")


def settings_of(prompt: Any, rollout: Any = None) -> dict[str, Any]:
    """The `tirl.json` content for a `PromptConfig` and (RL only) a `RolloutConfig`."""
    out: dict[str, Any] = {"prompt": dataclasses.asdict(prompt)}
    if rollout is not None:
        out["rollout"] = {k: getattr(rollout, k) for k in ROLLOUT_KEYS}
    return out


def write_settings(model_dir: str | os.PathLike, settings: dict[str, Any]) -> None:
    path = Path(model_dir) / FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(settings, indent=2) + "\n")
    os.replace(tmp, path)


def model_dir(path: str | os.PathLike) -> str:
    """`path`, or its `policy/` when `path` is a training checkpoint (`RUN/checkpoints/step-N`, which
    holds the model there beside the optimizer state): `tirl eval --model` accepts either."""
    p = str(path)
    if not os.path.isfile(os.path.join(p, "config.json")) and os.path.isfile(os.path.join(p, "policy", "config.json")):
        return os.path.join(p, "policy")
    return p


def read_settings(model: str | os.PathLike | None) -> dict[str, Any]:
    """The saved settings of a model directory; {} for a hub name, a file, or a model without any."""
    if not model:
        return {}
    path = Path(model_dir(model)) / FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); fix or delete it") from None
    return {k: v for k, v in data.items() if k in ("prompt", "rollout") and isinstance(v, dict)}
