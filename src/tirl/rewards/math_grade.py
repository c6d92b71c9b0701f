"""Grading a finished response against a reference answer: +1 correct, -1 otherwise (ReTool).

The final answer is the last `\\boxed{}` (inside `<answer>` when present, see
`tirl.formats.extract_boxed`). No box means incorrect, as in verl's and ToRL's rewards; `lenient=True`
(evaluation only) falls back to the last number in the text and says so in the `Grade`.

Two answers equal after normalisation (whitespace, `$`, `\\text{}`, a final period) are correct without
further work, and two plain integer literals (`-?[0-9]+`, AIME's and the built-in tasks' answers) are
compared as integers: math-verify could only agree (tested), and skipping it saves a round trip to a
grading process per response (about 2 ms each, most of a small model's grading time). A reference that
is one number (GSM8K, SVAMP) is compared by value with an answer that states one number
(`stated_number`: a currency sign, thousands separators, trailing zeros, `%` and unit words after a
space are read past, so `$1,234.00`, `1,234` and `18 dollars` are 1234, 1234 and 18); equal values are
correct without math-verify, which math-verify misses for `18 dollars`; unequal ones still go to it
(`50\\%` against `0.5`). Other
equivalence is decided by math-verify (gold first, then prediction; both wrapped in `$...$` because a
gold string without delimiters may parse to nothing). Its own timeouts use `signal.alarm`, which
raises off the main thread (Math-Verify#50/#55), so they are switched off and the bound is ours:
each comparison runs in a small pool of worker processes, and one that exceeds `timeout_s` (a power
tower, a pathological nesting) is killed, replaced, and graded incorrect. This is safe from any
thread and any worker process. Where no process can be started, comparisons run in a daemon thread
with the same timeout; a stuck comparison is then abandoned rather than killed.

Options: `exec_penalty` subtracts a constant when the response's code never ran successfully (ToRL's
-0.5 variant; the caller says whether code ran, since only the rollout knows).
Not covered: answers that need the problem text to judge (multiple-choice letters mapped to values).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import select
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from tirl.formats import TagStyle, extract_answer, extract_boxed, extract_last_number

CORRECT, INCORRECT = 1.0, -1.0
INFRA_FAILED = "infra_failed"
"""`Grade.reason` of a sample the infrastructure failed (`tirl.rollout.faults`): not graded, score 0."""
DEFAULT_TIMEOUT_S = 5.0
WORKER_START_TIMEOUT_S = 120.0
# A longer answer is not a final answer but a dump; refusing it keeps sympy out of trouble.
MAX_ANSWER_CHARS = 1000
_INTEGER = re.compile(r"-?[0-9]+")


@dataclass
class Grade:
    """What was extracted, how it was judged, and the resulting score."""

    score: float
    correct: bool
    extracted: str | None
    reference: str
    reason: str
    """One of: match, exact, mismatch, no_answer, lenient_match, too_long, timeout, error, infra_failed
    (not graded: the infrastructure failed the sample). Integer answers compared as integers are `exact`
    or `mismatch`."""
    rewards: dict[str, float | None] | None = None
    """Each reward function's value by name (`tirl.rewards.Rewards`), before weighting; None = the grade
    alone made the score. A batched function's None is a sample it does not apply to."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["rewards"] is None:  # the record of a run without reward functions is what it always was
            del d["rewards"]
        return d


def _normalise(s: str) -> str:
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\[,;!: ]|\s+", "", s)
    s = re.sub(r"^\\text\{(.*)\}$", r"\1", s)
    return s.rstrip(".")


_STATED = re.compile(r"(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|-?\.\d+)((?:\s+[A-Za-z]{2,}\.?)*)\s*%?")
_TEXT_CMD = re.compile(r"\\(?:text|textrm|mathrm|mbox)\s*\{([^{}]*)\}")


def stated_number(answer: str) -> Decimal | None:
    """The value of an answer that states one number and nothing else but a currency sign before it and
    unit words (two letters or more, after a space) or `%` after it; None otherwise (`5i`, `x = 5`,
    `1/2`, `5 or 6` go to math-verify)."""
    s = _TEXT_CMD.sub(r" \1", answer).replace("{,}", ",").replace("\\%", "%").replace("\\$", "$")
    s = s.strip().rstrip(".").strip().lstrip("$").strip()
    m = _STATED.fullmatch(s)
    if m is None:
        return None
    try:
        return Decimal(m.group(1).replace(",", ""))
    except InvalidOperation:
        return None


def _wrap(s: str) -> str:
    s = s.replace("\\$", "")  # a currency sign, not math delimiters
    return s if "$" in s else f"${s}$"


