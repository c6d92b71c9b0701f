"""Typed configs: a dataclass schema, a YAML file, then dotted command-line overrides.

    cfg = load_config(RLConfig, "configs/smoke_grpo.yaml", ["trainer.optim.lr=1e-5", "rollout.n=8"])

OmegaConf structured configs do the merging and type checks; this module only turns their errors
into messages that name the source (file and line, or the override), the key, and the allowed keys
or expected type. Configs are plain dataclasses living next to the code that uses them.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.nodes import StringNode
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

T = TypeVar("T")


class UserError(ValueError):
    """A mistake the user can fix (a config, a data file, a path); commands show the message alone, on
    one line (`tirl.commands.guarded`)."""


class ConfigError(UserError):
    """A config that cannot be used; the message says where and why."""


def section_type(f: dataclasses.Field) -> type | None:
    """The dataclass a field holds when it is a section (`trainer: TrainerConfig`), else None."""
    t: Any = f.type
    if isinstance(t, str):  # postponed annotations: resolve through the default instance
        t = type(f.default_factory()) if f.default_factory is not dataclasses.MISSING else None
    return t if dataclasses.is_dataclass(t) else None


def _schema_at(schema: type, path: list[str]) -> type | None:
    """The dataclass type found by walking `path` (field names) from `schema`, if any."""
    cur: Any = schema
    for part in path:
        fields = {f.name: f for f in dataclasses.fields(cur)} if dataclasses.is_dataclass(cur) else {}
        if part not in fields:
            return None
        cur = section_type(fields[part])
    return cur


def dotted_keys(schema: type, prefix: str = "") -> list[str]:
    """Every key of `schema` in dotted form, sections and their fields alike."""
    out = []
    for f in dataclasses.fields(schema):
        out.append(prefix + f.name)
        section = section_type(f)
        if section is not None:
            out += dotted_keys(section, f"{prefix}{f.name}.")
    return out


def _did_you_mean(schema: type, key: str, written: Sequence[str] = ()) -> str:
    """`; did you mean X?` for a typo, or tirl's key for another framework's name; "" when nothing is close.

    `written`: the full keys the user wrote under `key` (OmegaConf names only the first unknown part:
    `actor_rollout_ref` of `actor_rollout_ref.rollout.n`). Closeness is the last part's
    (`trainer.lr` -> `trainer.optim.lr`, `trainer.step` -> `trainer.steps` but not `trainer.seed`),
    ties broken by the whole key's; only the best few are named.
    """
    from tirl.foreign_keys import foreign_key

    known = dotted_keys(schema)
    for name in [*written, key]:
        other = foreign_key(name)
        if other is not None and other.key in known:
            note = f" ({other.note})" if other.note else ""
            return f"; {other.framework}'s {other.name} is tirl's {other.key}{note}"
    leaf = key.rsplit(".", 1)[-1]

    def closeness(k: str) -> tuple[float, float]:
        return (difflib.SequenceMatcher(None, leaf, k.rsplit(".", 1)[-1]).ratio(),
                difflib.SequenceMatcher(None, key, k).ratio())

    scored = sorted(((closeness(k), k) for k in known), reverse=True)
    best = scored[0][0][0] if scored else 0.0
    close = [k for (near, _), k in scored if near >= max(0.8, best - 0.1)][:3]
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _allowed_keys(schema: type, full_key: str) -> tuple[str, list[str]]:
    parts = [p for p in full_key.split(".") if p]
    parent = parts[:-1]
    node = _schema_at(schema, parent)
    keys = [f.name for f in dataclasses.fields(node)] if node else []
    return ".".join(parent), keys


def _yaml_line(path: Path, key: str) -> int | None:
    """Best-effort line number of `key`'s last component in a YAML file."""
    leaf = key.split(".")[-1]
    try:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(rf"\s*{re.escape(leaf)}\s*:", line):
                return n
    except OSError:
        pass
    return None


def _explain(err: OmegaConfBaseException, schema: type, source: str, path: Path | None,
             written: Sequence[str] = ()) -> ConfigError:
    """`err` as one line naming where (file:line or the override), the key, and the fix; `written` as in
    `_did_you_mean`."""
    key = getattr(err, "full_key", None) or ""
    where = source
    if path is not None and key:
        line = _yaml_line(path, key)
        if line:
            where = f"{path}:{line}"
    if isinstance(err, ConfigKeyError) or "not in struct" in str(err) or "Key '" in str(err):
        parent, keys = _allowed_keys(schema, key)
        scope = f" under '{parent}'" if parent else ""
        hint = _did_you_mean(schema, key, [k for k in written if k == key or k.startswith(f"{key}.")])
        return ConfigError(f"{where}: unknown key '{key}'{hint}; allowed keys{scope}: "
                           f"{', '.join(keys)}")
    msg = str(err).split("\n")[0]
    return ConfigError(f"{where}: bad value for '{key}': {msg}")


