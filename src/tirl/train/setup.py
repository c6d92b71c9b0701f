"""What a run starts from: its problems, its prompt format and its model.

`data.train: builtin` draws problems from `tirl.tasks` (seeded, disjoint splits); anything else is
a file or dataset name for `tirl.data.load_problems`. `model.path: builtin:tiny` builds a random
tiny Qwen2 model whose tokenizer is trained on the task's text, saves it under the run directory and
loads it back through `from_pretrained`, the path a real model takes; it is for smoke runs (it knows
nothing until trained).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tirl.formats import PromptConfig, TagStyle, make_style  # noqa: F401 (re-exported: configs import them here)
from tirl.train.lora import LoraConfig

log = logging.getLogger("tirl.train")

BUILTIN = "builtin"
TINY = "builtin:tiny"


@dataclass
class DataConfig:
    train: str = BUILTIN
    """`builtin` (the arithmetic task) or a JSONL / JSON / Parquet file or a dataset name."""
    test: Optional[str] = None
    """Held-out problems, same forms; "" = no held-out evaluation; None (unset) = the built-in task's
    held-out split when `train` is builtin, else none (never the toy task for a user's data)."""
    skip_invalid: bool = False
    """Skip malformed rows of data files (counted and logged) instead of refusing the file."""
    problem_field: str = "problem"
    """Column holding the question (a string, or a chat message list: its last user message is read)."""
    answer_field: str = "answer"
    """Column holding the reference answer; when it is absent, `solution`, `ground_truth` and verl's
    `reward_model.ground_truth` are tried in that order."""
    id_field: str = "id"
    """Column holding the problem id; when absent, `unique_id`, then `{file stem}-{row index}`."""
    task: str = "arithmetic"
    """Built-in task when train/test is `builtin`: arithmetic (bare sums and products, for tiny models) or
    words (multi-step word problems in real language, for small pretrained models)."""
    task_level: int = 1
    """Built-in task difficulty. arithmetic: operand digits 2 / 3 / 4 for levels 1 / 2 / 3; words: 1 small
    numbers, 3 large, 2 a mix (30% small)."""
    task_kinds: list[str] = field(default_factory=list)
    """Built-in task kinds; empty = the task's default (arithmetic: mul; words: all). arithmetic: mul,
    add_mul, modpow, digit_sum; words: bulk_cost, distance, duration, discount, leftover, days_between,
    range_sum, savings."""
    answer_digits: int = 0
    """Built-in arithmetic task: only problems whose answer has this many digits (0 = any). One length
    puts the interpreter's output at one fixed distance from the answer that copies it."""
    train_size: int = 2000
    """Built-in task: problems generated for training."""
    test_size: int = 50
    """Built-in task: held-out problems generated (disjoint from the training ones)."""
    seed: int = 0
    """Seed of the built-in task's generator (and of builtin:tiny's fresh weights)."""


@dataclass
class ModelConfig:
    path: str = TINY
    """A Hugging Face name, a local directory (e.g. an SFT run's `model/`), or builtin:tiny."""
    gguf_file: Optional[str] = None
    """A .gguf file inside `path` (or an absolute path to one); transformers de-quantises it."""
    dtype: str = "float32"
    """Weight dtype the model is loaded in: float32 (the default master weights), bfloat16, float16 or auto."""
    attn_implementation: Optional[str] = None
    """Attention kernel: None = transformers' default (sdpa), or eager, sdpa, flash_attention_2. On a CPU,
    eager is the faster one for short sequences and small heads under bf16 (the demo: 1.5x per SFT step)."""
    critic_path: Optional[str] = None
    """PPO critic initialisation; None = a copy of the policy with a fresh value head."""
    hidden_size: int = 64
    """Width of builtin:tiny."""
    layers: int = 2
    """Size of builtin:tiny (ignored for real models)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters (needs `tirl[peft]`); `lora.r: 0` (the default) trains every weight."""


ATTENTION_KERNELS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def check_attention(name: Optional[str]) -> None:
    """Refuse an unknown `model.attn_implementation` before anything is written (a Hub kernel, `org/repo`,
    is passed on to transformers as it is)."""
    if name is None or name in ATTENTION_KERNELS or "/" in name:
        return
    raise ValueError(f"model.attn_implementation must be one of {', '.join(ATTENTION_KERNELS)} "
                     f"(or a Hub kernel org/repo), got {name!r}")


def load_split(cfg: DataConfig, split: str) -> list[Any]:
    """Problems (objects with .id, .problem, .answer) of `split` ('train' or 'test')."""
    source = cfg.train if split == "train" else cfg.test
    if source is None:
        if cfg.train != BUILTIN:
            log.warning("data.test is not set: no held-out evaluation (set data.test=FILE to have one)")
            return []
        source = BUILTIN
    if not source:
        return []
    if source == BUILTIN:
        from tirl.tasks import generate_task

        size = cfg.train_size if split == "train" else cfg.test_size
        return generate_task(cfg.task, size, split=split, seed=cfg.seed, level=cfg.task_level, kinds=cfg.task_kinds,
                             answer_digits=cfg.answer_digits)
    from tirl.data import load_problems

    return load_problems(source, problem_field=cfg.problem_field, answer_field=cfg.answer_field,
                         id_field=cfg.id_field, skip_invalid=cfg.skip_invalid)


def tokenizer_corpus(style: TagStyle, data: DataConfig) -> list[str]:
    """Text a tiny tokenizer is trained on: the task's problems and traces in this style."""
    from tirl.tasks import generate, make_traces

    items = generate(500, seed=data.seed, level=data.task_level, kinds=("mul", "add_mul", "modpow", "digit_sum"))
    traces = make_traces(items, style=style, mix={"code": 1, "text": 1, "fix": 1})
    texts = [style.render_prompt(i.problem) for i in items]
    texts += [m["content"] for t in traces for m in t["messages"]]
    texts.append(style.system_prompt)
    return texts


def resolve_model(cfg: ModelConfig, style: TagStyle, data: DataConfig, run_dir: Path) -> str:
    """A path `from_pretrained` can load; builds builtin:tiny under the run directory once."""
    if cfg.path != TINY:
        return cfg.path
    out = run_dir / "base_model"
    if not (out / "config.json").is_file():
        from tirl.models import build_tiny_model

        build_tiny_model(out, tokenizer_corpus(style, data), hidden_size=cfg.hidden_size, layers=cfg.layers,
                         intermediate_size=2 * cfg.hidden_size, seed=data.seed)
    return str(out)