def _verify(reference: str, answer: str) -> bool:
    """math-verify with its alarm-based timeouts off (bounded by the caller)."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    from math_verify import parse, verify

    gold = parse(_wrap(reference), parsing_timeout=None)
    if not gold:
        gold = parse(reference, parsing_timeout=None)
    pred = parse(_wrap(answer), parsing_timeout=None)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=None))


# --- bounded execution ---------------------------------------------------------------------------
def _worker_main() -> None:
    """A grading process's loop (`_Worker` starts it): "ready" once warm, then one JSON request a line in, one JSON
    verdict a line out."""
    _verify("1/2", "0.5")  # imports math-verify, sympy and its parsers: seconds that are not a comparison's
    sys.stdout.write(json.dumps("ready") + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        reference, answer = json.loads(line)
        try:
            reply: list[Any] = ["ok", _verify(reference, answer)]
        except Exception as e:  # a parse failure is an incorrect answer, not a crash
            reply = ["error", repr(e)[:200]]
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


class _Worker:
    # A plain subprocess rather than multiprocessing: "spawn" re-imports the caller's __main__,
    # which breaks user scripts without an `if __name__ == "__main__"` guard.
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            # `-c`, not `-m`: the package's __init__ imports this module, and runpy warns of a double import
            [sys.executable, "-c", "from tirl.rewards.math_grade import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        # The start (an interpreter, math-verify's imports) is waited for here, not charged to the first
        # comparison's `timeout_s`: on a loaded machine it takes longer than the timeout, and every
        # fresh worker's first answer was graded a timeout (6 of 3,126 rule-converted MAWPS traces).
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], WORKER_START_TIMEOUT_S)
        if not ready or json.loads(self.proc.stdout.readline() or "null") != "ready":
            self.kill()
            raise OSError(f"a grading process did not start within {WORKER_START_TIMEOUT_S:.0f} s")

    def ask(self, reference: str, answer: str, timeout_s: float) -> tuple[str, Any] | None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps([reference, answer]) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        if not line:
            return None
        status, value = json.loads(line)
        return status, value

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout):
            if f:
                f.close()


class _Pool:
    """Up to `size` grading processes, started lazily; a timed-out one is killed and replaced."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self.started = 0
        self.lock = threading.Lock()

    def _acquire(self) -> _Worker:
        while True:
            with self.lock:
                try:
                    return self.idle.get_nowait()
                except queue.Empty:
                    grow = self.started < self.size
                    if grow:
                        self.started += 1
            if grow:
                try:
                    return _Worker()
                except BaseException:
                    with self.lock:
                        self.started -= 1
                    raise
            try:  # short waits: a killed worker frees a slot without returning to `idle`
                return self.idle.get(timeout=0.05)
            except queue.Empty:
                continue

    def verify(self, reference: str, answer: str, timeout_s: float) -> tuple[str, Any]:
        w = self._acquire()
        try:
            result = w.ask(reference, answer, timeout_s)
        except (OSError, ValueError):
            result = None
        if result is not None:
            self.idle.put(w)
            return result
        w.kill()  # stuck or dead: never reused
        with self.lock:
            self.started -= 1
        return ("timeout", None)

    def close(self) -> None:
        while not self.idle.empty():
            self.idle.get().kill()
        self.started = 0


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _in_thread(reference: str, answer: str, timeout_s: float) -> tuple[str, Any]:
    box: list[tuple[str, Any]] = []

    def target() -> None:
        try:
            box.append(("ok", _verify(reference, answer)))
        except Exception as e:
            box.append(("error", repr(e)[:200]))

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout_s)
    return box[0] if box else ("timeout", None)


def _bounded_verify(reference: str, answer: str, timeout_s: float) -> tuple[str, Any]:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = _Pool(size=max(1, min(4, os.cpu_count() or 1)))
    try:
        return _pool.verify(reference, answer, timeout_s)
    except OSError:  # no processes can be started here (limits, seccomp): bounded thread instead
        return _in_thread(reference, answer, timeout_s)


def shutdown() -> None:
    """Stop the grading processes (they are daemons and also die with the interpreter)."""
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.close()
            _pool = None


# --- public API ----------------------------------------------------------------------------------
def grade_detailed(
    response: str,
    reference: str,
    *,
    lenient: bool = False,
    code_ran: bool | None = None,
    exec_penalty: float = 0.0,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    style: TagStyle | None = None,
) -> Grade:
    """Grade `response` against `reference`; see the module docstring for the rules.

    `code_ran`: False when the response holds code that did not execute cleanly (then
    `exec_penalty` is subtracted, right or wrong, as ToRL's variant); None or True leaves the score
    alone. `style`: its answer rule (`formats.extract_answer`; ReTool's requires `<answer>`);
    None = the last `\\boxed{}` anywhere.
    """
    reference = str(reference)
    answer = extract_answer(response, style) if style is not None else extract_boxed(response)
    reason_prefix = ""
    if answer is None and lenient:
        answer = extract_last_number(response)
        reason_prefix = "lenient_"
    penalty = exec_penalty if code_ran is False else 0.0

    def result(correct: bool, reason: str) -> Grade:
        score = (CORRECT if correct else INCORRECT) - penalty
        return Grade(score, correct, answer, reference, reason)

    if answer is None or not answer.strip():
        return result(False, "no_answer")
    if len(answer) > MAX_ANSWER_CHARS:
        return result(False, "too_long")
    norm_answer, norm_reference = _normalise(answer), _normalise(reference)
    if norm_answer == norm_reference:
        return result(True, "lenient_match" if reason_prefix else "exact")
    if _INTEGER.fullmatch(norm_answer) and _INTEGER.fullmatch(norm_reference):
        same = int(norm_answer) == int(norm_reference)
        return result(same, ("lenient_match" if reason_prefix else "exact") if same else "mismatch")
    ref_value = stated_number(reference)
    if ref_value is not None and stated_number(answer) == ref_value:
        return result(True, "lenient_match" if reason_prefix else "match")
    status, value = _bounded_verify(reference, answer, timeout_s)
    if status == "timeout":
        return result(False, "timeout")
    if status == "error":
        return result(False, "error")
    return result(bool(value), ("lenient_match" if reason_prefix else "match") if value else "mismatch")


def grade(response: str, reference: str, **kwargs: Any) -> float:
    """+1.0 for a correct final answer, -1.0 otherwise (minus `exec_penalty` when asked)."""
    return grade_detailed(response, reference, **kwargs).score