def _yaml_problem(path: Path, err: Exception) -> str:
    """`FILE:LINE: not valid YAML: what` in one line, from PyYAML's marks (0-based line and column);
    its own message spreads over four lines, and only the first reached the user."""
    if not isinstance(err, yaml.MarkedYAMLError) or err.problem_mark is None:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return f"{path}: not valid YAML: {first}"
    mark, what = err.problem_mark, err.problem or err.context or type(err).__name__
    try:
        if path.read_text().splitlines()[mark.line][mark.column:mark.column + 1] == "\t":
            what = "a tab (YAML indents with spaces)"
    except (OSError, IndexError, UnicodeDecodeError):
        pass
    where = f"column {mark.column + 1}"
    if err.context and err.context_mark is not None and err.context_mark.line != mark.line:
        where += f", {err.context} on line {err.context_mark.line + 1}"
    return f"{path}:{mark.line + 1}: not valid YAML: {what} ({where})"


def load_config(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = (),
                base: dict[str, Any] | None = None) -> T:
    """Build a `schema` instance from its defaults, `base` (e.g. settings saved with a model), an
    optional YAML file (or a `schema` instance, every value of it: `tirl.train(RLConfig(...))`) and
    dotted overrides, in that order."""
    merged = OmegaConf.structured(schema)
    if base:
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(base))
        except OmegaConfBaseException as e:
            raise _explain(e, schema, "saved settings (tirl.json)", None) from None
    if dataclasses.is_dataclass(path) and not isinstance(path, type):
        if not isinstance(path, schema):
            raise ConfigError(f"a {type(path).__name__} was given where a {schema.__name__} is expected")
        layer = OmegaConf.structured(path)
        merged = OmegaConf.merge(merged, layer)
        _replace_plain_dicts(merged, layer)
        path = None
    if path is not None and "=" in str(path) and not Path(path).exists():
        # `tirl cmd key=value`: the optional CONFIG positional caught the first override.
        overrides, path = [str(path), *overrides], None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            layer = OmegaConf.load(path)
        except Exception as e:
            raise ConfigError(_yaml_problem(path, e)) from None
        try:
            merged = OmegaConf.merge(merged, layer)
            _replace_plain_dicts(merged, layer)
        except OmegaConfBaseException as e:
            raise _explain(e, schema, str(path), path, list(flatten(OmegaConf.to_container(layer)))) from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. trainer.optim.lr=1e-5)")
        try:
            layer = _override_layer(item, merged)
            merged = OmegaConf.merge(merged, layer)
            key = item.split("=", 1)[0].strip()
            if isinstance(OmegaConf.select(layer, key), DictConfig):  # `data.mix={text: 1}`, not `data.mix.text=1`
                _replace_plain_dicts(merged, layer, only=key)
        except OmegaConfBaseException as e:
            raise _explain(e, schema, f"override '{item}'", None, [item.split("=", 1)[0].strip()]) from None
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise _explain(e, schema, str(path or "config"), None) from None


def _override_layer(item: str, merged: DictConfig) -> DictConfig:
    """One `key=value` as a config layer. The value is read as YAML (numbers, booleans, lists,
    `{text: 1.0}`), except where the key is a string field and YAML would make it something else or
    cannot read it: `prompt.prompt_template={problem}` or a system prompt with backticks and newlines
    is the text as typed."""
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        layer, error = OmegaConf.from_dotlist([item]), None
    except yaml.YAMLError as e:
        layer, error = None, e
    try:
        *parents, leaf = key.split(".")
        node = OmegaConf.select(merged, ".".join(parents)) if parents else merged
        is_text = isinstance(node, DictConfig) and isinstance(node._get_node(leaf), StringNode)
    except OmegaConfBaseException:
        is_text = False
    if is_text and (layer is None or isinstance(OmegaConf.select(layer, key), (DictConfig, ListConfig))):
        nested: Any = raw
        for part in reversed(key.split(".")):
            nested = {part: nested}
        return OmegaConf.create(nested)
    if layer is None:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"override '{item[:80]}': the value is not valid YAML ({first}); quote it")
    return layer


def _replace_plain_dicts(merged: DictConfig, layer: DictConfig, only: str | None = None, prefix: str = "") -> None:
    """A mapping-valued field (`data.mix: {text: 1.0}`) given in a layer is that mapping, not the default's
    keys updated by it: OmegaConf merges dicts key by key, which silently kept `code` and `fix` beside
    `text`. Sections (dataclasses) still merge field by field; `only` limits this to one dotted key."""
    for key in layer:
        path = f"{prefix}{key}"
        value = layer._get_node(key)
        if not isinstance(value, DictConfig) or key not in merged:
            continue
        target = merged._get_node(key)
        if not isinstance(target, DictConfig):
            continue
        if OmegaConf.get_type(target) is dict:
            if only is None or only == path:
                merged[key] = value
        else:
            _replace_plain_dicts(target, value, only, f"{path}.")


