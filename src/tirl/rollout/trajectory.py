"""`Trajectory`: one sampled response, token-aligned (`response_ids`, `loss_mask`, `logprobs`), with the
tool calls it made (`ToolCall`), who wrote which text (`segments`), whether the infrastructure failed it
(`infra_failed`) and the weights it was sampled with (`weight_version`); `RolloutResult`: what `rollout`
returns. Plain records, no torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tirl.sandbox.config import INFRA_STATUSES

MODEL, INTERPRETER = "model", "interpreter"
"""The two writers of a response's text (`Trajectory.segments`)."""


@dataclass
class ToolCall:
    code: str
    status: str
    """A sandbox status (`ok`, `error`, `timeout`, ...) or `empty` (not run) or `capped` (over the cap)."""
    output: str
    """What the model was shown (capped), without the interpreter tags."""
    duration_s: float
    span: tuple[int, int]
    """[start, end) of the injected tokens in `Trajectory.response_ids`."""

    @property
    def executed(self) -> bool:
        return self.status not in ("empty", "capped")

    @property
    def infra_failed(self) -> bool:
        """The sandbox (not the program) failed this call (`tirl.sandbox.INFRA_STATUSES`)."""
        return self.status in INFRA_STATUSES


@dataclass
class Trajectory:
    """One sampled response. `response_ids`, `loss_mask` and `logprobs` are aligned, length L."""

    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    """1 = sampled by the policy, 0 = interpreter output (the prompt is kept apart, in `prompt_ids`)."""
    logprobs: list[float] = field(default_factory=list)
    """Sampling log-prob of each response token; 0.0 where `loss_mask` is 0."""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str = ""
    """`answer`, `eos`, `length`, `tool_cap`, or `infra` (ended by an infrastructure failure)."""
    text: str = ""
    """The decoded response (sampled and injected tokens)."""
    model_text: str = ""
    """The decoded sampled tokens only (interpreter output left out): what grading reads, so an answer
    that appears only in interpreter output (code that prints `\\boxed{...}`) is never the model's."""
    group_index: int = 0
    """Index of the prompt in the batch (the GRPO group)."""
    sample_index: int = 0
    tool_cap_hit: bool = False
    """The model closed a code block after `max_tool_calls` had been used."""
    unclosed_code: bool = False
    """The budget ran out inside a code block (it was not run)."""
    segments: list[tuple[str, str]] = field(default_factory=list)
    """The response as (writer, text) runs in order, writer `model` (sampled tokens) or `interpreter`
    (injected output): what a reward function reads to know who wrote what. The model's runs joined are
    `model_text`."""
    infra_failed: bool = False
    """The infrastructure failed this sample (a sandbox call that kept failing, a call cut at the step
    deadline, a generation the server could not make): it says nothing about the model, so it is left
    out of its group's statistics, the loss and the scores, and never penalised (`tirl.rollout.faults`)."""
    infra_error: str = ""
    """What failed, when `infra_failed` (the sandbox's or server's message)."""
    weight_version: int | None = None
    """Version of the policy weights that sampled it (set by the rollout backend; None outside training);
    with partial rollouts the oldest of `version_runs`, what the staleness bound reads."""
    version_runs: list[tuple[int, int]] = field(default_factory=list)
    """Partial rollouts (`RolloutConfig.partial`): (first response token, version) of each run of tokens
    sampled with one weight version, in order, versions increasing. Empty: every token is `weight_version`'s."""

    @property
    def num_calls(self) -> int:
        """Code blocks closed within the cap (empty ones included: code was written)."""
        return sum(1 for c in self.tool_calls if c.status != "capped")

    @property
    def executed_calls(self) -> int:
        """Code blocks sent to the sandbox: what `max_tool_calls` bounds (an empty block is not a call)."""
        return sum(1 for c in self.tool_calls if c.executed)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for c in d["tool_calls"]:
            c["span"] = list(c["span"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trajectory":
        d = dict(d)
        d["tool_calls"] = [ToolCall(**{**c, "span": tuple(c["span"])}) for c in d.get("tool_calls", [])]
        d["segments"] = [tuple(s) for s in d.get("segments", [])]
        d["version_runs"] = [tuple(r) for r in d.get("version_runs", [])]
        return cls(**d)


class RolloutResult(NamedTuple):
    trajectories: list[Trajectory]
    metrics: dict[str, float]
