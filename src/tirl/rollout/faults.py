"""Infrastructure faults in a rollout: whose failure it is, retries, the step deadline, when to give up.

A sandbox call that fails because of the infrastructure (`ExecResult.infra_failed`: the sandbox, its
server or the transport failed, not the program) says nothing about the model. Fed back as interpreter
output it would be graded as the model's failure (and penalised by `algorithm.exec_penalty`), and a
model fed error after error writes on for thousands of tokens. So:

- Retries (`ExecGuard.run`): the calls of a batch that came back infra-failed are run again, up to
  `rollout.exec_retries` times, after `tirl.http_client.backoff_delay` waits (the HTTP clients' one
  schedule). The HTTP sandbox client already retries transport errors and 5xx inside each run; these
  re-runs cover what it cannot see (a `sandbox_error` the server answered, a local zygote that died) and
  what it gave up on. While no call of the rollout runs at all, a failed call keeps being retried until
  `rollout.exec_retry_deadline_s`; if nothing ran by then the sandbox is down: `InfraDown`, a
  `UserError`, so the command ends with exit 2 and one line naming the sandbox and its last error.
  Random faults (other calls run meanwhile) never end a run; a sandbox that stays down always does,
  within the deadline plus one call.
- The step deadline (`rollout.step_timeout_s`, 0 = none): no sandbox call waits past it. Each call
  then runs on its own daemon thread; one still running at the deadline is abandoned (left to finish
  on its own; its result is dropped) and answered `sandbox_error`.
- A call that still fails after its retries ends its trajectory (`mark_infra`: finish reason `infra`,
  `Trajectory.infra_failed`, the message in `infra_error`): its sample is void, so the model is not
  made to write on after an error that is not its own. The same for a generation output the backend
  could not produce (`FINISH_ERROR`).
- The learner (`trainable`) leaves infra-failed samples out of their group's statistics and of the
  loss, and drops a group left with fewer valid samples than the algorithm needs; a step left with no
  valid sample at all is `InfraDown` too (a sandbox that hangs on every call, cut at each deadline,
  would otherwise spin without training). `check_weight_versions` refuses trajectories sampled with
  other weights than the learner expects.

Not covered: a hung generation (a server's own request timeout bounds it), cancelling the work of an
abandoned sandbox call on the server (its HTTP deadline ends it), and sessions (a program can garble its
session's status reply and so cause a `sandbox_error` itself; rollouts use one-shot calls).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable, Sequence

from tirl.config import UserError
from tirl.rollout.trajectory import Trajectory
from tirl.sandbox.config import INFRA_STATUSES, ExecResult

INFRA_FINISH = "infra"
"""`Trajectory.finish_reason` of a sample the infrastructure ended."""


class InfraDown(UserError):
    """The sandbox or a server stayed down (or every sample of a step failed in it): the message names it."""


class StaleRollout(UserError):
    """Trajectories sampled with another weight version than the learner expects."""


def _infra(res: Any) -> bool:
    return res.status in INFRA_STATUSES


def failure_message(res: Any) -> str:
    """The first line of what a failed result says (its message, else its stderr)."""
    text = (getattr(res, "message", "") or res.stderr or res.status).strip()
    return text.splitlines()[0] if text else res.status


def mark_infra(t: Trajectory, error: str) -> None:
    """End `t` as the infrastructure's failure (its sample is void: never graded, trained on or scored)."""
    t.infra_failed, t.infra_error, t.finish_reason = True, error, INFRA_FINISH


