"""tirl.algorithms against slow references: plain-Python loops for GRPO/RLOO/GAE, and gradient
accumulation (batch 1 x accumulate 8 == batch 8 x accumulate 1) for every aggregation mode.
"""

import math
import random

import pytest
import torch

from tirl import algorithms as A

torch.set_num_threads(1)


def _response_masks(rng: random.Random, batch: int, length: int) -> torch.Tensor:
    """Masks shaped like real responses: sampled tokens, tool spans (0) inside, padding (0) at the end."""
    rows = []
    for _ in range(batch):
        n = rng.randint(1, length)
        row = [1] * n + [0] * (length - n)
        for _ in range(rng.randint(0, 2)):  # interpreter spans strictly inside the response
            if n >= 4:
                start = rng.randint(1, n - 3)
                for t in range(start, min(start + rng.randint(1, 3), n - 1)):
                    row[t] = 0
        rows.append(row)
    return torch.tensor(rows)


# ----------------------------------------------------------------------------- loop references


def _grpo_loop(rewards, g, scale):
    out = []
    for i in range(0, len(rewards), g):
        group = rewards[i:i + g]
        mean = sum(group) / g
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (g - 1))
        out += [(r - mean) / (std + 1e-6) if scale else r - mean for r in group]
    return out


def _rloo_loop(rewards, g):
    out = []
    for i in range(0, len(rewards), g):
        group = rewards[i:i + g]
        out += [r - (sum(group) - r) / (g - 1) for r in group]
    return out


def _gae_loop(rewards, values, mask, gamma, lam):
    """Textbook GAE on the sampled tokens only (tool tokens and padding removed), scattered back."""
    adv = [[0.0] * len(row) for row in mask]
    for b, row in enumerate(mask):
        idx = [t for t, m in enumerate(row) if m]
        running = 0.0
        for k in reversed(range(len(idx))):
            next_v = values[b][idx[k + 1]] if k + 1 < len(idx) else 0.0
            delta = rewards[b][idx[k]] + gamma * next_v - values[b][idx[k]]
            running = delta + gamma * lam * running
            adv[b][idx[k]] = running
    return adv


@pytest.mark.parametrize("g", [2, 3, 8])
def test_grpo_and_rloo_match_loops(g):
    rng = random.Random(g)
    rewards = [rng.choice([1.0, -1.0, -0.5, rng.random()]) for _ in range(g * 5)]
    rewards[:g] = [1.0] * g  # one constant group
    t = torch.tensor(rewards, dtype=torch.float64)
    for scale in (True, False):
        torch.testing.assert_close(A.grpo_advantages(t, g, scale_by_std=scale),
                                   torch.tensor(_grpo_loop(rewards, g, scale), dtype=torch.float64))
    torch.testing.assert_close(A.rloo_advantages(t, g), torch.tensor(_rloo_loop(rewards, g), dtype=torch.float64))


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0), (0.5, 1.0)])
def test_gae_matches_loop_with_tool_spans(gamma, lam):
    rng = random.Random(int(gamma * 100 + lam * 10))
    mask = _response_masks(rng, batch=6, length=12)
    assert ((mask[:, :-1] == 0) & (mask[:, 1:] == 1)).any()  # at least one tool span in the middle
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(6, 12, generator=gen, dtype=torch.float64)
    # process-style rewards on every sampled token plus an outcome reward on the last one
    rewards = torch.where(mask.bool(), torch.randn(6, 12, generator=gen, dtype=torch.float64), 0.0)
    rewards = rewards + A.outcome_token_rewards(torch.ones(6, dtype=torch.float64), mask)
    adv, ret = A.gae_advantages(rewards, values, mask, gamma, lam)
    expected = torch.tensor(_gae_loop(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam),
                            dtype=torch.float64)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, torch.where(mask.bool(), expected + values, 0.0))
    # values at tool tokens and padding never enter
    noisy = torch.where(mask.bool(), values, torch.full_like(values, 1e6))
    torch.testing.assert_close(A.gae_advantages(rewards, noisy, mask, gamma, lam)[0], adv)


# ----------------------------------------------------------------------------- accumulation


