"""Can a program's recorded outcome stand in for running it again? The static half of that judgement.

`rollout.exec_cache: reuse` answers a program from the execution record only when it is judged
deterministic twice over (`tirl.sandbox.record` holds the other half):

1. Statically, here: its source names nothing whose result varies from run to run. `volatile(code)`
   parses the program (never runs it) and returns the first such name, or None:
   - modules of randomness, clocks, the process and its environment, files, threads and processes:
     `random`, `secrets`, `uuid`, `time`, `datetime`, `os`, `sys`, `subprocess`, `threading`, ... and
     any dotted module with such a part (`numpy.random`);
   - attributes and names that draw random numbers or read a clock (`np.random`, `sympy.randprime`,
     anything starting with `rand`, `now`, `today`, `perf_counter`, `urandom`, `getpid`, ...);
   - builtins whose result depends on the process (`id`, `hash`, `input`) or that run code the screen
     cannot see (`exec`, `eval`, `compile`, `__import__`, `getattr` with a computed name);
   - sets: the order a set of strings prints in follows the interpreter's hash seed, which changes
     whenever the sandbox restarts (a resumed run), even if two calls under one sandbox agree.
   A program that does not parse fails the same way every time and passes this half.
2. By observation (`record`): it has been executed at least twice under the same isolation level,
   every execution gave the same outcome (status, stdout, stderr, exit code...), and that outcome is
   `ok` or `error` (a timeout, an OOM kill or a sandbox failure depends on the machine's load).

Why both: the screen alone misses what it cannot name (a program that prints a dict's `id`-ordered
view, a C extension reading the clock); observation alone accepts a program whose variation happened
to agree twice (`random.choice([1, 2])` does, half the time; `time.time()` at a coarse precision).
Each half refuses what the other would let through; together a false reuse needs an unnamed source
of variation that also agreed on two runs. The cost: the first two executions of every program always
run, and a program that merely mentions `random` is never reused.

Not covered: programs that read files they were given (`run(..., files=...)`: the files are part of
the record's key, so a changed file is another program, but a file read from the host is not).
"""
from __future__ import annotations

import ast

VOLATILE_MODULES = frozenset({
    "random", "secrets", "uuid", "time", "datetime", "os", "sys", "platform", "resource", "socket",
    "subprocess", "multiprocessing", "threading", "concurrent", "asyncio", "signal", "gc", "tracemalloc",
    "ctypes", "importlib", "tempfile", "pathlib", "glob", "shutil", "io", "faulthandler", "select",
})
"""Modules (a dotted name's any part) whose functions read randomness, clocks, the process or files."""

VOLATILE_NAMES = frozenset({
    "random", "now", "utcnow", "today", "time", "time_ns", "perf_counter", "perf_counter_ns", "monotonic",
    "process_time", "urandom", "getpid", "getppid", "getrandbits", "default_rng", "uuid1", "uuid4",
    "shuffle", "environ", "getenv", "listdir", "scandir",
    # builtins
    "id", "hash", "input", "exec", "eval", "compile", "__import__", "breakpoint", "globals", "vars",
    "set", "frozenset",
})
"""Attribute and plain names (a builtin call, `np.random`, `datetime.now`) that vary or hide code."""


def volatile(code: str) -> str | None:
    """The first thing in `code` that can make its output vary between runs (`"import random"`,
    `"name time"`, `"a set"`), or None when the screen finds nothing (see the module docstring)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None  # it fails to compile the same way every time
    except (ValueError, RecursionError, MemoryError):  # null bytes, absurd nesting: do not judge
        return "source that does not parse cleanly"
    for node in ast.walk(tree):
        found = _volatile_node(node)
        if found:
            return found
    return None


def _volatile_node(node: ast.AST) -> str | None:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if _volatile_module(alias.name):
                return f"import {alias.name}"
    elif isinstance(node, ast.ImportFrom):
        if node.level or _volatile_module(node.module or ""):
            return f"from {'.' * node.level}{node.module or ''} import"
        for alias in node.names:
            if _volatile_name(alias.name):
                return f"import of {alias.name}"
    elif isinstance(node, ast.Name) and _volatile_name(node.id):
        return f"name {node.id}"
    elif isinstance(node, ast.Attribute) and _volatile_name(node.attr):
        return f"attribute {node.attr}"
    elif isinstance(node, (ast.Set, ast.SetComp)):
        return "a set"
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr") \
            and len(node.args) > 1 and not isinstance(node.args[1], ast.Constant):
        return f"{node.func.id} with a computed name"
    return None


def _volatile_module(name: str) -> bool:
    return any(part in VOLATILE_MODULES or _volatile_name(part) for part in name.split("."))


def _volatile_name(name: str) -> bool:
    return name in VOLATILE_NAMES or name.startswith("rand")