class ExecGuard:
    """Runs one rollout's sandbox calls with retries, the step deadline and the down check (see the
    module docstring). `run(codes)` is one attempt: results in order, a failure of the sandbox itself as
    `sandbox_error` results, never an exception; `where` names the sandbox (its URL) in `InfraDown`.
    Safe to call from several threads (the continuous loop's sandbox threads)."""

    def __init__(self, run: Callable[[list[str]], list[Any]], cfg: Any, where: str | None = None):
        self.attempt_run, self.cfg, self.where = run, cfg, where
        self.step_deadline = time.monotonic() + cfg.step_timeout_s if cfg.step_timeout_s > 0 else math.inf
        self.last_ran = -math.inf
        """When a call last came back with the program's own result (anything but an infra failure)."""
        self.retries = 0
        """Calls run again after an infrastructure failure (`rollout/exec_retries`)."""
        self._lock = threading.Lock()

    def run(self, codes: list[str]) -> list[Any]:
        """Results of `codes` in order; infra failures retried; raises `InfraDown` (see the module docstring)."""
        t0 = time.monotonic()
        call_deadline = t0 + self.cfg.exec_retry_deadline_s
        deadline = min(call_deadline, self.step_deadline)
        results = self._attempt(codes)
        attempt = 0
        while True:
            failed = [i for i, r in enumerate(results) if _infra(r)]
            if len(failed) < len(results):
                with self._lock:
                    self.last_ran = time.monotonic()
            if not failed:
                return results
            from tirl.http_client import backoff_delay  # (it imports aiohttp: only once a call failed)

            idle = self.last_ran < t0  # nothing at all has run since this batch was sent
            attempt += 1
            delay = backoff_delay(attempt, self.cfg.exec_retry_backoff_s)
            if (attempt > self.cfg.exec_retries and not idle) or time.monotonic() + delay >= deadline:
                break
            time.sleep(delay)
            with self._lock:
                self.retries += len(failed)
            for i, r in zip(failed, self._attempt([codes[i] for i in failed])):
                results[i] = r
        if idle and call_deadline <= self.step_deadline:
            where = f" at {self.where}" if self.where else ""
            raise InfraDown(f"the sandbox{where} is down: no call ran for "
                            f"{time.monotonic() - t0:.1f} s ({attempt} attempts, rollout.exec_retry_deadline_s="
                            f"{self.cfg.exec_retry_deadline_s:g}); last error: {failure_message(results[failed[-1]])}")
        return results

    def _attempt(self, codes: list[str]) -> list[Any]:
        if math.isinf(self.step_deadline):
            return self.attempt_run(codes)
        return self._attempt_by(codes, self.step_deadline)

    def _attempt_by(self, codes: list[str], deadline: float) -> list[Any]:
        """Each call on its own daemon thread; a call not back by `deadline` is abandoned."""
        boxes: list[list[Any]] = [[] for _ in codes]
        threads = []
        for code, box in zip(codes, boxes):
            if time.monotonic() >= deadline:
                break

            def call(code: str = code, box: list[Any] = box) -> None:
                box.extend(self.attempt_run([code]))

            th = threading.Thread(target=call, name="tirl-sandbox-call", daemon=True)
            th.start()
            threads.append(th)
        for th in threads:
            th.join(max(0.0, deadline - time.monotonic()))
        cut = (f"Error: the call was cancelled at the rollout's deadline "
               f"(rollout.step_timeout_s={self.cfg.step_timeout_s:g})")
        return [box[0] if box else ExecResult("sandbox_error", stderr=cut, message=cut) for box in boxes]


def trainable(trajs: Sequence[Trajectory], group_size: int, min_valid: int = 2) -> tuple[list[bool], dict[str, float]]:
    """Which samples the learner may train on, and the counts it logs.

    A sample is valid unless `infra_failed`; a group of `group_size` consecutive samples (prompt-major,
    as `rollout` orders them) left with fewer than `min_valid` valid samples is dropped whole (GRPO and
    RLOO need two to compare; PPO, 1). Metrics: `rollout/infra_failed` (samples) and
    `rollout/infra_dropped_groups`. Raises `InfraDown` when no sample is valid and some failed.
    """
    valid = [not t.infra_failed for t in trajs]
    dropped = 0
    for start in range(0, len(valid), group_size):
        if sum(valid[start:start + group_size]) < min_valid:
            dropped += 1
            valid[start:start + group_size] = [False] * len(valid[start:start + group_size])
    failed = [t for t in trajs if t.infra_failed]
    if failed and not any(not t.infra_failed for t in trajs):
        raise InfraDown(f"every sample of the step ({len(failed)}) failed in the sandbox or server; "
                        f"last error: {failed[-1].infra_error}")
    return valid, {"rollout/infra_failed": float(len(failed)), "rollout/infra_dropped_groups": float(dropped)}


def check_weight_versions(trajs: Sequence[Trajectory], expected: int) -> None:
    """Refuse (`StaleRollout`) trajectories sampled with other weights than version `expected`."""
    wrong = sorted({t.weight_version for t in trajs if t.weight_version != expected}, key=str)
    if wrong:
        raise StaleRollout(f"the step's rollouts were sampled with weights version {', '.join(map(str, wrong))}, "
                           f"the learner expected version {expected}: a weight sync did not reach the rollout")
