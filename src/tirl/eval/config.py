"""`EvalConfig`: how evaluation samples are drawn and graded (the same `prompt` and `rollout` sections as
`tirl train`), and what a resumed run must match (`identity`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from tirl.formats import PromptConfig
from tirl.rollout import RolloutConfig, check_prompt_and_rollout


FAULT_KEYS = ("rollout.exec_retries", "rollout.exec_retry_backoff_s", "rollout.exec_retry_deadline_s",
              "rollout.step_timeout_s")
"""How infrastructure failures are handled: they decide whether a sample gets made, never what it is."""


def _eval_rollout() -> RolloutConfig:
    return RolloutConfig(n=1, max_new_tokens=4096, max_tool_calls=8, max_output_chars=256, temperature=0.0, seed=0)


@dataclass
class EvalConfig:
    """How samples are drawn and graded: the same `prompt` and `rollout` sections as `tirl train`.

    Defaults: one greedy sample (`rollout.n=1`, `rollout.temperature=0`), 4,096 response tokens, 8
    tool calls; ReTool reports n=32, T=1.0, top-p 0.7 (configs/eval_retool.yaml). With `--model DIR`
    the prompt and tool-loop settings saved with the model (`tirl.json`) replace these defaults.
    """

    prompt: PromptConfig = field(default_factory=PromptConfig)
    rollout: RolloutConfig = field(default_factory=_eval_rollout)
    """`rollout.n` is k of avg@k / pass@k / maj@k; `rollout.seed` seeds each batch (None = unseeded)."""
    batch_size: int = 16
    """Samples generated together per rollout call (and the unit of fsync'ed progress)."""
    lenient: bool = False
    """Fall back to the last number when no \\boxed{} is found (off: the papers' strict extraction)."""
    limit: Optional[int] = None
    """Only the first N problems of each benchmark (quick runs)."""
    skip_invalid: bool = False
    """Skip malformed data rows (their count is printed) instead of refusing the file."""

    @property
    def n(self) -> int:
        return self.rollout.n

    def identity(self) -> dict[str, Any]:
        """Settings that decide what a sample is; a resumed run must match them (n and limit may change,
        and so may how infrastructure failures are retried)."""
        from tirl.config import flatten

        d = flatten(dataclasses.asdict(self))  # dotted keys: a refusal names `rollout.temperature`
        for k in ("limit", "batch_size", "skip_invalid", "rollout.n", "rollout.exec_cache", "rollout.exec_record",
                  *FAULT_KEYS):
            d.pop(k)
        return d

    def validate(self) -> None:
        if self.rollout.n < 1:
            raise ValueError(f"rollout.n must be >= 1, got {self.rollout.n}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        check_prompt_and_rollout(self.prompt, self.rollout)


def without_tool(cfg: EvalConfig) -> EvalConfig:
    """`cfg` with no code run: a closed code block ends the response (`rollout.max_tool_calls` 0,
    `on_tool_cap` stop), so the answer must come from the model's own text before it, as in the text-only
    RL arm (configs/smollm2_text.yaml); grading never reads interpreter output anyway."""
    rollout = dataclasses.replace(cfg.rollout, max_tool_calls=0, on_tool_cap="stop")
    return dataclasses.replace(cfg, rollout=rollout)
