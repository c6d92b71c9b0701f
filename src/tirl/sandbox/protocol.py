"""``SandboxLike``: what rollout, evaluation, training and conversion need from a sandbox.

``Sandbox`` (local), ``HttpSandbox`` and test doubles all satisfy it; callers annotate with it instead
of ``Any`` so a type checker (and a reader) knows the contract: results are ``ExecResult``, in input order.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

from .config import ExecResult


@runtime_checkable
class SandboxLike(Protocol):
    def run(self, code: str, timeout: float | None = None) -> ExecResult: ...

    def run_batch(self, codes: Sequence[str], timeout: float | None = None) -> list[ExecResult]: ...

    async def arun(self, code: str, timeout: float | None = None) -> ExecResult: ...


@runtime_checkable
class SessionCapable(SandboxLike, Protocol):
    """A sandbox that also opens stateful sessions (the local ``Sandbox``; not ``HttpSandbox``)."""

    def session(self) -> Any: ...
