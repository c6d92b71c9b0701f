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
import math
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


def micro_batches(lengths: Sequence[int], cap: int, call_cost: int = 64) -> list[list[int]]:
    """Indices into `lengths` (each row's real tokens) grouped into micro-batches of at most `cap` rows
    that run little padding: rows are sorted by length and cut where the padded tokens saved pay for
    another forward/backward (`call_cost`, in tokens: the fixed cost of a call, ~4 ms against ~0.06 ms
    a token for the demo's model; a larger model pays relatively less). A micro-batch runs `rows x its
    longest row` tokens, so one long response in a batch of short ones no longer makes every row pay
    for its length. Exact: micro-batch losses share the mini-batch's normaliser (their sum is the loss).

    Cuts fall only between different lengths, so the search is over distinct lengths (dynamic
    programming, quadratic in their number). Returns the micro-batches in increasing length."""
    if cap < 1:
        raise ValueError(f"micro-batch cap must be >= 1, got {cap}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    ls = [lengths[i] for i in order]
    n = len(ls)
    ends = [k for k in range(1, n) if ls[k] != ls[k - 1]] + [n] if n else []
    best: dict[int, tuple[float, int]] = {0: (0.0, 0)}  # end -> (cost of rows [0, end), start of its last run)
    for j in ends:
        best[j] = min((best[i][0] + math.ceil((j - i) / cap) * call_cost + (j - i) * ls[j - 1], i)
                      for i in best if i < j)
    runs, j = [], n
    while j > 0:
        i = best[j][1]
        runs.append(order[i:j])
        j = i
    return [run[s : s + cap] for run in reversed(runs) for s in range(0, len(run), cap)]


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
