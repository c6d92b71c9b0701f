"""The rollout loop: generate -> run the code the model just closed -> append its output -> resume.

`rollout(generator, prompts, tokenizer, sandbox, style, ...)` runs `n` samples of every prompt to the
end and returns a `RolloutResult(trajectories, metrics)` (a named tuple: unpack it or use the names).

One turn for all live trajectories at once:
1. `generator.generate` continues every live sequence until a stop string (the style's `stop`, and the
   answer close tag when the style has one), EOS, or the trajectory's remaining budget.
2. A sequence that stopped at `stop` has closed a code block: the code is found with
   `find_closed_code(prompt_text + response_text, style)` (a prompt may end inside a code block).
   All such code of the batch runs concurrently through one `sandbox.run_batch(codes)` call.
3. The result becomes `format_exec_result` -> `render_output` (capped by characters, then tokens),
   is tokenised once, and is appended with loss_mask 0 and log-prob 0. The next turn resumes; the
   generator reuses each sequence's KV cache, so only these tokens (and the last sampled one) are
   prefilled.

Token-in/token-out: response ids are exactly the sampled ids plus the injected ids; the model's text is
decoded only to find stop strings and code, never re-tokenised.

Budget: `max_new_tokens` bounds the whole response, interpreter tokens included (they occupy context
and the trainer's sequence length); they are not generated, so each turn asks the generator for only
the remaining budget, and injected tokens that would overflow it are cut and end the trajectory
(`length`).

Faults: the program's own failures (an exception, its time or memory limit) become interpreter
messages (`Error: ...`, `TimeoutError: ...`) the model reads and may fix. The infrastructure's failures
(the sandbox or its server failed, not the program: `ExecResult.infra_failed`) are retried, and a call
that keeps failing ends its trajectory as `infra_failed`, as does a generation the server could not
make; a sandbox that stays down raises `InfraDown` (`tirl.rollout.faults`, with the step deadline
`step_timeout_s`). Output is capped to `max_output_chars` (a hard 64 KiB cap when that is 0) before it
is tokenised. An empty code block is reported to the model (`Error: empty code block ...`), not run,
and not counted against `max_tool_calls`.
A code block left open at the budget is not run.

Tool-call cap (`max_tool_calls`, ToRL's C): a code block closed after the cap (of executed calls) is
not run. With
`on_tool_cap="message"` (default) the model is told so inside interpreter tags and goes on writing
(left without an answer it would write the output itself, and those invented tokens would be trained
on); with `on_tool_cap="stop"` the trajectory ends there with finish reason `tool_cap`. Either way
`Trajectory.tool_cap_hit` is set and `tool/cap_hit_ratio` counts it.

Turns: by default turns are synchronous (the whole batch waits for its slowest row, then for the
slowest code of the turn; no row decodes while code runs). With `RolloutConfig.continuous` and a
generator that has `decode_batch` (the transformers backend), `tirl.rollout.continuous` runs instead:
each row's code runs as soon as it is closed and the row resumes as soon as its output is back, while
the others keep decoding; the rules above are the same (`_Play` holds them for both loops).
`rollout/turns` is the most generation segments of one trajectory (in the synchronous loop, the number
of `generate` calls); `rollout/exec_retries` counts sandbox calls run again after an infrastructure
failure.

Who wrote what: `Trajectory.segments` holds the response as (`model` | `interpreter`, text) runs, and
`model_text` the model's runs joined: grading and reward functions read those, never interpreter output.

Partial rollouts (`weights`, a training hook; `RolloutConfig.partial`): before every turn after the
first, `weights()` brings the generator's weights up to the newest published and returns their version.
When it changed, the live trajectories' KV caches are dropped (keys and values computed with the old
weights would mix two policies in one token; AReaL recomputes them too) and the next tokens are stamped
with the new version (`Trajectory.version_runs`); their sampling log-probs are the new weights', so the
learner's off-policy correction stays exact per token. Turn by turn only: the continuous loop refuses it.

Simplifications: each code block runs as a fresh script (both papers do so).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any, Callable, Sequence

from tirl.formats import (
    TagStyle,
    find_closed_code,
    format_exec_result,
    get_style,
    has_open_code,
    problem_prompt,
    render_output,
    truncate_middle,
)
from tirl.generation.base import (FINISH_EOS, FINISH_ERROR, FINISH_LENGTH, FINISH_STOP, GenerationRequest,
                                  SamplingParams)
from tirl.sandbox.config import INFRA_STATUSES, ExecResult
from tirl.rollout.config import RolloutConfig
from tirl.rollout.faults import ExecGuard, failure_message, mark_infra
from tirl.rollout.trajectory import INTERPRETER, MODEL, RolloutResult, ToolCall, Trajectory
from tirl.sandbox.protocol import SandboxLike
from tirl.sandbox.record import MissingExecution

EMPTY_CODE_MESSAGE = "Error: empty code block, nothing was run."
CAP_MESSAGE = "Error: tool call limit reached ({n} calls); no more code will be run. Give your final answer."
HARD_OUTPUT_CHARS = 65536  # output cap before tokenisation when `max_output_chars` is 0 (no limit asked)


def prompt_text(tokenizer: Any, problem: str, style: TagStyle | str, chat: bool | None = None) -> str:
    """The prompt of one problem (`tirl.formats.problem_prompt`, the one prompt rule)."""
    return problem_prompt(tokenizer, problem, style, chat)


def encode_prompt(tokenizer: Any, problem: str, style: TagStyle | str, chat: bool | None = None) -> list[int]:
    """Prompt ids for one problem (see `prompt_text`); encoded without extra special tokens."""
    return tokenizer.encode(problem_prompt(tokenizer, problem, style, chat), add_special_tokens=False)


_rollout_ids = itertools.count()


def rollout(
    generator: Any,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    tokenizer: Any,
    sandbox: SandboxLike,
    style: TagStyle | str = "retool",
    config: RolloutConfig | None = None,
    weights: Callable[[], int] | None = None,
    **overrides: Any,
) -> RolloutResult:
    """Run `config.n` samples of each prompt to completion. `overrides` replace config fields
    (`rollout(..., n=4, max_tool_calls=1)`). Prompts are text (encoded as is, no special tokens) or ids.
    Trajectories are ordered prompt-major: index = group_index * n + sample_index. `weights`: partial
    rollouts' hook (see the module); each trajectory's `weight_version` is then its oldest token's."""
    from tirl.analysis.tool_stats import tool_metrics

    cfg = dataclasses.replace(config or RolloutConfig(), **overrides)
    if cfg.on_tool_cap not in ("message", "stop"):
        raise ValueError(f"on_tool_cap must be 'message' or 'stop', not {cfg.on_tool_cap!r}")
    style = get_style(style)
    prompt_ids = [tokenizer.encode(p, add_special_tokens=False) if isinstance(p, str) else list(p) for p in prompts]
    prompt_texts = [tokenizer.decode(p) for p in prompt_ids]
    run_id = next(_rollout_ids)
    trajs = [Trajectory(list(p), group_index=g, sample_index=s) for g, p in enumerate(prompt_ids) for s in range(cfg.n)]
    keys = {id(t): ("rollout", run_id, t.group_index, t.sample_index) for t in trajs}
    # The close tag alone (RETOOL's answer_close is "\n</answer>"; the model may not write the newline).
    answer_stop = style.answer_close.strip()
    stops = (style.stop,) + ((answer_stop,) if cfg.stop_at_answer and answer_stop else ())
    play = _Play(tokenizer, sandbox, style, cfg, prompt_texts, keys, stops)
    if weights is not None:
        if cfg.continuous:
            raise ValueError("partial rollouts take new weights between turns: they need continuous=false")
        play.version = weights()
    live = list(trajs)
    if cfg.max_new_tokens <= 0:
        for t in trajs:
            t.finish_reason = "length"
        live = []
    if cfg.continuous and hasattr(generator, "decode_batch"):
        from tirl.rollout.continuous import play_continuous

        gen_time, exec_time = play_continuous(play, generator, live)
    else:
        gen_time, exec_time = _play_turns(play, generator, live, weights)
    counts = play.counts
    for t in trajs:
        if weights is not None:
            t.weight_version = t.version_runs[0][1] if t.version_runs else play.version
        t.text = tokenizer.decode(t.response_ids)
        t.segments = _segments(t, tokenizer)
        t.model_text = "".join(text for who, text in t.segments if who == MODEL)
    metrics = tool_metrics(trajs)
    fed_needed = sum(getattr(t, "_fed_upto", 0) for t in trajs)
    metrics.update({
        "rollout/prefill_tokens": float(counts["prefill"]),
        "rollout/decode_tokens": float(counts["decode"]),
        "rollout/generated_tokens": float(sum(sum(t.loss_mask) for t in trajs)),
        "rollout/interpreter_tokens": float(sum(len(t.loss_mask) - sum(t.loss_mask) for t in trajs)),
        "rollout/prompt_tokens": float(sum(len(t.prompt_ids) for t in trajs)),
        # Positions the model computed / positions that had to be computed once (prompt + response,
        # minus the last sampled token, which is never fed back): 1.0 = nothing recomputed.
        "rollout/recompute_ratio": (counts["prefill"] + counts["decode"]) / fed_needed if fed_needed else 0.0,
        # The most generation segments of one trajectory (= generate calls of the turn-synchronous loop).
        "rollout/turns": float(max((getattr(t, "_segments", 0) for t in trajs), default=0)),
        "rollout/gen_time_s": gen_time,
        "rollout/exec_time_s": exec_time,
        "rollout/exec_retries": float(play.guard.retries),
        **({"rollout/weight_updates": float(play.counts["weights"])} if weights is not None else {}),
    })
    for t in trajs:
        t.__dict__.pop("_fed_upto", None)
        t.__dict__.pop("_segments", None)
    return RolloutResult(trajs, metrics)


