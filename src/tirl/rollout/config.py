"""`RolloutConfig`: how rollouts are generated (the `rollout:` section of `tirl train` and `tirl eval`),
and the checks run on it, and on the `prompt:` section it goes with, before anything loads."""

from __future__ import annotations

from dataclasses import dataclass

from tirl.formats import PromptConfig, get_style
from tirl.sandbox.record import EXEC_CACHE_MODES


@dataclass
class RolloutConfig:
    """How rollouts are generated. Defaults suit the tiny CPU model; the papers' values are noted."""

    n: int = 1
    """Samples per prompt (a GRPO group; ToRL and ReTool use 16)."""
    max_new_tokens: int = 512
    """Response budget, interpreter tokens included (ToRL 3,072; ReTool 16,384)."""
    max_tool_calls: int = 4
    """Code blocks run per response (ToRL's C; its config default is 3, ReTool's verl recipe 8 turns)."""
    max_output_chars: int = 256
    """Interpreter output kept per call, head and tail (ToRL and ReTool's recipe cut to 256 characters)."""
    max_output_tokens: int = 0
    """Token cap on the same output after the character cap (verl#4918); 0 = none."""
    error_lines: int = 0
    """Traceback lines shown on errors; 0 = all, 1 = ToRL's last line only."""
    temperature: float = 1.0
    """Both papers sample RL rollouts at 1.0."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1.0 = off (both papers)."""
    top_k: int = 0
    """Sample among the k likeliest tokens; 0 = off."""
    seed: int | None = None
    """Seed of each turn's sampler (turn t uses seed + t); None = not reproducible."""
    on_tool_cap: str = "message"
    """`message`: tell the model the cap was hit and go on; `stop`: end the trajectory (`tool_cap`)."""
    stop_at_answer: bool = True
    """Stop at the style's answer close tag (ReTool's `</answer>`) instead of waiting for EOS."""
    exec_timeout: float | None = None
    """Per-call time limit passed to `run_batch(codes, timeout=...)`; None = the sandbox's own."""
    exec_retries: int = 3
    """Re-runs of a sandbox call that failed as infrastructure (the sandbox or its server, not the program:
    `ExecResult.infra_failed`), after waits of `exec_retry_backoff_s`, doubling. A sample whose call still
    fails is `infra_failed`: left out of training and scores, never penalised. While no call runs at all
    a failed call is retried until `exec_retry_deadline_s`, then the sandbox is down and the command ends
    (exit 2, one line naming it). The HTTP clients' own retries of transport errors come first, inside
    each run (`tirl.rollout.faults`)."""
    exec_retry_backoff_s: float = 0.5
    """Wait before the first re-run; doubles each time (the HTTP clients' schedule)."""
    exec_retry_deadline_s: float = 60.0
    """No re-run of a call starts later than this after its first run; a sandbox where nothing has run for
    this long is down."""
    step_timeout_s: float = 0.0
    """Deadline of one rollout call (a training step, or each shard of it played here; an evaluation batch)
    for its sandbox calls: a call still running then is abandoned and its sample is `infra_failed`.
    0 = none (each call waits for its sandbox, whose own limits bound it)."""
    continuous: bool = False
    """Continuous batching (`tirl.rollout.continuous`): a trajectory's code runs as soon as it closes the
    block, and the trajectory rejoins the decode batch as soon as its output is back, while the others
    keep decoding; nobody waits for the slowest row of a turn. Needs a generator with `decode_batch`
    (the transformers backend; others play turn by turn). The batch's make-up then depends on sandbox
    timing, so sampled tokens are not reproducible run to run for a fixed seed (greedy decoding gives
    the same trajectories as turn by turn, up to float rounding); off by default for that reason."""
    partial: bool = False
    """Training with trainer.max_staleness >= 1 (local backend): partial rollouts. A rollout in flight when
    the learner publishes new weights goes on with them from its next turn (after its tool calls), instead
    of finishing with the weights it started with; each token keeps the version that sampled it
    (`Trajectory.version_runs`), the staleness bound is read from the oldest, and the KV caches computed
    with the old weights are dropped (the next turn prefills again). Needs the turn-by-turn loop
    (continuous: false). Refused at max_staleness 0 (no weights arrive during a rollout) and on Ray
    (a worker takes weights only between shards)."""
    shards: int = 1
    """Training rollouts: the step's prompts are cut into this many shards of whole groups, each with a
    fixed seed (`tirl.distributed.shards`; `rollout` itself plays what it is given). Results depend on
    it, never on where shards run: set it to the most rollout workers the run may use."""
    exec_cache: str = "off"
    """Training: what the run's execution record (`RUN_DIR/executions.jsonl`, `tirl.sandbox.record`) is
    used for. `off`: every program runs, every answer is recorded (what `tirl replay` needs); `reuse`:
    a program judged deterministic (its source names no randomness, clock, process or set, and it
    ran twice here with one ok/error outcome) is answered from the record instead of run again;
    `replay`: no sandbox at all, every program answered from `exec_record` (a program it never ran
    stops the run, naming the code's hash)."""
    exec_record: str = ""
    """`exec_cache: replay`: the record to serve, e.g. another run's `executions.jsonl`; empty = this
    run directory's own."""


def check_prompt_and_rollout(prompt: PromptConfig, cfg: RolloutConfig) -> None:
    """Refuse values of the shared `prompt` / `rollout` config sections before anything runs."""
    get_style(prompt.style)  # an unknown style raises, naming the known ones
    if cfg.temperature < 0:
        raise ValueError(f"rollout.temperature must be >= 0 (0 = greedy), got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        raise ValueError(f"rollout.top_p must be in (0, 1], got {cfg.top_p}")
    if cfg.on_tool_cap not in ("message", "stop"):
        raise ValueError(f"rollout.on_tool_cap must be 'message' or 'stop', not {cfg.on_tool_cap!r}")
    if cfg.exec_cache not in EXEC_CACHE_MODES:
        raise ValueError(f"rollout.exec_cache must be one of {', '.join(EXEC_CACHE_MODES)}, not {cfg.exec_cache!r}")
    if cfg.exec_record and cfg.exec_cache != "replay":
        raise ValueError("rollout.exec_record is the record rollout.exec_cache=replay serves; set both or neither")
    if cfg.n < 1 or cfg.max_new_tokens < 1 or cfg.max_tool_calls < 0:
        raise ValueError("rollout.n and rollout.max_new_tokens must be >= 1, rollout.max_tool_calls >= 0")
    if cfg.exec_retries < 0 or cfg.exec_retry_backoff_s < 0 or cfg.step_timeout_s < 0:
        raise ValueError("rollout.exec_retries, rollout.exec_retry_backoff_s and rollout.step_timeout_s must be >= 0")
    if not cfg.exec_retry_deadline_s > 0:
        raise ValueError(f"rollout.exec_retry_deadline_s must be > 0, got {cfg.exec_retry_deadline_s}")
