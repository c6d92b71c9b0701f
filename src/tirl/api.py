"""tirl from Python: `sft`, `train` and `evaluate`, one to one with `tirl sft`, `tirl train` and `tirl eval`.

    import tirl
    summary = tirl.train("configs/smoke_grpo.yaml", run_dir="runs/py", trainer={"steps": 2},
                         train_dataset=[{"problem": "What is 12 * 34?", "answer": "408"}, ...],
                         reward_funcs=["correct", short], reward_weights=[1.0, 0.1])

Each builds its config as its command does (defaults < the settings saved with `model.path` < the YAML
file < overrides), refuses a bad one before anything loads, runs the command's own code and writes the
same run directory; it returns the summary the command prints. `config` is None, a YAML path or a config
object (`RLConfig`, `SFTConfig`, `EvalConfig`: all of its values). Overrides are keywords: a section as a
dict (`rollout={"n": 8}`) or a dotted key (`**{"rollout.n": 8}`); a command's flags are keywords too
(`device="cpu"`, and for `evaluate` every `tirl eval` flag: `n=4`, `tool="both"`, `max_tokens=512`).

Data (`train_dataset`, `eval_dataset`): a file path or dataset name as the config takes it, or rows (a list
of dicts, a `datasets.Dataset`), written to RUN_DIR/data/NAME.jsonl and named by the config, so the run
directory holds what it was trained on and `tirl train RUN_DIR/config.yaml` runs it again. Reward
functions (`reward_funcs`, `train` only) are the whole reward, as in TRL: `"correct"` (the +1/-1 grade),
"module:callable" / "file.py:callable", or callables; an importable callable is saved by its module path,
any other (a lambda, a function of the running script) as `python:NAME` (its name and weight recorded;
hand it over again to resume). Errors are `tirl.config.UserError`s with the message the command prints;
a run directory that a failed start created is removed again, as the commands do.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from tirl.config import UserError, section_type

Data = Any
"""A file path or dataset name, a list of dicts, or a `datasets.Dataset`."""


def sft(config: Any = None, *, run_dir: str | os.PathLike = "runs/sft", train_dataset: Data = None,
        eval_dataset: Data = None, resume: bool = False, force: bool = False, **overrides: Any) -> dict[str, Any]:
    """`tirl sft`: cold-start SFT on traces (`train_dataset`: trace rows or a file); the run's summary,
    with `model/` under `run_dir` for `train(model={"path": ...})`."""
    from tirl.train.commands import sft as command
    from tirl.train.sft import SFTConfig

    data = {"data.train": train_dataset, "data.eval": eval_dataset}
    return _train(command, SFTConfig, config, run_dir, data, resume, force, overrides)


def train(config: Any = None, *, run_dir: str | os.PathLike = "runs/train", train_dataset: Data = None,
          eval_dataset: Data = None, reward_funcs: Sequence[str | Callable[..., Any]] | None = None,
          reward_weights: Sequence[float] | None = None, resume: bool = False, force: bool = False,
          **overrides: Any) -> dict[str, Any]:
    """`tirl train`: RL with the sandbox; `eval_dataset` is the held-out set (`data.test`), `reward_funcs`
    and `reward_weights` the whole reward (`reward.functions`). The run's summary."""
    from tirl.train.commands import train as command
    from tirl.train.rl import RLConfig

    data = {"data.train": train_dataset, "data.test": eval_dataset}
    entries, callables = reward_entries(reward_funcs, reward_weights)
    if entries is not None:
        overrides = {**overrides, "reward.function": None, "reward.functions": entries}
    return _train(command, RLConfig, config, run_dir, data, resume, force, overrides,
                  reward_callables=callables)


def evaluate(config: Any = None, *, model: str | None = None, server: str | None = None, benchmark: str = "",
             eval_dataset: Data = None, run_dir: str | os.PathLike = "runs/eval", **options: Any) -> dict[str, Any]:
    """`tirl eval`: a model (`model`) or server (`server`) on `benchmark` names and/or `eval_dataset`
    (named `eval`); `options`: `tirl eval`'s flags by name, or config overrides. The summary (`--tool both`:
    {"on", "off", "comparison"})."""
    from tirl.eval import EvalConfig
    from tirl.eval import command

    parser = argparse.ArgumentParser(prog="tirl eval")
    command.add_arguments(parser)
    args = parser.parse_args([])
    args.config, args.model, args.server, args.benchmark, args.run_dir = config, model, server, benchmark, str(run_dir)
    flags = {a.dest: a for a in parser._actions if a.dest not in ("help", "config", "overrides")}
    for key, value in list(options.items()):
        if key in flags:
            choices = flags[key].choices
            if choices is not None and value not in choices:
                raise UserError(f"{key} must be one of {', '.join(map(str, choices))}, not {value!r}")
            setattr(args, key, [value] if key == "data" and isinstance(value, (str, os.PathLike)) else value)
            del options[key]
    args.overrides = dotted_overrides(EvalConfig, options)
    from tirl.commands import removed_if_failed

    with removed_if_failed(run_dir):
        if eval_dataset is not None:
            args.data = [*args.data, data_source(eval_dataset, Path(run_dir), "eval")]
        summaries = command.run_evaluation(args)
    return summaries if len(summaries) > 1 else next(iter(summaries.values()))


