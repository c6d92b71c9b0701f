"""Pieces the SFT and RL loops share: threads, optimizer and schedule, problem streams, progress.

The data position is one integer (problems consumed so far); the order of each epoch is a
permutation seeded by (seed, epoch), so a resumed run draws exactly the problems the uninterrupted
run would have drawn.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch


def set_threads(threads: int) -> int:
    """Torch intra-op threads; 0 = leave torch's default. Returns what is in force.

    On a loaded 2-core machine 2 threads have run small ops 10-100x slower than 1; tiny models
    want 1, real models on a free machine want all cores.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def check_device_and_precision(device: str, precision: str) -> None:
    """Refuse `trainer.device` / `trainer.precision` values that cannot work, before any model loads."""
    from tirl.models import check_device_and_precision as check

    check(device, precision, where="trainer.")


@dataclass
class OptimConfig:
    lr: float = 1e-6
    """Peak learning rate (ReTool and ToRL: 1e-6 for 1.5-32B models; tiny models want ~1e-4)."""
    warmup_steps: int = 0
    """Linear warm-up from 0: a fresh Adam at full lr can wreck a policy in two steps."""
    schedule: str = "constant"
    """`constant` (after warm-up) or `cosine` (to 0 at the last step)."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW's moment decay rates (beta1, beta2)."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip; 0 disables it."""


    def validate(self, where: str = "optim") -> None:
        """Refuse values that cannot train, before anything is written."""
        if self.lr < 0:
            raise ValueError(f"{where}.lr must be >= 0, got {self.lr}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"{where}.schedule must be 'constant' or 'cosine', not {self.schedule!r}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError(f"{where}.warmup_steps, weight_decay and max_grad_norm must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"{where}.betas must be two numbers in [0, 1), got {self.betas}")


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based).

    Warm-up ramps (step + 1) / (warmup + 1), so the first step already learns (the common
    step / warmup form spends it at lr 0); cosine then decays to 0 at `total`.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def build_optimizer(params: Any, cfg: OptimConfig, total_steps: int) -> tuple[Any, Any]:
    if cfg.schedule not in ("constant", "cosine"):
        raise ValueError(f"optim.schedule must be 'constant' or 'cosine', not {cfg.schedule!r}")
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.warmup_steps, total_steps, cfg.schedule))
    return opt, sched


def grad_scaler(precision: str, device: Any) -> Any:
    """fp16 needs loss scaling (small gradients underflow in half precision); bf16 and fp32 do not."""
    return torch.amp.GradScaler(torch.device(device).type) if precision == "fp16" else None


def backward(loss: torch.Tensor, scaler: Any = None) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def clip_and_step(params: Sequence[torch.nn.Parameter], opt: Any, sched: Any, max_norm: float,
                  scaler: Any = None) -> float:
    """Clip, step, zero; returns the gradient norm before clipping. With an fp16 `scaler`, gradients are
    unscaled first and a step whose gradients overflowed is skipped (the scaler lowers its scale)."""
    params = [p for p in params if p.grad is not None]
    if scaler is not None:
        scaler.unscale_(opt)
    if max_norm > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    else:
        norm = float(torch.norm(torch.stack([p.grad.detach().norm() for p in params]))) if params else 0.0
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return norm


@dataclass
class ProblemStream:
    """Endless, seeded, resumable stream over a list of items (one epoch = one permutation)."""

    items: list[Any]
    seed: int = 0
    position: int = 0
    _order: list[int] = field(default_factory=list, repr=False)
    _epoch: int = -1

    def take(self, k: int) -> list[Any]:
        if not self.items:
            raise ValueError("no training problems")
        out = []
        for _ in range(k):
            epoch, i = divmod(self.position, len(self.items))
            if epoch != self._epoch:
                self._order = list(range(len(self.items)))
                random.Random(f"{self.seed}-{epoch}").shuffle(self._order)
                self._epoch = epoch
            out.append(self.items[self._order[i]])
            self.position += 1
        return out
