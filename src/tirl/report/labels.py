"""Readable names for the metric keys trainers and `tirl eval` write, and the report's curve panels.

`readable(key)` gives the name shown on the page (legends, tables); a key not listed reads as its words
("rollout/gen_time_s" -> "rollout: gen time s") so a new metric never shows up blank.
"""

from __future__ import annotations

LABELS = {
    "reward/accuracy": "training accuracy (sampled)",
    "reward/mean": "mean reward",
    "eval/accuracy": "held-out accuracy",
    "eval/loss": "held-out loss",
    "loss/sft": "SFT loss (training)",
    "loss/policy": "policy loss",
    "loss/value": "value loss (critic)",
    "kl/mean": "KL to the reference policy",
    "kl/observed": "KL observed by the adaptive controller",
    "kl/coef": "KL coefficient",
    "policy/approx_kl": "KL old → new policy (approx.)",
    "entropy/mean": "entropy per token",
    "policy/clipfrac": "clipped (all)",
    "policy/clipfrac_low": "clipped below (ratio < 1 − ε)",
    "policy/clipfrac_high": "clipped above (ratio > 1 + ε)",
    "policy/dual_clipfrac": "dual-clipped",
    "train/grad_norm": "model gradient norm (policy / SFT)",
    "critic/grad_norm": "critic gradient norm",
    "train/lr": "learning rate",
    "throughput/tokens_per_s": "tokens per second",
    "time/generation_s": "generation",
    "time/sandbox_s": "sandbox",
    "time/train_s": "update",
    "response/length_mean": "response length (tokens)",
    "tool/code_ratio": "share of responses with code",
    "tool/pass_rate": "code pass rate",
    "tool/calls_mean": "code calls per response",
    "tool/first_call_pos": "first code call position",
    "tool/self_correction": "self-correction rate",
    "no_answer_ratio": "no answer",
    "reward_mean": "mean reward",
    "wall_s": "wall time (s)",
    "train_traces": "SFT training traces",
    "eval_traces": "SFT held-out traces",
    "truncated": "traces cut at max_length",
}


def readable(key: str) -> str:
    if key in LABELS:
        return LABELS[key]
    for prefix, when in (("eval_start.", "start"), ("eval_end.", "end")):  # summary.json's held-out figures
        if key.startswith(prefix):
            return f"{readable(key[len(prefix):])} ({when})"
    if key.startswith("eval/"):  # the trainer's held-out versions of the rollout figures
        rest = key[len("eval/"):]
        for ns in ("tool/", "response/", "reward/", ""):
            if ns + rest in LABELS:
                return f"held-out {LABELS[ns + rest]}"
    head, _, tail = key.rpartition("/")
    words = tail.replace("_", " ")
    return f"{head.replace('_', ' ')}: {words}" if head else words


# Curve panels: (file stem, title, y label, y range, [(metric key, drawn as points)]). Runs are overlaid; a
# panel with more than one key draws one line per (run, key). A panel with no finite value is not drawn.
PANELS = [
    ("sft_loss", "SFT loss", "loss per token", None, [("loss/sft", False), ("eval/loss", True)]),
    ("policy_loss", "Policy loss", "loss", None, [("loss/policy", False)]),
    ("value_loss", "Value loss (PPO critic)", "loss", None, [("loss/value", False)]),
    ("kl", "KL divergence", "nats per token", None,
     [("kl/mean", False), ("kl/observed", False), ("policy/approx_kl", False)]),
    ("entropy", "Policy entropy", "nats per token", None, [("entropy/mean", False)]),
    ("clipfrac", "Clip fraction (tokens whose ratio was clipped)", "share of tokens", None,
     [("policy/clipfrac", False), ("policy/clipfrac_low", False), ("policy/clipfrac_high", False)]),
    ("grad_norm", "Gradient norm (before clipping)", "L2 norm", None,
     [("train/grad_norm", False), ("critic/grad_norm", False)]),
    ("lr", "Learning rate", "learning rate", None, [("train/lr", False)]),
    ("throughput", "Throughput", "tokens per second (whole step)", None, [("throughput/tokens_per_s", False)]),
    ("length", "Response length", "tokens (model + interpreter)", None, [("response/length_mean", False)]),
    ("code_ratio", "Share of responses with code", "share", (0.0, 1.0), [("tool/code_ratio", False)]),
    ("pass_rate", "Code pass rate (executed calls that ran cleanly)", "share", (0.0, 1.0),
     [("tool/pass_rate", False)]),
    ("calls", "Code calls per response", "calls", None, [("tool/calls_mean", False)]),
    ("first_call", "Position of the first code call", "0 = start, 1 = end of response", (0.0, 1.0),
     [("tool/first_call_pos", False)]),
    ("self_correction", "Self-correction (a failed call later fixed)", "share of responses with a failure",
     (0.0, 1.0), [("tool/self_correction", False)]),
]

# Columns of the evaluation table, after the benchmark's own avg@n / pass@k / maj@k.
EVAL_COLUMNS = ("no_answer_ratio", "response/length_mean", "tool/code_ratio", "tool/pass_rate", "tool/calls_mean")

# reward/* keys that describe the batch's rewards rather than being one reward function's value.
REWARD_STATISTICS = ("reward/mean", "reward/accuracy", "reward/std", "reward/frac_zero_std", "reward/no_answer_ratio")

# The time split of a step: (metric key, name); the rest of the step (grading, logging, ...) is "other".
TIME_PARTS = (("time/generation_s", "generation"), ("time/sandbox_s", "sandbox"), ("time/train_s", "update"))


def reward_panel(keys: set[str]) -> tuple | None:
    """The reward panel over the keys the runs log: the mean reward and every `reward/<name>` component
    (one per reward function); None when there is no reward at all."""
    components = sorted(k for k in keys if k.startswith("reward/") and k not in REWARD_STATISTICS)
    shown = [k for k in ("reward/mean", *components) if k in keys]
    if not shown:
        return None
    title = "Reward and its components" if components else "Reward"
    return ("reward", title, "reward per response", None, [(k, False) for k in shown])