def _setup(seed=0, batch=8, length=10, vocab=7, dim=5):
    """A tiny policy (features -> logits) and critic, with old log-probs and GRPO advantages."""
    gen = torch.Generator().manual_seed(seed)
    mask = _response_masks(random.Random(seed), batch, length)
    feats = torch.randn(batch, length, dim, generator=gen, dtype=torch.float64)
    tokens = torch.randint(0, vocab, (batch, length), generator=gen)
    policy = torch.nn.Linear(dim, vocab, dtype=torch.float64)
    ref = torch.nn.Linear(dim, vocab, dtype=torch.float64)
    critic = torch.nn.Linear(dim, 1, dtype=torch.float64)
    with torch.no_grad():
        for p in (*policy.parameters(), *ref.parameters(), *critic.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
        # old policy slightly off, so that some ratios fall outside the clip range
        old_lp = A.token_logprobs(policy(feats), tokens) + 0.3 * torch.randn(batch, length, generator=gen,
                                                                            dtype=torch.float64)
        ref_lp = A.token_logprobs(ref(feats), tokens)
        old_v = critic(feats)[..., 0] + 0.3 * torch.randn(batch, length, generator=gen, dtype=torch.float64)
        adv = A.grpo_advantages(torch.tensor([1.0, -1, -1, -1, 1, 1, -1, 1], dtype=torch.float64), 4)
        returns = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    data = dict(feats=feats, tokens=tokens, mask=mask, old_lp=old_lp, ref_lp=ref_lp, old_v=old_v,
                adv=adv, returns=returns)
    return policy, critic, data


def _total_loss(policy, critic, d, agg, normalizer):
    """Every loss of the module on one (micro-)batch, as a trainer would combine them."""
    logits = policy(d["feats"])
    lp = A.token_logprobs(logits, d["tokens"])
    pl, metrics = A.policy_loss(lp, d["old_lp"], d["adv"], d["mask"], clip_high=0.28, dual_clip=1.5,
                                agg=agg, normalizer=normalizer)
    d.setdefault("seen", []).append(metrics)
    kl, _ = A.kl_loss(lp, d["ref_lp"], d["mask"], agg=agg, normalizer=normalizer)
    ent, _ = A.entropy_loss(A.entropy_from_logits(logits), d["mask"], agg=agg, normalizer=normalizer)
    vl, _ = A.value_loss(critic(d["feats"])[..., 0], d["old_v"], d["returns"], d["mask"], agg=agg,
                         normalizer=normalizer)
    return pl + 0.1 * kl + 0.01 * ent + 0.5 * vl


def _grads(*modules):
    return torch.cat([p.grad.flatten() for m in modules for p in m.parameters()])


def _micro_batch(d, i):
    """Row i alone, trimmed to its own last sampled token (micro-batches pad differently)."""
    end = int(d["mask"][i].nonzero().max()) + 1
    return {k: (v[i:i + 1, :end] if v.dim() >= 2 else v[i:i + 1]) for k, v in d.items()
            if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("agg", A.AGG_MODES)
def test_accumulate_8x1_equals_batch_8(agg):
    policy, critic, d = _setup()
    length = d["mask"].shape[1]
    # batch 8 x accumulate 1, local normalizer (the default)
    _total_loss(policy, critic, d, agg, None).backward()
    full_grad = _grads(policy, critic)
    full_loss = _total_loss(policy, critic, d, agg, None).item()
    # the example exercises every branch of the surrogate: clip low, clip high, dual clip
    m = d["seen"][0]
    assert m["policy/clipfrac_low"] > 0 and m["policy/clipfrac_high"] > 0 and m["policy/dual_clipfrac"] > 0
    policy.zero_grad(), critic.zero_grad()
    # batch 1 x accumulate 8 with the mini-batch normalizer
    norm = A.global_normalizer(d["mask"], agg, seq_len=length)
    summed = 0.0
    for i in range(8):
        loss = _total_loss(policy, critic, _micro_batch(d, i), agg, norm)
        loss.backward()
        summed += loss.item()
    torch.testing.assert_close(_grads(policy, critic), full_grad, rtol=1e-10, atol=1e-12)
    assert summed == pytest.approx(full_loss, rel=1e-10)


def test_local_normalizers_break_accumulation():
    # The failure the global normalizer prevents: averaging micro-batch token-means weighs a short
    # response's tokens more than a long one's, so gradients differ from the full batch.
    policy, critic, d = _setup()
    _total_loss(policy, critic, d, "token-mean", None).backward()
    full_grad = _grads(policy, critic)
    policy.zero_grad(), critic.zero_grad()
    for i in range(8):
        (_total_loss(policy, critic, _micro_batch(d, i), "token-mean", None) / 8).backward()
    assert not torch.allclose(_grads(policy, critic), full_grad, rtol=1e-3)