@dataclass(frozen=True)
class KeyDoc:
    """One key of a config as `tirl config` shows it."""

    key: str
    """Dotted (`trainer.optim.lr`)."""
    type: str
    """The annotation as written in the source (`int`, `Optional[str]`, `TrainerConfig`)."""
    default: Any
    """The value in a default config (a section's own fields follow it as keys of their own)."""
    doc: str
    """The attribute docstring under the field, on one line; a section without one: its class docstring."""
    section: bool = False


def describe(config: Any, prefix: str = "") -> list[KeyDoc]:
    """Every key of a config instance, in field order, sections before their fields. Defaults come from
    the instance, not the section's class: `RLConfig().rollout.n` is 4 where `RolloutConfig().n` is not."""
    fields, _ = _source_docs(type(config))
    out = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        annotation, doc = fields.get(f.name, (str(f.type), ""))
        if dataclasses.is_dataclass(value):
            out.append(KeyDoc(prefix + f.name, annotation, None, doc or _source_docs(type(value))[1], True))
            out += describe(value, f"{prefix}{f.name}.")
        else:
            out.append(KeyDoc(prefix + f.name, annotation, value, doc))
    return out


@functools.lru_cache(maxsize=None)
def _source_docs(cls: type) -> tuple[dict[str, tuple[str, str]], str]:
    """({field: (annotation, attribute docstring)}, the class docstring's first paragraph) of a dataclass,
    read with `ast` from its source (and its dataclass bases'): the docstring under a field is where the
    project documents it, once, so the reference is never a second copy to keep in step."""
    fields: dict[str, tuple[str, str]] = {}
    summary = ""
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        node = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0]
        assert isinstance(node, ast.ClassDef)
        summary = " ".join((ast.get_docstring(node) or "").split("\n\n")[0].split())
        for stmt, after in zip(node.body, [*node.body[1:], None]):
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                doc = after.value.value if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                                            and isinstance(after.value.value, str)) else ""
                fields[stmt.target.id] = (ast.unparse(stmt.annotation), " ".join(doc.split()))
    return fields, summary


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML, for the run directory (what ran is what is recorded)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(to_yaml(cfg))


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as {dotted.key: leaf}."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}"))
    return out


def check_resume(run_dir: str | Path, cfg: Any, force: bool = False,
                 may_change: Sequence[str] = ("trainer.steps",)) -> None:
    """Refuse to resume `run_dir` with settings other than its `config.yaml` (unless `force`).

    `may_change` lists keys a resume is for (more steps). The message names every changed key.
    """
    path = Path(run_dir) / "config.yaml"
    if force or not path.is_file():
        return
    old = flatten(OmegaConf.to_container(OmegaConf.load(path)))
    new = flatten(OmegaConf.to_container(OmegaConf.structured(cfg)))
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and k not in may_change]
    if changed:
        raise ConfigError(f"--resume with changed settings ({'; '.join(changed)}); resume with the settings of "
                          f"{path}, or pass --force to resume anyway")


def add_model_arguments(parser: Any, model: str = "--model") -> None:
    """`--gguf-file`, `--dtype` and the device flags of every command that loads a model named by `model`."""
    parser.add_argument("--gguf-file", default=None, help=f"GGUF file name inside {model} (a directory)")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (default: float32)")
    add_device_arguments(parser)


def add_device_arguments(parser: Any, precision: bool = True) -> None:
    """`--device auto|cpu|cuda|cuda:N` (and `--precision fp32|bf16|fp16`) of every command that runs a model."""
    parser.add_argument("--device", default=None,
                        help="auto | cpu | cuda | cuda:N (default: auto = the first GPU when there is one)")
    if precision:
        parser.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"],
                            help="autocast precision of the forwards; weights stay as loaded (default: fp32)")


def device_overrides(args: Any, section: str = "trainer") -> list[str]:
    """`--device` / `--precision` as dotted overrides (appended last: flags win over the config)."""
    out = []
    for key in ("device", "precision"):
        value = getattr(args, key, None)
        if value is not None:
            out.append(f"{section}.{key}={value}")
    return out


def add_config_arguments(parser: Any, default: str | None = None,
                         example: str = "trainer.optim.lr=1e-5 rollout.n=8") -> None:
    """The shared `CONFIG [key=value ...]` arguments of every configurable command."""
    parser.add_argument(
        "config", nargs="?", default=default,
        help="YAML config file" + (f" (default: {default})" if default else " (default: built-in defaults)"),
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help=f"dotted overrides applied after the file, e.g. {example}",
    )