class _Play:
    """What both loops do with one trajectory: build its request, take in a generation output, answer
    its code."""

    def __init__(self, tokenizer: Any, sandbox: SandboxLike, style: TagStyle, cfg: RolloutConfig,
                 prompt_texts: list[str], keys: dict[int, tuple], stops: tuple[str, ...]):
        self.tokenizer, self.sandbox, self.style, self.cfg = tokenizer, sandbox, style, cfg
        self.prompt_texts, self.keys, self.stops = prompt_texts, keys, stops
        self.counts = dict.fromkeys(("prefill", "decode", "weights"), 0)
        self.version: int | None = None
        """The generator's weight version, when a partial rollout tracks it (`rollout(weights=...)`)."""
        # retries, the step deadline (it starts now), the down check
        self.guard = ExecGuard(lambda codes: _run_codes(sandbox, codes, cfg.exec_timeout), cfg,
                               where=getattr(sandbox, "url", None))

    def key(self, t: Trajectory) -> tuple:
        return self.keys[id(t)]

    def params(self, seed: int | None) -> SamplingParams:
        cfg = self.cfg
        return SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                              top_k=cfg.top_k, stop=self.stops, seed=seed, resume_after=(self.style.stop,))

    def request(self, t: Trajectory) -> GenerationRequest:
        return GenerationRequest(t.prompt_ids + t.response_ids, self.key(t), self.cfg.max_new_tokens - len(t.response_ids))

    def take_weights(self, version: int, generator: Any, live: list[Trajectory]) -> None:
        """The generator now holds `version`: caches computed with older weights are dropped."""
        if version != self.version:
            generator.release([self.key(t) for t in live])
            self.version = version
            self.counts["weights"] += 1

    def absorb(self, t: Trajectory, o: Any, pending: list) -> None:
        """Append one generation output to `t`; a closed code block goes to `pending` (or is answered at
        once: empty block, tool cap)."""
        cfg, style, tokenizer = self.cfg, self.style, self.tokenizer
        if self.version is not None and o.token_ids and (not t.version_runs or t.version_runs[-1][1] != self.version):
            t.version_runs.append((len(t.response_ids), self.version))
        t.response_ids += o.token_ids
        t.loss_mask += [1] * len(o.token_ids)
        t.logprobs += [float(x) for x in o.logprobs]
        self.counts["prefill"] += o.prefill_tokens
        self.counts["decode"] += o.decode_tokens
        t._fed_upto = len(t.prompt_ids) + len(t.response_ids) - 1  # type: ignore[attr-defined]
        t._segments = getattr(t, "_segments", 0) + 1  # type: ignore[attr-defined]
        if o.finish_reason == FINISH_ERROR:
            mark_infra(t, str(o.extras.get("error", "the generation backend failed")))
        elif o.finish_reason == FINISH_EOS:
            t.finish_reason = "eos"
        elif o.finish_reason == FINISH_STOP and o.stop_string != style.stop:
            t.finish_reason = "answer"
        elif o.finish_reason == FINISH_STOP:
            _closed_code(t, self.prompt_texts[t.group_index], tokenizer, style, cfg, pending)
        elif len(t.response_ids) >= cfg.max_new_tokens or o.finish_reason == FINISH_LENGTH:
            t.finish_reason = "length"
            t.unclosed_code = has_open_code(self.prompt_texts[t.group_index] + tokenizer.decode(t.response_ids), style)

    def run_codes(self, codes: list[str]) -> list[ExecResult]:
        """Never raises but `InfraDown`: a failing sandbox gives `sandbox_error` results."""
        return self.guard.run(codes)

    def answer(self, t: Trajectory, code: str, res: ExecResult) -> None:
        message = format_exec_result(res.status, res.stdout, res.stderr, self.cfg.error_lines)
        _inject(t, code, res.status, message, res.duration_s, self.tokenizer, self.style, self.cfg)
        if res.status in INFRA_STATUSES:  # kept failing after its retries: the sample is void
            mark_infra(t, failure_message(res))


