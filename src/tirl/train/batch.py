"""`RLBatch`: the tensors of one RL update, by name, from the rollout's trajectories to the loss.

Notation: B trajectories, L = longest prompt + response, T = L - 1 target positions. Sequences are
right-padded. Position t of every (B, T) tensor scores token t + 1 given tokens <= t, and
`mask[b, t] = 1` exactly when token t + 1 was sampled by the policy (prompt, padding and interpreter
output are 0: the mask contract of `tirl.algorithms`).

`make_batch` fills the fields the trajectories decide; the update's stages fill the rest
(`old_logprobs`, `ref_logprobs`, `old_values`, then `advantages` / `returns`). The class has slots, so
a misspelt field raises instead of quietly adding a tensor nobody reads; `need` names a field a stage
reads before the stage that fills it has run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor


@dataclass(slots=True)
class RLBatch:
    input_ids: Tensor
    """(B, L) prompt + response ids, right-padded."""
    attention_mask: Tensor
    """(B, L) 1 on real tokens."""
    mask: Tensor
    """(B, T) float 1 = the target token was sampled by the policy."""
    rollout_logprobs: Tensor
    """(B, T) log-probs the rollout sampled with (0 where mask is 0)."""
    row: Tensor
    """(B,) each row's index in the full batch (it survives `subset`)."""
    old_logprobs: Tensor | None = None
    """(B, T) the trainer's log-probs before the update (the PPO ratio's denominator)."""
    old_entropy: Tensor | None = None
    """(B, T) entropies scored with `old_logprobs` (logged when no update runs)."""
    ref_logprobs: Tensor | None = None
    """(B, T) the frozen reference model's log-probs (KL)."""
    old_values: Tensor | None = None
    """(B, T) the critic's values before the update (PPO)."""
    advantages: Tensor | None = None
    """(B,) for GRPO / RLOO, (B, T) for PPO."""
    returns: Tensor | None = None
    """(B, T) the critic's targets (PPO)."""

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def need(self, name: str) -> Tensor:
        """The field `name`, refusing one no stage has filled yet."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"RLBatch.{name} is not set yet: the stage that fills it has not run")
        return value

    def tensors(self) -> dict[str, Tensor]:
        """The fields that are set, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def to(self, device: Any) -> "RLBatch":
        return RLBatch(**{k: v.to(device) for k, v in self.tensors().items()})

    def subset(self, rows: Sequence[int] | Tensor) -> "RLBatch":
        """Rows of the batch, trimmed to their own longest sequence."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        full_len = self.attention_mask.shape[1]
        out = {k: v[idx] for k, v in self.tensors().items()}
        L = int(out["attention_mask"].sum(dim=1).max())
        for k, v in out.items():
            if v.dim() == 2:
                out[k] = v[:, : L if v.shape[1] == full_len else L - 1]
        return RLBatch(**out)


def make_batch(trajs: Sequence[Any], pad_id: int, device: Any = None) -> RLBatch:
    """Right-padded tensors of `tirl.rollout.Trajectory`s: input_ids, attention_mask (B, L); mask,
    rollout_logprobs (B, T); row (B,); on `device` (default: the CPU)."""
    seqs = [t.prompt_ids + t.response_ids for t in trajs]
    L = max(len(s) for s in seqs)
    B = len(seqs)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    mask = torch.zeros((B, L - 1), dtype=torch.float32)
    lp = torch.zeros((B, L - 1), dtype=torch.float32)
    for b, (t, s) in enumerate(zip(trajs, seqs)):
        ids[b, : len(s)] = torch.tensor(s)
        attn[b, : len(s)] = 1
        P, R = len(t.prompt_ids), len(t.response_ids)
        mask[b, P - 1 : P - 1 + R] = torch.tensor(t.loss_mask, dtype=torch.float32)
        lp[b, P - 1 : P - 1 + R] = torch.tensor(t.logprobs, dtype=torch.float32)
    batch = RLBatch(input_ids=ids, attention_mask=attn, mask=mask, rollout_logprobs=lp, row=torch.arange(B))
    return batch.to(device) if device is not None else batch
