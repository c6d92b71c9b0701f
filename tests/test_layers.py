"""The layer rules of docs/architecture.md, read from its table: every module has a layer, imports only
flow downwards, no module-level import cycle, layers 0 and 1 import no torch."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tirl"
DOC = ROOT / "docs" / "architecture.md"
TORCH_FREE_UP_TO = 1  # layers 0 and 1 (the table's foundations, the sandbox and the grader)

# Cycles being removed elsewhere; may only shrink (the sandbox's core <-> session one is gone).
KNOWN_CYCLES: list[set[str]] = []


def _layers_from_doc() -> dict[str, int]:
    """{top-level module or package name: layer} from the `| layer | package or module | owns |` table."""
    layers = {"__init__": 0}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            for name in re.findall(r"`([A-Za-z_]\w*)(?:\.py|/)`", cells[1]):
                layers[name] = int(cells[0])
    return layers


LAYERS = _layers_from_doc()


def _top(module_path: Path) -> str:
    return module_path.relative_to(SRC).parts[0].removesuffix(".py")


def _module_name(path: Path) -> str:
    parts = ("tirl",) + path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every `tirl...` module named by an import anywhere in the file (lazy ones too), made absolute."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("tirl"):
                out.add(base)
                out.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("tirl"))
    return out


def test_the_table_is_read():
    assert LAYERS["formats"] == 0 and LAYERS["rollout"] == 4 and LAYERS["cli"] == max(LAYERS.values())


def test_every_module_has_a_layer():
    unknown = {_top(p) for p in SRC.rglob("*.py")} - set(LAYERS)
    assert not unknown, f"add these to the table in docs/architecture.md: {sorted(unknown)}"


def test_imports_only_flow_downwards():
    bad = []
    for path in SRC.rglob("*.py"):
        me = _top(path)
        for dep in {m.split(".")[1] for m in _imports(path) if m.count(".") >= 1}:
            if dep in LAYERS and LAYERS[dep] > LAYERS[me]:
                bad.append(f"{path.relative_to(SRC)} imports tirl.{dep}")
    assert not bad, bad


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_cycles_between_modules():
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    # A package's __init__ is left out as a target: importing `tirl.x.y` runs it, but it re-exports
    # its own modules, so counting it would make every package a cycle of its own.
    graph = {m: {d for d in _imports(p) if d in files and d != m and not files[d].name == "__init__.py"}
             for m, p in files.items()}
    found = _cycles(graph)
    new = [sorted(c) for c in found if not any(c <= known for known in KNOWN_CYCLES)]
    assert not new, f"import cycles: {new}"


def test_torch_free_layers_do_not_import_torch():
    modules = sorted(_module_name(p) for p in SRC.rglob("*.py") if LAYERS[_top(p)] <= TORCH_FREE_UP_TO
                     # the zygote and its filesystem view import their siblings as top-level modules
                     and p.name not in ("_zygote.py", "_fsview.py"))
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# What algorithms/ may import: tensors and typing, and its own modules. No files, network, configs or
# trainer: the math of an update stays a function of its arguments.
ALGORITHMS_MAY_IMPORT = {"__future__", "torch", "typing", "math", "dataclasses"}
IO_CALLS = {"open", "print", "input", "exec", "eval", "__import__"}


def test_algorithms_do_no_io_and_import_nothing_of_the_trainer():
    bad = []
    for path in sorted((SRC / "algorithms").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                if not (top in ALGORITHMS_MAY_IMPORT or name == "tirl.algorithms" or name.startswith("tirl.algorithms.")):
                    bad.append(f"{path.relative_to(SRC)} imports {name}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in IO_CALLS:
                bad.append(f"{path.relative_to(SRC)}:{node.lineno} calls {node.func.id}()")
    assert not bad, bad


def test_the_algorithms_check_sees_a_forbidden_import(tmp_path, monkeypatch):
    pkg = tmp_path / "algorithms"
    pkg.mkdir()
    (pkg / "leak.py").write_text("import json\nfrom tirl.train import rl\nopen('x')\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    try:
        test_algorithms_do_no_io_and_import_nothing_of_the_trainer()
    except AssertionError as e:
        found = str(e)
    else:
        found = ""
    assert "imports json" in found and "imports tirl.train" in found and "calls open()" in found


LONG_FILE = 450
LONG_FILE_REASON = "over the usual size"


def test_a_long_file_says_why_in_its_docstring():
    silent = []
    for path in sorted(SRC.rglob("*.py")):
        n = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if n > LONG_FILE and LONG_FILE_REASON not in " ".join(doc.split()):
            silent.append(f"{path.relative_to(SRC)} ({n} lines)")
    assert not silent, (f"files over {LONG_FILE} lines must say why in their docstring "
                        f"(with the words {LONG_FILE_REASON!r}): {silent}")