def _play_turns(play: _Play, generator: Any, live: list[Trajectory],
                weights: Callable[[], int] | None = None) -> tuple[float, float]:
    """The turn-synchronous loop: generate for every live trajectory until each stops, run all the code
    they closed in one `run_batch`, repeat (with `weights`, taking the newest weights between turns).
    Returns (generation seconds, execution seconds)."""
    gen_time = exec_time = 0.0
    turn = 0
    while live:
        if weights is not None and turn > 0:
            play.take_weights(weights(), generator, live)
        seed = None if play.cfg.seed is None else play.cfg.seed + turn
        t0 = time.perf_counter()
        outs = generator.generate([play.request(t) for t in live], play.params(seed))
        gen_time += time.perf_counter() - t0
        turn += 1
        pending: list[tuple[Trajectory, str]] = []  # (trajectory, code to run)
        for t, o in zip(live, outs):
            play.absorb(t, o, pending)
        if pending:
            t0 = time.perf_counter()
            results = play.run_codes([code for _, code in pending])
            exec_time += time.perf_counter() - t0
            for (t, code), res in zip(pending, results):
                play.answer(t, code, res)
        generator.release([play.key(t) for t in live if t.finish_reason])
        live = [t for t in live if not t.finish_reason]
    return gen_time, exec_time


