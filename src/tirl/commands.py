"""What every `tirl` command shares: building its config, the one-line error rule, threads, quiet logs.

    cfg = command_config(EvalConfig, args, flags={"n": "rollout.n"}, base=saved_settings)

A config is built in one order for every command: the dataclass defaults, then `base` (settings
saved with a model, `tirl.trained_settings`), then the YAML file, then `key=value` overrides, then
the flags the user gave (each flag is just another dotted override, so a flag and its key can never
disagree). Overrides may come before or after flags (`tirl sft CFG --run-dir D trainer.steps=10`):
`tirl.cli` hands leftover `key=value` words to `args.overrides`.

Errors a user can act on (`UserError`, `ConfigError`, `DataError`, missing files, a taken port) end
the command with exit code 2 and ONE line on stderr naming the file / line / key at fault; a run
directory the command created is removed again when it holds no checkpoint yet, so a failed start
leaves nothing half-written. `TIRL_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

from tirl.config import UserError

T = TypeVar("T")
__all__ = ["UserError", "check_model_source", "check_port_free", "command_config", "fail", "guarded", "loading",
           "quiet_transformers", "removed_if_failed", "set_threads"]


def command_config(schema: type[T], args: argparse.Namespace, flags: Mapping[str, str] = (),
                   base: dict[str, Any] | None = None) -> T:
    """`schema` from defaults < `base` < args.config < args.overrides < given flags (see the docstring).

    `flags` maps an argparse destination to its dotted key; a flag the user did not give must be
    absent from `args` or None (declare it with `default=argparse.SUPPRESS` or `default=None`).
    """
    from tirl.config import load_config

    flag_overrides = [f"{key}={_dotlist_value(getattr(args, dest))}" for dest, key in dict(flags).items()
                      if getattr(args, dest, None) is not None]
    return load_config(schema, args.config, [*args.overrides, *flag_overrides], base=base)


def _dotlist_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def fail(command: str, message: Any) -> int:
    """Print `tirl COMMAND: message` as one line on stderr; return the usage exit code 2."""
    lines = str(message).strip().splitlines()
    print(f"tirl {command}: {lines[0] if lines else 'failed'}", file=sys.stderr)
    return 2


def user_errors() -> tuple[type[BaseException], ...]:
    # ConfigError and DataError are UserErrors.
    return (UserError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def guarded(command: str, body: Callable[[], int | None], run_dir: str | os.PathLike | None = None,
            extra: tuple[type[BaseException], ...] = ()) -> int:
    """Run `body`; a user error becomes one stderr line and exit 2 (see the module docstring)."""
    try:
        with removed_if_failed(run_dir):
            return int(body() or 0)
    except user_errors() + extra as e:
        if os.environ.get("TIRL_DEBUG"):
            raise
        return fail(command, _describe(e))


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.filename}: {e.strerror}"
    msg = str(e).strip() or type(e).__name__
    return msg.splitlines()[0]


@contextlib.contextmanager
def removed_if_failed(run_dir: str | os.PathLike | None) -> Iterator[None]:
    """Remove `run_dir` when this command created it and failed before its first checkpoint."""
    path = Path(run_dir) if run_dir is not None else None
    fresh = path is not None and not path.exists()
    try:
        yield
    except BaseException:
        if fresh and path.exists() and not (path / "checkpoints").exists():
            shutil.rmtree(path, ignore_errors=True)
        raise


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_model_source(path: str | None, what: str = "model.path") -> None:
    """Refuse a local model path that does not exist, offline and before anything is written.

    `what` is the config key or flag the path came from, for the message. A Hub id (`name` or
    `org/name`) is left to the loader; `runs/missing` is local when `runs/` is a local directory,
    which otherwise cost five Hub retries and "couldn't connect to huggingface.co".
    """
    # `pip:DIST` is resolved by `tirl.models`, which names a missing wheel with its install command.
    if not path or path.startswith(("builtin:", "pip:")) or Path(path).expanduser().exists():
        return
    if _looks_local(path):
        raise UserError(f"{what}: {path} does not exist (a local path; a Hub id looks like org/name)")


def _looks_local(path: str) -> bool:
    """A path, not a Hub id: `.`/`/`/`~` first, a .gguf file, not of a Hub id's form (one slash at
    most, no spaces), or its first component is a local directory."""
    seps = "/" + (os.sep if os.sep != "/" else "") + (os.altsep or "")
    first = re.split(f"[{re.escape(seps)}]", path, maxsplit=1)[0]
    return (path.startswith((".", "/", "~", os.sep)) or path.endswith(".gguf") or not _HUB_ID.match(path)
            or (first != path and Path(first).is_dir()))


def check_port_free(host: str, port: int) -> None:
    """Refuse a port that cannot be listened on before anything starts (a model loading for a minute, a
    sandbox announcing where it serves), in one line: a bind error afterwards is a traceback."""
    import errno
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        # as the servers bind (aiohttp's reuse_address): a port in TIME_WAIT is free, one with a listener is not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} is in use: choose another with --port") from None
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}): choose another --host or --port") from None


@contextlib.contextmanager
def loading(what: str, source: Any) -> Iterator[None]:
    """Turn a loader's OSError (a hub name that is not cached offline, a directory without weights)
    into a one-line `UserError` naming what was being loaded from where."""
    try:
        yield
    except OSError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot load {what} {str(source)!r}: {first}") from None


def set_threads(threads: int) -> None:
    """Torch intra-op threads (`--threads N`; 0 = torch's default). Imports torch only when asked."""
    if threads and threads > 0:
        import torch

        torch.set_num_threads(threads)


_quieted = False


def quiet_transformers() -> None:
    """Our progress bar is the one that matters; transformers' per-save bars are noise here."""
    global _quieted
    if _quieted:
        return
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    _quieted = True
