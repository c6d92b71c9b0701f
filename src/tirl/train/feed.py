"""How scored batches reach the learner and weights reach the producer: in turn (`SyncFeed`,
`trainer.max_staleness: 0`, the default) or overlapped (`AsyncFeed`, k >= 1).

`SyncFeed` plays step s when the learner asks for it, with the weights of update s - 1: today's loop.

`AsyncFeed` runs the producer in a thread, up to k steps ahead of the learner, through a bounded queue.
The producer plays with its own copy of the policy (the learner updates the other), refreshed from the
learner's weights before each batch: a batch for step s starts only once the learner has published
version s - 1 - k, so every sample is at most k updates old when trained on (the learner checks it
again, `tirl.train.staleness`). The first k steps after the start (or a resume from step c: steps
c+1..c+k, the groups that were in flight when the checkpoint was written) play the start's weights
whatever the learner's pace, so a resume re-plays them deterministically: the same problems (the
checkpoint's data position is the last trained batch's), the same seeds, the checkpoint's weights. Memory: two copies of the policy's weights (no optimizer state for the
second); on a CPU that is the price of overlapping generation with the update. On Ray
(`distributed.backend: ray`) the rollout workers hold the producer's copies: before a batch they are
synced to the learner's latest version through the backend's own sync (versioned, hashed), so the
batches in the queue may hold up to k older versions while the workers play the newest.

The learner holds `learning()` while it changes the weights and publishes their version, so the
producer never copies half an update nor stamps weights with the wrong version (a producer whose
weights are within the bound does not wait for an update in progress: it plays on with them); the held-out
evaluation holds `paused()`, so it never shares the sandbox and the grader with a batch being played.

Not covered (follow-ups): the trainer group (`distributed.trainer_workers` > 1), a bitwise reproducible asynchronous run (which weights a
batch starts from depends on timing, within the bound), and partial rollouts on Ray (a worker takes
weights between shards only). With `rollout.partial` (local) a rollout takes the newest weights between
its turns too (`newest_weights`), so one response may hold several versions, each token its own.
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
        """Nothing samples during the update: the generator's decode-only state goes first (made again
        after it), so it does not sit under the update's memory peak."""
        release = getattr(self.producer.generator, "release_stale", None)
        if release is not None:
            release()
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

    def __init__(self, producer: Producer, policy: Any, copy_: Any, max_staleness: int, start: int, last: int,
                 partial: bool = False):
        """`producer` plays on a backend whose generator holds `copy_`, the producer's own copy of `policy`,
        or (`copy_` None) on rollout workers that hold their own copies, synced from `policy`. `partial`:
        the backend's rollouts take the newest weights between turns (`newest_weights`)."""
        self.producer, self.policy, self.copy, self.k = producer, policy, copy_, max_staleness
        if partial:
            producer.backend.weights = self.newest_weights
        self.version = start  # the learner's published version
        self.hold = start + max_staleness
        """Steps up to here play the weights of `start` (see `_run`)."""
        self.playing = start  # the step the producer is playing
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
                # The first k steps play the start's weights, whatever the learner's pace: after a resume
                # they are the groups that were in flight at the checkpoint, re-played deterministically.
                self.playing = step
                if step == first or step > self.hold:
                    self._refresh(step - 1 - self.k)
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

    def _refresh(self, oldest: int) -> None:
        """The producer's backend takes the learner's weights, stamped with their version: into the
        producer's copy (locally), or synced to the rollout workers (Ray; the learner's next update waits
        for the sync to read them). Nothing is copied when it holds that version already, and nothing
        waits for an update in progress when what it holds is version `oldest` or newer: the producer
        plays on, within the bound, while the learner updates."""
        backend = self.producer.backend
        if not self.weights.acquire(blocking=backend.version is None or backend.version < oldest):
            return
        try:
            if backend.version == self.version:
                return
            with torch.no_grad():
                if self.copy is not None:
                    for mine, theirs in zip(self.copy.state_dict().values(), self.policy.state_dict().values()):
                        mine.copy_(theirs)
                backend.sync_weights(self.policy if self.copy is None else self.copy, version=self.version)
        finally:
            self.weights.release()

    def newest_weights(self) -> int:
        """Partial rollouts' hook, called by the producer's rollout between turns: the newest published
        weights, unless the learner is changing them (then those held, already within the bound)."""
        backend = self.producer.backend
        if self.playing > self.hold:
            self._refresh(oldest=backend.version)
        return backend.version

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
    """`SyncFeed` at `trainer.max_staleness: 0`; otherwise an `AsyncFeed` whose producer plays on the Ray
    workers (`distributed.backend: ray`, their weights synced from the learner's before a batch), or with
    its own copy of the policy on its own local backend (same sandbox and tokenizer)."""
    if cfg.trainer.max_staleness == 0:
        return SyncFeed(producer, backend)
    if backend.name != "local":
        return AsyncFeed(producer, policy, None, cfg.trainer.max_staleness, start, cfg.trainer.steps)
    from tirl.distributed.local import LocalBackend
    from tirl.generation.hf import HFGenerator

    mine = copy.deepcopy(policy).eval()
    mine.requires_grad_(False)
    generator = HFGenerator(mine, producer.tokenizer, precision=cfg.trainer.precision)
    own = Producer(cfg, producer.stream, LocalBackend(generator, producer.tokenizer, producer.sandbox, producer.style),
                   generator, producer.tokenizer, producer.sandbox, producer.style, producer.reward_fn)
    return AsyncFeed(own, policy, mine, cfg.trainer.max_staleness, start, cfg.trainer.steps, cfg.rollout.partial)
