"""Tool-use statistics on hand-built trajectories (expected values worked out in the comments)."""

from __future__ import annotations

import math

from tirl.analysis.tool_stats import tool_metrics
from tirl.rollout import ToolCall, Trajectory


def traj(length, calls=(), finish="answer", cap=False):
    """A trajectory of `length` tokens whose calls are (status, start offset)."""
    return Trajectory(prompt_ids=[0], response_ids=[1] * length, loss_mask=[1] * length, logprobs=[0.0] * length,
                      tool_calls=[ToolCall("c", s, "", 0.0, (p, p + 2)) for s, p in calls],
                      finish_reason=finish, tool_cap_hit=cap)


def test_paper_statistics():
    batch = [
        traj(100, [("error", 20), ("ok", 50)]),             # fails, then fixed: self-correction
        traj(50, [("ok", 10)]),
        traj(200, [("timeout", 100), ("error", 150)], finish="length"),  # fails, never fixed
        traj(40),                                           # no code
        traj(80, [("empty", 40), ("ok", 60), ("capped", 70)], cap=True),
    ]
    m = tool_metrics(batch)
    assert m["response/length_mean"] == (100 + 50 + 200 + 40 + 80) / 5
    assert m["tool/code_ratio"] == 4 / 5
    assert m["tool/calls_mean"] == (2 + 1 + 2 + 0 + 2) / 5  # capped calls do not count
    assert m["tool/calls_max"] == 2
    assert m["tool/executed_calls"] == 6  # the empty block was not executed
    assert m["tool/pass_rate"] == 3 / 6   # ok: one in each of rows 1, 2 and 5
    # First call offsets / lengths: 20/100, 10/50, 100/200, 40/80.
    assert math.isclose(m["tool/first_call_pos"], (0.2 + 0.2 + 0.5 + 0.5) / 4)
    assert m["tool/self_correction"] == 1 / 2  # rows 1 and 3 failed; row 1 recovered
    assert m["tool/cap_hit_ratio"] == 1 / 5
    assert m["response/length_cap_ratio"] == 1 / 5
    assert m["response/finish/answer"] == 4 / 5 and m["response/finish/length"] == 1 / 5


def test_undefined_statistics_are_nan_and_dicts_work():
    m = tool_metrics([traj(10).to_dict(), traj(20).to_dict()])
    assert m["tool/code_ratio"] == 0.0 and m["tool/calls_mean"] == 0.0
    assert all(math.isnan(m[k]) for k in ("tool/pass_rate", "tool/first_call_pos", "tool/self_correction"))
    assert tool_metrics([]) == {}


def test_interpreter_tokens_count_in_length_not_in_sampled_length():
    t = traj(10, [("ok", 4)])
    t.loss_mask[4:6] = [0, 0]
    m = tool_metrics([t])
    assert m["response/length_mean"] == 10 and m["response/sampled_length_mean"] == 8
    m = tool_metrics([t, traj(30)])
    assert m["response/interpreter_share"] == 2 / 40  # token-weighted over the batch, not a mean of ratios
