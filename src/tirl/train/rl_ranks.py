"""Data-parallel trainer ranks for `tirl train` (`distributed.trainer_workers: W` > 1), on one machine.

Rank 0 is the training process itself: it plays rollouts, scores, logs, evaluates and checkpoints.
Ranks 1..W-1 are spawned helper processes that hold a mirror of the policy and its optimizer (loaded
from the same files by the same function, with the same optimizer state when resuming) and take part
in each policy update only: rank 0 broadcasts the step's batch, every rank trains on its slice of
each mini-batch with the global normaliser and the gradients are summed (`tirl.distributed.ddp`).
After every update all ranks hash their weights and rank 0 refuses to go on if any differs.

Simplifications: one machine (a TCP rendezvous on loopback; several nodes would use torchrun's
environment); the policy only (PPO's critic is refused with trainer_workers > 1); scoring of old and
reference log-probs stays on rank 0.
"""

from __future__ import annotations

import socket
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tirl.train.batch import RLBatch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrainerGroup:
    """Rank 0's handle: `policy_update(...)` runs one data-parallel update on every rank."""

    def __init__(self, world: int, cfg: Any, policy_path: str, ckpt: str | None, total_updates: int,
                 load_policy: Any):
        """`load_policy(path, cfg)` is the function rank 0 loaded its policy with (a module-level
        function: it is pickled by name into the helpers, so they load exactly the same way)."""
        from tirl.distributed.ddp import init_group

        init = f"tcp://127.0.0.1:{_free_port()}"
        ctx = mp.get_context("spawn")
        self.procs = [ctx.Process(target=_helper, args=(r, world, init, cfg, policy_path, ckpt, total_updates, load_policy),
                                  name=f"tirl-trainer-rank{r}", daemon=True) for r in range(1, world)]
        for p in self.procs:
            p.start()
        self.dp = init_group(0, world, init)
        self.world = world

    def policy_update(self, policy: Any, opt: Any, sched: Any, batch: RLBatch, rows: list[int], algo: Any,
                      shuffle_seed: int, **loop: Any) -> dict[str, float]:
        dist.broadcast_object_list([("update", batch, rows, algo, shuffle_seed, loop)], src=0)
        metrics = _update(policy, opt, sched, batch, rows, algo, shuffle_seed, loop, self.dp)
        _check_equal(policy, self.dp)
        return metrics

    def close(self) -> None:
        if dist.is_initialized():
            dist.broadcast_object_list([("stop",)], src=0)
            dist.destroy_process_group()
        for p in self.procs:
            p.join(60)
            if p.is_alive():
                p.kill()
                p.join()


def _update(policy, opt, sched, batch, rows, algo, shuffle_seed, loop, dp) -> dict[str, float]:
    from tirl.train import rl_update as U

    return U.policy_update(policy, opt, sched, batch, rows, algo, generator=torch.Generator().manual_seed(shuffle_seed),
                           dp=dp, **loop)


def _check_equal(policy: Any, dp: Any) -> None:
    from tirl.distributed.weights import model_hash

    hashes: list[Any] = [None] * dp.world
    dist.all_gather_object(hashes, model_hash(policy))
    if len(set(hashes)) != 1:
        raise RuntimeError(f"trainer ranks hold different weights after the update: {hashes}")


def _helper(rank: int, world: int, init: str, cfg: Any, policy_path: str, ckpt: str | None, total_updates: int,
            load_policy: Any) -> None:
    from pathlib import Path

    from tirl.distributed.ddp import init_group
    from tirl.train.checkpoint import load_state
    from tirl.train.common import build_optimizer, set_threads

    set_threads(cfg.trainer.threads)
    torch.manual_seed(cfg.trainer.seed)
    policy = load_policy(policy_path, cfg)
    opt, sched = build_optimizer(policy.parameters(), cfg.trainer.optim, total_updates)
    if ckpt is not None:
        state = load_state(Path(ckpt))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    policy.eval()
    dp = init_group(rank, world, init)
    while True:
        msg: list[Any] = [None]
        dist.broadcast_object_list(msg, src=0)
        if msg[0][0] == "stop":
            break
        _, batch, rows, algo, shuffle_seed, loop = msg[0]  # this step's settings (an adaptive KL moves)
        _update(policy, opt, sched, batch, rows, algo, shuffle_seed, loop, dp)
        _check_equal(policy, dp)
    dist.destroy_process_group()
