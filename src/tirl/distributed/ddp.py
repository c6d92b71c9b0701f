"""Data parallelism for the trainer: W ranks of `torch.distributed` (gloo on CPU, NCCL on GPU).

Every rank holds the whole step batch (token ids and masks: small next to the model) and the same
model and optimizer state. Each mini-batch is cut into W contiguous slices of rows; rank r runs
forward/backward over slice r only, in its micro-batches, with the normaliser computed on the
*whole* mini-batch mask, so the per-rank losses are exact parts of the single-process loss. After
the mini-batch, one all-reduce sums the gradients (not a mean: the parts already carry the global
normaliser), then every rank clips and steps identically, so the ranks stay bit-equal.

Why not the `DistributedDataParallel` wrapper: it averages gradients at every backward (we
accumulate over micro-batches and need a sum), and it hangs when ranks run different numbers of
backward passes (uneven slices); one explicit all-reduce per optimizer step is the same traffic
as DDP with `no_sync` over the accumulation.

Rank 0 alone writes (checkpoints, metrics). Per-rank diagnostic metrics (clip fraction, entropy)
are rank 0's; the loss is summed over ranks.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist


class DataParallel:
    """One rank's handle on an initialised process group; pass it as `dp=` to the RL update."""

    def __init__(self, group: Any = None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)

    def rows(self, rows: Sequence[int]) -> list[int]:
        """This rank's contiguous slice of a mini-batch's rows (sizes differ by at most one)."""
        base, extra = divmod(len(rows), self.world)
        start = self.rank * base + min(self.rank, extra)
        return list(rows[start:start + base + (self.rank < extra)])

    def reduce_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the ranks, in one flat all-reduce."""
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:  # a rank with an empty slice still joins the collective
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    def sum(self, x: float) -> float:
        t = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return float(t[0])

    def broadcast_model(self, model: Any) -> None:
        """Give every rank rank 0's weights (call once, after loading)."""
        for t in model.state_dict().values():
            dist.broadcast(t, src=0, group=self.group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_group(rank: int, world: int, init_method: str, backend: str | None = None) -> DataParallel:
    """Join a process group (`gloo` unless CUDA is available) and return this rank's handle."""
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
    return DataParallel()
