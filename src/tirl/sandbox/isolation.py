"""What a run tells its user about sandbox isolation, and training's refusal of a partial sandbox.

``tirl train`` starts its sandbox with ``open_sandbox(cfg, "training")``: its config defaults to
``isolation: strict``, so a machine that cannot isolate fully stops the run with one line naming what
is missing and how to opt in (``sandbox.isolation=auto``); with ``auto`` a partial sandbox runs, and
the log says so loudly at start. Both commands record ``summarise(report)`` in ``summary.json``.
"""
from __future__ import annotations

import sys
from typing import Callable

from tirl.config import UserError

from .config import SandboxConfig, SandboxUnavailable
from .local import Sandbox


class IsolationRefused(SandboxUnavailable, UserError):
    """A run that requires full isolation on a machine that cannot give it (one line for the user)."""


def summarise(report: dict | None) -> dict:
    """The part of ``Sandbox.isolation`` a run records: level, missing primitives, unenforced limits."""
    if not report:
        return {"level": "not started", "missing": [], "not_enforced": []}
    limits = report.get("limits") or {}
    return {"level": report.get("level", "unknown"), "missing": sorted(report.get("missing") or {}),
            "not_enforced": sorted(k for k, v in limits.items() if "NOT ENFORCED" in v)}


def describe(report: dict) -> str:
    """One line: ``isolation full (cgroup v1)`` or ``isolation PARTIAL: missing ...; not enforced: ...``."""
    s = summarise(report)
    if s["level"] == "full":
        return f"isolation full (cgroup {report.get('cgroup')}, root {report.get('root')})"
    text = f"isolation {s['level'].upper()}: missing {', '.join(s['missing']) or '-'}"
    if s["not_enforced"]:
        text += f"; not enforced: {', '.join(s['not_enforced'])}"
    return text


def open_sandbox(cfg: SandboxConfig, purpose: str, log: Callable[[str], None] | None = None) -> Sandbox:
    """Start a ``Sandbox`` for ``purpose`` ("training"...), log its level; explain a strict refusal."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        sb = Sandbox(cfg)
    except SandboxUnavailable as e:
        if cfg.isolation != "strict":
            raise
        raise IsolationRefused(f"{purpose} refuses a sandbox without full isolation ({e}); to run anyway with "
                               "what this machine allows, set sandbox.isolation=auto") from None
    rep = sb.isolation
    log(f"sandbox: {describe(rep)}")
    if rep["level"] != "full":
        log(f"WARNING: {purpose} runs model-written code with PARTIAL sandbox isolation (sandbox.isolation="
            f"{cfg.isolation}); see `tirl sandbox check` for what is missing and how each limit is enforced")
    return sb
