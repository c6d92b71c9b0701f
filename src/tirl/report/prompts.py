"""The prompt a sample was generated from, as text, for the report's samples.

`samples.jsonl` keeps a trajectory's `prompt_ids`, not its text; the run directory keeps the tokenizer
(`base_model/`, `model/`, `merged/` or a checkpoint's `policy/`), so the ids are decoded with it
(`tokenizers`, no transformers import). A sample that carries a `prompt` string is shown as is.

Not covered: runs whose tokenizer is not in the run directory (a hub model trained without saving one,
a GGUF file): their samples say the prompt's length in tokens instead.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

TOKENIZER_DIRS = ("base_model", "model", "merged")


def _tokenizer_file(run_dir: Path) -> Path | None:
    candidates = [run_dir / d for d in TOKENIZER_DIRS]
    candidates += sorted((run_dir / "checkpoints").glob("*/policy"), reverse=True)  # the latest first
    return next((d / "tokenizer.json" for d in candidates if (d / "tokenizer.json").is_file()), None)


@lru_cache(maxsize=8)
def _tokenizer(run_dir: Path) -> Any:
    from tokenizers import Tokenizer

    path = _tokenizer_file(run_dir)
    return Tokenizer.from_file(str(path)) if path is not None else None


def prompt_text(run_dir: Path, sample: dict[str, Any]) -> str | None:
    """The sample's prompt as the model saw it (special tokens kept), or None when it cannot be told."""
    if isinstance(sample.get("prompt"), str):
        return sample["prompt"]
    ids = sample.get("prompt_ids")
    if not isinstance(ids, list) or not ids:
        return None
    tok = _tokenizer(Path(run_dir))
    return tok.decode(ids, skip_special_tokens=False) if tok is not None else None
