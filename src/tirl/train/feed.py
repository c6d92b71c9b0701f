"""How scored batches reach the learner and weights reach the producer: in turn (`SyncFeed`,
`trainer.max_staleness: 0`, the default) or overlapped (`AsyncFeed`, k >= 1).

`SyncFeed` plays step s when the learner asks for it, with the weights of update s - 1: today's loop.

`AsyncFeed` runs the producer in a thread, up to k steps ahead of the learner, through a bounded queue.
The producer plays with its own copy of the policy (the learner updates the other), refreshed from the
learner's weights before each batch: a batch for step s starts only once the learner has published
version s - 1 - k, so every sample is at most k updates old when trained on (the learner checks it
again, `tirl.train.staleness`). Memory: two copies of the policy's weights (no optimizer state for the
second); on a CPU that is the price of overlapping generation with the update.

The learner holds `learning()` while it changes the weights and publishes their version, so the
producer never copies half an update nor stamps weights with the wrong version; the held-out
evaluation holds `paused()`, so it never shares the sandbox and the grader with a batch being played.

Not covered (follow-ups): Ray rollout workers running ahead (`distributed.backend: ray`), the trainer
group (`distributed.trainer_workers` > 1), a bitwise reproducible asynchronous run (which weights a
batch starts from depends on timing, within the bound), and per-token versions (weights change only
between batches, never inside a response).
"""

from __future__ import annotations

import contextlib
import copy
import queue
import threading
import time
from typing import Any, Iterator

import torch

from tirl.train.producer import Producer, ScoredBatch


class SyncFeed:
    """Step s is played when the learner asks, with the weights of update s - 1."""

    def __init__(self, producer: Producer, backend: Any):
        self.producer, self.backend = producer, backend

    def next(self, step: int) -> ScoredBatch:
        return self.producer.produce(step)

    def learning(self) -> Any:
        return contextlib.nullcontext()

    def paused(self) -> Any:
        return contextlib.nullcontext()

    def publish(self, policy: Any, version: int) -> dict[str, float]:
        """The rollout backend now holds the weights of `version` (workers synced; locally just the number)."""
        return self.backend.sync_weights(policy, version=version)

    def close(self) -> None:
        """Nothing runs on its own."""


class AsyncFeed:
    """The producer in a thread, at most `max_staleness` updates ahead of the learner (see the module)."""

    def __init__(self, producer: Producer, policy: Any, copy_: Any, max_staleness: int, start: int, last: int):
        """`producer` plays on a backend whose generator holds `copy_`, the producer's own copy of `policy`."""
        self.producer, self.policy, self.copy, self.k = producer, policy, copy_, max_staleness
        self.version = start  # the learner's published version
        self.weights = threading.Lock()  # held while the learner changes `policy`, and while it is copied
        self.play = threading.Lock()  # held while a batch is played, and by the held-out evaluation
        self.published = threading.Condition()
        self.batches: queue.Queue = queue.Queue(maxsize=max(1, max_staleness))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(start + 1, last), name="tirl-producer", daemon=True)
        self.thread.start()

    def _run(self, first: int, last: int) -> None:
        try:
            for step in range(first, last + 1):
                if not self._wait_for_version(step - 1 - self.k):
                    return
                self._refresh()
                with self.play:
                    scored = self.producer.produce(step)
                if not self._put(scored):
                    return
        except BaseException as err:  # the learner re-raises it at its next batch
            self._put(err)

    def _wait_for_version(self, version: int) -> bool:
        with self.published:
            while self.version < version and not self.stop.is_set():
                self.published.wait(timeout=1.0)
        return not self.stop.is_set()

    def _refresh(self) -> None:
        """The producer's copy takes the learner's weights, stamped with their version."""
        with self.weights, torch.no_grad():
            for mine, theirs in zip(self.copy.state_dict().values(), self.policy.state_dict().values()):
                mine.copy_(theirs)
            self.producer.backend.sync_weights(self.copy, version=self.version)

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.batches.put(item, timeout=1.0)
                return True
            except queue.Full:
                continue
        return False

    def next(self, step: int) -> ScoredBatch:
        t0 = time.perf_counter()
        item = self.batches.get()
        if isinstance(item, BaseException):
            raise item
        if item.step != step:
            raise RuntimeError(f"the producer handed step {item.step}'s batch to the learner's step {step}")
        item.metrics["async/wait_s"] = time.perf_counter() - t0
        return item

    @contextlib.contextmanager
    def learning(self) -> Iterator[None]:
        with self.weights:
            yield

    def paused(self) -> Any:
        return self.play

    def publish(self, policy: Any, version: int) -> dict[str, float]:
        """Called inside `learning()`: the producer's next batch may start from these weights."""
        with self.published:
            self.version = version
            self.published.notify_all()
        return {}

    def close(self) -> None:
        self.stop.set()
        with self.published:
            self.published.notify_all()
        self.thread.join()


def open_feed(cfg: Any, producer: Producer, backend: Any, policy: Any, start: int) -> Any:
    """`SyncFeed` at `trainer.max_staleness: 0`; otherwise an `AsyncFeed` whose producer plays with its own
    copy of the policy on its own local backend (same sandbox and tokenizer)."""
    if cfg.trainer.max_staleness == 0:
        return SyncFeed(producer, backend)
    from tirl.distributed.local import LocalBackend
    from tirl.generation.hf import HFGenerator

    mine = copy.deepcopy(policy).eval()
    mine.requires_grad_(False)
    generator = HFGenerator(mine, producer.tokenizer, precision=cfg.trainer.precision)
    own = Producer(cfg, producer.stream, LocalBackend(generator, producer.tokenizer, producer.sandbox, producer.style),
                   generator, producer.tokenizer, producer.sandbox, producer.style, producer.reward_fn)
    return AsyncFeed(own, policy, mine, cfg.trainer.max_staleness, start, cfg.trainer.steps)