def _train(command: Any, schema: type, config: Any, run_dir: str | os.PathLike, data: dict[str, Data],
           resume: bool, force: bool, overrides: dict[str, Any], **train_kwargs: Any) -> dict[str, Any]:
    from tirl.commands import removed_if_failed
    from tirl.train.commands import FLAG_KEYS

    flags = {FLAG_KEYS[k]: overrides.pop(k) for k in list(overrides) if k in FLAG_KEYS}  # device="cpu"
    with removed_if_failed(run_dir):
        files = {key: data_source(value, Path(run_dir), key.rsplit(".", 1)[1])
                 for key, value in data.items() if value is not None}
        args = argparse.Namespace(config=config, overrides=dotted_overrides(schema, {**overrides, **files, **flags}),
                                  run_dir=str(run_dir), resume=resume, force=force)
        return command.execute(args, **{k: v for k, v in train_kwargs.items() if v})


def dotted_overrides(schema: Any, overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """Keyword overrides as the command line's `key=value` words: a dict given for a section is its
    fields (`trainer={"steps": 2}` -> `trainer.steps=2`); any other value is one key, written as JSON
    (which YAML reads back as the same value)."""
    out = []
    for key, value in overrides.items():
        section = _section(schema, key) if schema is not None else None
        if isinstance(value, dict) and section is not None:
            out += dotted_overrides(section, value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value, default=str)}")
    return out


def _section(schema: Any, key: str) -> Any:
    """The dataclass the dotted `key` names in `schema`, or None (a field, or no such key)."""
    for part in key.split("."):
        fields = {f.name: f for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}
        if part not in fields:
            return None
        schema = section_type(fields[part])
    return schema


def data_source(data: Data, run_dir: Path, name: str) -> str:
    """`data` as the config's data keys take it: a path or dataset name as it is, rows written to
    RUN_DIR/data/NAME.jsonl."""
    if isinstance(data, (str, os.PathLike)):
        return str(data)
    if hasattr(data, "to_list") and hasattr(data, "column_names"):  # a datasets.Dataset, without importing it
        rows = data.to_list()
    elif isinstance(data, (list, tuple)) and all(isinstance(r, dict) for r in data):
        rows = list(data)
    else:
        raise UserError(f"the {name} data must be a file path, a list of dicts or a datasets.Dataset, "
                        f"not {type(data).__name__}")
    from tirl.jsonl import atomic_write, dumps

    lines = []
    for i, row in enumerate(rows):
        try:
            lines.append(dumps(row))
        except (TypeError, ValueError) as e:
            raise UserError(f"the {name} data's row {i} cannot be written as JSON: {e}") from None
    path = run_dir / "data" / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "".join(line + "\n" for line in lines))
    return str(path)


_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def reward_entries(funcs: Sequence[Any] | None, weights: Sequence[float] | None
                   ) -> tuple[list[dict[str, Any]] | None, dict[str, Callable[..., Any]]]:
    """(`reward.functions` entries, {NAME: callable} of those saved as `python:NAME`) for
    `reward_funcs` / `reward_weights`; (None, {}) when no functions are given."""
    if funcs is None:
        if weights is not None:
            raise UserError("reward_weights given without reward_funcs")
        return None, {}
    funcs = list(funcs)
    weights = [1.0] * len(funcs) if weights is None else list(weights)
    if len(weights) != len(funcs):
        raise UserError(f"{len(weights)} reward_weights for {len(funcs)} reward_funcs")
    entries, callables = [], {}
    for i, (fn, weight) in enumerate(zip(funcs, weights)):
        if isinstance(fn, str):
            entries.append({"function": fn, "weight": weight})
        elif callable(fn):
            spec = importable(fn)
            if spec is None:
                name = fn.__name__ if _NAME.fullmatch(getattr(fn, "__name__", "")) else f"reward_{i}"
                callables[name], spec = fn, f"python:{name}"
            entries.append({"function": spec, "weight": weight})
        else:
            raise UserError(f"reward_funcs[{i}] must be a callable or a 'module:callable' string, not "
                            f"{type(fn).__name__}")
    return entries, callables


def importable(fn: Callable[..., Any]) -> str | None:
    """"module:name" when importing it gives `fn` back (a config can then name it), else None."""
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or not name.isidentifier():
        return None
    try:
        found = getattr(importlib.import_module(module), name, None)
    except Exception:  # a module that cannot be imported again: hand the callable over instead
        return None
    return f"{module}:{name}" if found is fn else None
