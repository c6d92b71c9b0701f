"""Tool-use statistics of a batch of trajectories: the quantities the ReTool paper analyses.

`tool_metrics(trajectories)` -> dict of namespaced floats:

* `response/length_mean` — response tokens (sampled + interpreter), and `response/sampled_length_mean`;
* `response/interpreter_share` — share of all response tokens that the harness injected (interpreter
  output and its tags, the empty-code and tool-cap messages: mask 0), over the batch's tokens;
* `response/length_cap_ratio` — share that ran out of budget (`finish_reason == "length"`);
* `response/finish/<reason>` — share per finish reason (`answer`, `eos`, `length`, `tool_cap`);
* `tool/code_ratio` — share of responses with at least one code call (empty blocks count: code was written);
* `tool/calls_mean`, `tool/calls_max` — calls per response (calls over the cap are not counted);
* `tool/pass_rate` — share of executed calls whose status is `ok` (empty and capped blocks were not
  executed and are left out); NaN when nothing ran;
* `tool/first_call_pos` — where the first call happens: its token offset / response length, averaged
  over responses with a call (0 = at the start, 1 = at the end); NaN when none;
* `tool/self_correction` — among responses with a failed execution, the share where a later execution
  ran cleanly (ReTool's "code self-correction"); NaN when nothing failed;
* `tool/cap_hit_ratio` — share of responses that tried to call code after `max_tool_calls`;
* `tool/unclosed_ratio` — share that ran out of budget inside a code block;
* `purpose/<name>` for every name in `tirl.analysis.code_purpose.PURPOSES` — share of executed calls whose code
  `classify_code` puts under that purpose (ReTool's code-purpose analysis); NaN when nothing ran.

Pure functions: trajectories are `tirl.rollout.Trajectory` objects or their `to_dict()` form; no torch.
NaN marks "undefined for this batch" rather than a misleading 0.
"""

from __future__ import annotations

from typing import Any, Iterable

from tirl.analysis.code_purpose import PURPOSES, classify_code

NAN = float("nan")


def _get(obj: Any, name: str, default: Any = None) -> Any:
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def _calls(traj: Any) -> list[tuple[str, int]]:
    """(status, start offset) of each call that counts (not `capped`)."""
    out = []
    for c in _get(traj, "tool_calls", []) or []:
        status = _get(c, "status")
        if status != "capped":
            out.append((status, int(_get(c, "span")[0])))
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else NAN


def tool_metrics(trajectories: Iterable[Any]) -> dict[str, float]:
    """Batch statistics over B trajectories (see the module docstring); {} for an empty batch."""
    trajs = list(trajectories)
    if not trajs:
        return {}
    lengths = [len(_get(t, "response_ids", [])) for t in trajs]
    sampled = [sum(_get(t, "loss_mask", [])) for t in trajs]
    reasons = [_get(t, "finish_reason", "") for t in trajs]
    at_cap = [r == "length" for r in reasons]
    calls = [_calls(t) for t in trajs]
    executed = [[s for s, _ in cs if s != "empty"] for cs in calls]

    first_pos = [cs[0][1] / n for cs, n in zip(calls, lengths) if cs and n > 0]
    failed_then_fixed = []
    for ex in executed:
        first_fail = next((i for i, s in enumerate(ex) if s != "ok"), None)
        if first_fail is not None:
            failed_then_fixed.append(float("ok" in ex[first_fail + 1:]))
    n_exec = sum(len(ex) for ex in executed)

    m = {
        "response/length_mean": _mean([float(x) for x in lengths]),
        "response/sampled_length_mean": _mean([float(x) for x in sampled]),
        "response/interpreter_share": (sum(lengths) - sum(sampled)) / sum(lengths) if sum(lengths) else NAN,
        "response/length_cap_ratio": _mean([float(x) for x in at_cap]),
        "tool/code_ratio": _mean([float(bool(cs)) for cs in calls]),
        "tool/calls_mean": _mean([float(len(cs)) for cs in calls]),
        "tool/calls_max": float(max(len(cs) for cs in calls)),
        "tool/executed_calls": float(n_exec),
        "tool/pass_rate": sum(ex.count("ok") for ex in executed) / n_exec if n_exec else NAN,
        "tool/first_call_pos": _mean(first_pos),
        "tool/self_correction": _mean(failed_then_fixed),
        "tool/cap_hit_ratio": _mean([float(bool(_get(t, "tool_cap_hit", False))) for t in trajs]),
        "tool/unclosed_ratio": _mean([float(bool(_get(t, "unclosed_code", False))) for t in trajs]),
    }
    m.update(purpose_shares(trajs))
    for reason in sorted(set(reasons)):
        m[f"response/finish/{reason or 'unknown'}"] = reasons.count(reason) / len(trajs)
    return m


def purpose_shares(trajectories: Iterable[Any]) -> dict[str, float]:
    """`purpose/<name>` -> share of the executed calls (not `empty`, not `capped`) with that purpose."""
    labels = [classify_code(_get(c, "code", "") or "")
              for t in trajectories for c in _get(t, "tool_calls", []) or []
              if _get(c, "status") not in ("empty", "capped")]
    return {f"purpose/{p}": (labels.count(p) / len(labels) if labels else NAN) for p in PURPOSES}
