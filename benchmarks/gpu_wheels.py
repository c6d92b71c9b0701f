"""The wheels `make gpu-check` needs on a GPU machine that has only PyTorch and transformers and no network.

    python benchmarks/gpu_wheels.py --out dist/gpu-wheels [--python-version 3.11]

Which: tirl's own wheel, and every distribution tirl (and pytest, for the `gpu`-marked tests) needs,
found from this environment's installed metadata, less what torch and transformers already bring
and less what the check never imports (datasets and its pyarrow / pandas, matplotlib: the report and
HF datasets only). Versions are the ones installed here (tested together). Binary wheels are fetched
for `--platform` and `--python-version` (the GPU machine's, default this interpreter's); pure-Python
ones fit any. Refuses (exit 1) when the folder would exceed `--max-mb` (60).
There: `pip install --no-index --no-deps dist/gpu-wheels/*.whl` (what `make gpu-check` does).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PREINSTALLED = ("torch", "transformers")
NOT_NEEDED = ("datasets", "matplotlib")
EXTRA_ROOTS = ("pytest", "pytest-timeout")


def closure(roots: list[str], extras_of: dict[str, set[str]] | None = None) -> set[str]:
    """Canonical names of `roots` and everything they require (installed ones only), markers honoured."""
    seen: set[str] = set()
    todo = [(r, (extras_of or {}).get(r, set())) for r in roots]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        try:
            dist = metadata.distribution(key)
        except metadata.PackageNotFoundError:
            continue
        if key in seen and not extras:
            continue
        seen.add(key)
        for line in dist.requires or []:
            req = Requirement(line)
            env_ok = any(req.marker is None or req.marker.evaluate({"extra": e}) for e in (extras or {""}))
            if env_ok and (req.marker is None or "extra" not in str(req.marker) or extras):
                todo.append((req.name, set(req.extras)))
    return seen


def wanted() -> list[str]:
    tirl = Requirement("tirl")
    needed = closure([*(Requirement(r).name for r in metadata.requires("tirl") or [] if "extra" not in r), *EXTRA_ROOTS],
                     {"math-verify": {"antlr4-13-2"}})
    skip = closure(list(PREINSTALLED)) | (closure(list(NOT_NEEDED)) - closure(
        [Requirement(r).name for r in metadata.requires("tirl") or [] if "extra" not in r
         and Requirement(r).name not in NOT_NEEDED] + list(EXTRA_ROOTS)))
    return sorted(n for n in needed - skip - {canonicalize_name(tirl.name)})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "dist" / "gpu-wheels"))
    ap.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}")
    ap.add_argument("--platform", nargs="+", default=["manylinux_2_17_x86_64", "manylinux2014_x86_64",
                                                       "manylinux_2_28_x86_64"])
    ap.add_argument("--max-mb", type=float, default=60)
    ap.add_argument("--list", action="store_true", help="print the distributions and stop")
    args = ap.parse_args()
    names = wanted()
    pins = [f"{n}=={metadata.version(n)}" for n in names]
    if args.list:
        print("\n".join(pins))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)], check=True)
    plat = [a for p in args.platform for a in ("--platform", p)]
    subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(out),
                    "--python-version", args.python_version, *plat, *pins], check=True)
    size = sum(f.stat().st_size for f in out.glob("*.whl")) / 2**20
    print(f"{len(list(out.glob('*.whl')))} wheels, {size:.1f} MB in {out}")
    if size > args.max_mb:
        print(f"gpu_wheels: {size:.1f} MB is over --max-mb {args.max_mb}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
