"""Continuous batching for `rollout` (`RolloutConfig.continuous`): decoding goes on while code runs.

The turn-synchronous loop (`loop._play_turns`) waits, each turn, for the slowest row to stop and then
for the slowest program to finish, and no row decodes while the sandbox runs. Here one running decode
batch (`generator.decode_batch`, `tirl.generation.decode_batch`) is stepped one token at a time:
- a row that stops leaves the batch at once; if it closed a code block, its code is sent to the
  sandbox right away, on a worker thread (the code closed on the same step goes in one `run_batch`);
- each step, the calls that have returned are collected without blocking; their output is injected
  exactly as in the turn loop (same caps, budget and fault rules, `loop._Play`), and the trajectory
  rejoins the batch (its cached keys/values are reused as between turns);
- when no row is decoding but code is running, the loop blocks on the first call to return.

Both sandboxes are safe to call from several threads at once (`Sandbox` and `HttpSandbox` submit each
call to their own event loop). Sampling uses one seeded generator for the whole rollout, but which rows
share a step depends on sandbox timing, so sampled tokens are not reproducible for a fixed seed.
Metrics: `rollout/gen_time_s` is the time spent adding and stepping rows, `rollout/exec_time_s` the
wall time during which at least one sandbox call was in flight; the two now overlap, and their sum
may exceed the rollout's wall time.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

MAX_SANDBOX_THREADS = 32
"""Sandbox calls in flight at once (each is one `run_batch`); more wait for a free thread."""


def _timed(play: Any, codes: list[str]) -> tuple[list, float, float]:
    t0 = time.perf_counter()
    results = play.run_codes(codes)  # a failing sandbox gives error results; only a dead one raises (InfraDown)
    return results, t0, time.perf_counter()


def _union_length(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def play_continuous(play: Any, generator: Any, live: list) -> tuple[float, float]:
    """Play `live` trajectories to the end with `play` (a `loop._Play`). Returns (generation seconds,
    seconds with a sandbox call in flight)."""
    batch = generator.decode_batch(play.params(play.cfg.seed))
    room = getattr(generator, "max_batch_size", None) or len(live) or 1
    waiting = list(live)  # trajectories to (re)join the batch, in order
    rows: dict[int, Any] = {}  # batch row id -> trajectory
    calls: dict[Future, list[tuple[Any, str]]] = {}  # sandbox call -> its (trajectory, code) pairs
    spans: list[tuple[float, float]] = []
    gen_time = 0.0

    def collect(futures: Any) -> None:
        for fut in futures:
            results, t0, t1 = fut.result()
            spans.append((t0, t1))
            for (t, code), res in zip(calls.pop(fut), results):
                play.answer(t, code, res)
                if t.finish_reason:  # the output reached the budget
                    generator.release([play.key(t)])
                else:
                    waiting.append(t)

    with ThreadPoolExecutor(max_workers=max(1, min(MAX_SANDBOX_THREADS, len(live)))) as pool:
        while waiting or rows or calls:
            collect([f for f in list(calls) if f.done()])
            if waiting and len(rows) < room:
                join, waiting[:] = waiting[: room - len(rows)], waiting[room - len(rows):]
                t0 = time.perf_counter()
                rows.update(zip(batch.add([play.request(t) for t in join]), join))
                gen_time += time.perf_counter() - t0
            if rows:
                t0 = time.perf_counter()
                finished = batch.step()
                gen_time += time.perf_counter() - t0
                pending: list[tuple[Any, str]] = []
                for rid, out in finished:
                    t = rows.pop(rid)
                    play.absorb(t, out, pending)
                    if t.finish_reason:
                        generator.release([play.key(t)])
                    elif not any(p is t for p, _ in pending):  # answered at once (empty block, cap) or plain text
                        waiting.append(t)
                if pending:
                    calls[pool.submit(_timed, play, [code for _, code in pending])] = pending
            elif calls:
                done, _ = wait(list(calls), return_when=FIRST_COMPLETED)
                collect(done)
    return gen_time, _union_length(spans)