def _segments(t: Trajectory, tokenizer: Any) -> list[tuple[str, str]]:
    """The runs of sampled (loss_mask 1: `model`) and injected (0: `interpreter`) tokens, each decoded on
    its own, in order."""
    out, start = [], 0
    for i in range(1, len(t.loss_mask) + 1):
        if i == len(t.loss_mask) or t.loss_mask[i] != t.loss_mask[start]:
            out.append((MODEL if t.loss_mask[start] else INTERPRETER, tokenizer.decode(t.response_ids[start:i])))
            start = i
    return out


def _closed_code(t: Trajectory, prompt_text: str, tokenizer: Any, style: TagStyle, cfg: RolloutConfig,
                 pending: list) -> None:
    """The trajectory just sampled `style.stop`: queue its code, or inject the empty/cap message."""
    full = prompt_text + tokenizer.decode(t.response_ids)
    # The stop may sit inside a token (e.g. "</code>\n"): cut the text right after it.
    end = full.rfind(style.stop) + len(style.stop)
    code = find_closed_code(full[:end], style)
    if code is None:  # the stop text closed no code block (e.g. a ```text fence): just go on writing
        return
    if not code.strip():  # nothing to run: said so, and no tool call spent on it
        _inject(t, code, "empty", EMPTY_CODE_MESSAGE, 0.0, tokenizer, style, cfg)
        return
    if t.executed_calls >= cfg.max_tool_calls:
        t.tool_cap_hit = True
        if cfg.on_tool_cap == "stop":
            t.finish_reason = "tool_cap"
        else:
            _inject(t, code, "capped", CAP_MESSAGE.format(n=cfg.max_tool_calls), 0.0, tokenizer, style, cfg)
        return
    pending.append((t, code))


def _run_codes(sandbox: SandboxLike, codes: list[str], timeout: float | None) -> list[ExecResult]:
    """`sandbox.run_batch(codes)`; any failure of the sandbox itself becomes a per-call error result."""
    try:
        results = list(sandbox.run_batch(codes) if timeout is None else sandbox.run_batch(codes, timeout=timeout))
        if len(results) != len(codes):
            raise RuntimeError(f"sandbox returned {len(results)} results for {len(codes)} programs")
        return results
    except MissingExecution:  # a replay that left its record: not the sandbox's fault, nothing to show the model
        raise
    except Exception as e:  # noqa: BLE001 - a broken sandbox must not end the rollout
        msg = f"Error: sandbox failure: {type(e).__name__}: {e}"
        return [ExecResult("sandbox_error", stderr=msg, message=msg) for _ in codes]


def _inject(t: Trajectory, code: str, status: str, message: str, duration_s: float, tokenizer: Any,
            style: TagStyle, cfg: RolloutConfig) -> None:
    """Append the rendered interpreter output with loss_mask 0; cut it (and finish) at the budget."""
    cap = cfg.max_output_chars if cfg.max_output_chars > 0 else HARD_OUTPUT_CHARS
    shown = truncate_middle(message.rstrip("\n"), cap)  # megabytes never reach the tokenizer
    text = render_output(shown, style, max_chars=cap, tokenizer=tokenizer, max_tokens=cfg.max_output_tokens)
    ids = tokenizer.encode(text, add_special_tokens=False)
    room = cfg.max_new_tokens - len(t.response_ids)
    if len(ids) >= room:
        ids = ids[:room]
        t.finish_reason = "length"
    start = len(t.response_ids)
    t.response_ids += ids
    t.loss_mask += [0] * len(ids)
    t.logprobs += [0.0] * len(ids)
    inner = text[len(style.output_prefix): len(text) - len(style.output_suffix)] if style.output_suffix else text
    t.tool_calls.append(ToolCall(code, status, inner, duration_s, (start, start + len(ids))))
