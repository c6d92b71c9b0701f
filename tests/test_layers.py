"""The layer rules of DESIGN.md: no torch below the models layer, imports only flow downwards."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tirl"

# Layer of each top-level module/package; a module may import only from layers <= its own.
LAYERS = {
    "__init__": 0, "config": 0, "progress": 0, "http_client": 0, "jsonl": 0, "formats": 0, "sandbox": 1, "reward": 1, "models": 2,
    "generation": 3, "rollout": 4, "analysis": 0, "algorithms": 4, "logprobs": 4,
    "tasks": 5, "data": 5, "convert": 5, "train": 6, "eval": 7, "report": 7,
    "eval_scores": 7, "eval_command": 7, "demo": 8, "cli": 9,
}


def _top(module_path: Path) -> str:
    rel = module_path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _tirl_imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tirl."):
            yield node.module.split(".")[1]
        elif isinstance(node, ast.ImportFrom) and node.module == "tirl":
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tirl."):
                    yield alias.name.split(".")[1]


def test_every_module_has_a_layer():
    unknown = {_top(p) for p in SRC.rglob("*.py")} - set(LAYERS)
    assert not unknown, f"add these to LAYERS (and DESIGN.md): {sorted(unknown)}"


def test_imports_only_flow_downwards():
    bad = []
    for path in SRC.rglob("*.py"):
        me = _top(path)
        for dep in _tirl_imports(path):
            if dep in LAYERS and dep != me and LAYERS[dep] > LAYERS[me]:
                bad.append(f"{path.relative_to(SRC)} imports tirl.{dep}")
    assert not bad, bad


def test_formats_reward_sandbox_do_not_import_torch():
    code = (
        "import sys, importlib\n"
        "for m in ('tirl.formats', 'tirl.reward', 'tirl.config', 'tirl.sandbox'):\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except ModuleNotFoundError as e:\n"
        "        if e.name != m: raise\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
