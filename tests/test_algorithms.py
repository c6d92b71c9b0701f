"""tirl.algorithms: hand-computed expectations, clip boundaries, masks, KL estimators, errors.

Loop-vs-vectorised references and gradient-accumulation invariance are in
test_algorithms_loops.py.
"""

import math

import pytest
import torch

from tirl import algorithms as A

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- advantages


def test_grpo_hand_example_unbiased_std():
    # groups [1, -1] and [-1, 1]: mean 0, unbiased std sqrt(((1)^2 + (-1)^2) / 1) = sqrt(2)
    # -> advantages +-1/sqrt(2) = +-0.70711
    adv = A.grpo_advantages(torch.tensor([1.0, -1.0, -1.0, 1.0]), group_size=2)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(adv, torch.tensor([s, -s, -s, s]), atol=1e-5, rtol=0)


def test_grpo_dr_grpo_and_constant_groups():
    # Dr. GRPO: mean only. group [1, 1, -1, -1]: mean 0 -> [1, 1, -1, -1];
    # group [1, 1, 1, 1]: all identical -> 0 (no signal, no NaN) with or without std.
    r = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0])
    torch.testing.assert_close(A.grpo_advantages(r, 4, scale_by_std=False),
                               torch.tensor([1.0, 1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0]))
    adv = A.grpo_advantages(r, 4)
    assert torch.all(adv[4:] == 0) and torch.isfinite(adv).all()
    # unbiased std of [1,1,-1,-1] = sqrt(4/3) -> 1/sqrt(4/3) = 0.8660
    torch.testing.assert_close(adv[:4], torch.tensor([1.0, 1.0, -1.0, -1.0]) * math.sqrt(3 / 4),
                               atol=1e-5, rtol=0)


def test_rloo_hand_example():
    # group [1, 0, 0]: baselines are mean of the others: [0, 0.5, 0.5] -> [1, -0.5, -0.5]
    adv = A.rloo_advantages(torch.tensor([1.0, 0.0, 0.0]), group_size=3)
    torch.testing.assert_close(adv, torch.tensor([1.0, -0.5, -0.5]))
    # integer rewards (e.g. straight from a 0/1 grader) work too
    torch.testing.assert_close(A.rloo_advantages(torch.tensor([1, 0, 0]), 3), adv)
    torch.testing.assert_close(A.grpo_advantages(torch.tensor([1, 0]), 2, scale_by_std=False),
                               torch.tensor([0.5, -0.5]))


@pytest.mark.parametrize("fn", [A.grpo_advantages, A.rloo_advantages])
def test_group_errors(fn):
    with pytest.raises(ValueError, match="groups of 3"):
        fn(torch.zeros(4), 3)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        fn(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="1-d"):
        fn(torch.zeros(2, 2), 2)


def test_gae_hand_example_gamma_lambda_half():
    # no mask; rewards [0, 0, 1], values [0.5, 0.5, 0.5], gamma = lam = 0.5
    # t=2: delta = 1 + 0.5*0 - 0.5 = 0.5               A2 = 0.5
    # t=1: delta = 0 + 0.5*0.5 - 0.5 = -0.25           A1 = -0.25 + 0.25*0.5 = -0.125
    # t=0: delta = -0.25                               A0 = -0.25 + 0.25*(-0.125) = -0.28125
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.full((1, 3), 0.5)
    adv, ret = A.gae_advantages(rewards, values, torch.ones(1, 3), gamma=0.5, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[-0.28125, -0.125, 0.5]]))
    torch.testing.assert_close(ret, adv + values)


def test_gae_jumps_over_tool_span():
    # mask [1, 1, 0, 0, 1, 0(pad)], values [0, 1, 99, 99, 4, 99], reward 1 on t=4, gamma = lam = 1:
    # A_t = (sum of future rewards) - V_t on sampled tokens = [1, 0, -, -, -3]; the 99s never enter.
    mask = torch.tensor([[1, 1, 0, 0, 1, 0]])
    rewards = A.outcome_token_rewards(torch.tensor([1.0]), mask)
    assert rewards.tolist() == [[0, 0, 0, 0, 1, 0]]
    values = torch.tensor([[0.0, 1.0, 99.0, 99.0, 4.0, 99.0]])
    adv, ret = A.gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv.tolist() == [[1.0, 0.0, 0.0, 0.0, -3.0, 0.0]]
    assert ret.tolist() == [[1.0, 1.0, 0.0, 0.0, 1.0, 0.0]]
    # discounting counts sampled tokens only: gamma=0.5, lam=1, V=0 -> A = [0.25, 0.5, -, -, 1]
    adv, _ = A.gae_advantages(rewards, torch.zeros(1, 6), mask, gamma=0.5, lam=1.0)
    assert adv.tolist() == [[0.25, 0.5, 0.0, 0.0, 1.0, 0.0]]


def test_gae_refuses_reward_on_masked_token():
    mask = torch.tensor([[1, 0, 1]])
    with pytest.raises(ValueError, match="masked positions"):
        A.gae_advantages(torch.tensor([[0.0, 1.0, 0.0]]), torch.zeros(1, 3), mask)


def test_outcome_token_rewards_errors():
    with pytest.raises(ValueError, match="no sampled token"):
        A.outcome_token_rewards(torch.tensor([1.0, 1.0]), torch.tensor([[1, 0], [0, 0]]))
    with pytest.raises(ValueError, match=r"\(B,\)"):
        A.outcome_token_rewards(torch.tensor([1.0]), torch.tensor([[1, 0], [1, 0]]))


def test_whiten_ignores_masked_positions():
    # valid values [1, 2, 3]: mean 2, unbiased var 1 -> [-1, 0, 1]; 1000 at masked tokens is ignored
    x = torch.tensor([[1.0, 1000.0, 2.0], [3.0, -1000.0, 1000.0]])
    mask = torch.tensor([[1, 0, 1], [1, 0, 0]])
    out = A.whiten(x, mask, eps=0.0)
    torch.testing.assert_close(out, torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    # shift_mean=False keeps the mean: [-1, 0, 1] + 2 = [1, 2, 3] (here already unit variance)
    out = A.whiten(x, mask, shift_mean=False, eps=0.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="at least 2 valid"):
        A.whiten(x, torch.tensor([[1, 0, 0], [0, 0, 0]]))


# ----------------------------------------------------------------------------- aggregation


def test_aggregate_modes_hand_example():
    # row 0: valid losses [1, 2, 3]; row 1: valid [4] (masked 100s ignored)
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # token-mean: (1+2+3+4)/4 = 2.5
    assert A.aggregate(loss, mask, "token-mean").item() == pytest.approx(2.5)
    # seq-mean-token-mean: (mean[1,2,3]=2 + mean[4]=4) / 2 = 3
    assert A.aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx(3.0)
    # seq-sum: (6 + 4) / (B*T = 6) = 1.6667; with a constant normalizer 10 -> 1.0
    assert A.aggregate(loss, mask, "seq-sum").item() == pytest.approx(10 / 6)
    assert A.aggregate(loss, mask, "seq-sum", normalizer=10).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown aggregation mode"):
        A.aggregate(loss, mask, "mean")


@pytest.mark.parametrize("mode", A.AGG_MODES)
def test_aggregate_all_masked_is_zero_not_nan(mode):
    loss = torch.full((2, 3), float("nan"), requires_grad=True)
    out = A.aggregate(loss, torch.zeros(2, 3), mode)
    out.backward()
    assert out.item() == 0.0 and torch.all(loss.grad == 0)


def test_mask_errors_are_clear():
    with pytest.raises(ValueError, match="mask has shape"):
        A.aggregate(torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="only 0 and 1"):
        A.aggregate(torch.zeros(2, 3), torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="shapes must match"):
        A.policy_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="advantages"):
        A.policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        A.policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3), dual_clip=1.0)
    with pytest.raises(ValueError, match="unknown KL"):
        A.kl_penalty(torch.zeros(2, 3), torch.zeros(2, 3), "k4")
    with pytest.raises(ValueError, match="logits"):
        A.token_logprobs(torch.zeros(2, 3), torch.zeros(2, 3))


# ----------------------------------------------------------------------------- policy loss


def _policy_grad(ratio: float, adv: float, **kw):
    """Loss and d loss / d logprob for a single token with the given ratio and advantage."""
    lp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, metrics = A.policy_loss(lp, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1), **kw)
    loss.backward()
    return loss.item(), lp.grad.item(), metrics


@pytest.mark.parametrize("ratio,adv,clipped", [
    (1.19, 1.0, False),   # A > 0 and ratio below 1 + 0.2: the gradient -A*r flows
    (1.21, 1.0, True),    # A > 0 and ratio above 1.2: loss = -1.2*A, gradient 0
    (0.79, 1.0, False),   # A > 0 and ratio below 0.8: the pessimistic min keeps r*A, gradient flows
    (0.79, -1.0, True),   # A < 0 and ratio below 0.8: loss = 0.8, gradient 0
    (0.81, -1.0, False),  # A < 0, just inside: loss = 0.81, gradient 0.81
    (1.21, -1.0, False),  # A < 0 and ratio above 1.2: pessimistic max keeps r*|A|, gradient flows
])
def test_clip_boundaries(ratio, adv, clipped):
    loss, grad, metrics = _policy_grad(ratio, adv, clip_low=0.2, clip_high=0.2)
    if clipped:
        assert grad == 0.0 and metrics["policy/clipfrac"] == 1.0
        assert loss == pytest.approx(-adv * min(max(ratio, 0.8), 1.2))
    else:
        # d(-A r)/d logp = -A r
        assert grad == pytest.approx(-adv * ratio) and metrics["policy/clipfrac"] == 0.0
        assert loss == pytest.approx(-adv * ratio)


def test_clip_higher_is_asymmetric():
    # DAPO clip 0.2 / 0.28: ratio 1.25 with A > 0 is inside [0.8, 1.28], so it still learns;
    # with the symmetric 0.2 it would be clipped.
    _, grad, m = _policy_grad(1.25, 1.0, clip_low=0.2, clip_high=0.28)
    assert grad == pytest.approx(-1.25) and m["policy/clipfrac"] == 0.0
    _, grad, m = _policy_grad(1.29, 1.0, clip_low=0.2, clip_high=0.28)
    assert grad == 0.0 and m["policy/clipfrac_high"] == 1.0 and m["policy/clipfrac_low"] == 0.0
    _, grad, m = _policy_grad(0.79, -1.0, clip_low=0.2, clip_high=0.28)
    assert grad == 0.0 and m["policy/clipfrac_low"] == 1.0


def test_dual_clip_bounds_negative_advantages():
    # A = -1, ratio 5, c = 3: plain PPO loss = max(5, 1.2)*1 = 5; dual clip bounds it at c*|A| = 3
    loss, grad, m = _policy_grad(5.0, -1.0, dual_clip=3.0)
    assert loss == pytest.approx(3.0) and grad == 0.0 and m["policy/dual_clipfrac"] == 1.0
    # ratio 2.9 < c: untouched, gradient -A*r = 2.9
    loss, grad, m = _policy_grad(2.9, -1.0, dual_clip=3.0)
    assert loss == pytest.approx(2.9) and grad == pytest.approx(2.9) and m["policy/dual_clipfrac"] == 0.0
    # positive advantages are never dual-clipped: ratio 5, A = +1 -> clipped at -1.2, not -3
    loss, _, m = _policy_grad(5.0, 1.0, dual_clip=3.0)
    assert loss == pytest.approx(-1.2) and m["policy/dual_clipfrac"] == 0.0


def test_policy_metrics_hand_example():
    # ratios [1, 2] (logratio [0, ln 2]), A = 1, clip 0.2:
    # approx_kl (k3) = mean[(1-1-0), (2-1-ln2)] = (1 - ln 2)/2 = 0.15343; clipfrac 1/2; ratio mean 1.5
    lp = torch.tensor([[0.0, math.log(2.0), 7.0]])
    _, m = A.policy_loss(lp, torch.zeros(1, 3), torch.ones(1), torch.tensor([[1, 1, 0]]))
    assert m["policy/approx_kl"] == pytest.approx((1 - math.log(2)) / 2)
    assert m["policy/clipfrac"] == 0.5 and m["policy/ratio_mean"] == pytest.approx(1.5)
    assert m["policy/ratio_max"] == pytest.approx(2.0)  # the masked exp(7) is not seen
    assert all(isinstance(v, float) for v in m.values())


# ----------------------------------------------------------------------------- masked gradients


def _loss_fns():
    def policy(x, mask, agg):
        return A.policy_loss(x, torch.zeros_like(x), torch.randn(x.shape[0]), mask,
                             clip_high=0.28, dual_clip=3.0, agg=agg)

    def value(x, mask, agg):
        return A.value_loss(x, torch.zeros_like(x), torch.randn_like(x), mask, agg=agg)

    def kl(x, mask, agg):
        return A.kl_loss(x, torch.zeros_like(x), mask, agg=agg)

    def entropy(x, mask, agg):
        return A.entropy_loss(x, mask, agg=agg)

    return {"policy": policy, "value": value, "kl": kl, "entropy": entropy}


@pytest.mark.parametrize("agg", A.AGG_MODES)
@pytest.mark.parametrize("name", list(_loss_fns()))
def test_masked_positions_get_exactly_zero_gradient(name, agg):
    torch.manual_seed(0)
    # prompt-free response with a tool span (cols 2-3) and padding (col 5) in row 0
    mask = torch.tensor([[1, 1, 0, 0, 1, 0], [1, 1, 1, 1, 1, 1]])
    x = (torch.randn(2, 6) * 0.1).requires_grad_(True)
    with torch.no_grad():  # garbage at masked positions must not matter, not even as NaN
        x[0, 2], x[0, 3], x[0, 5] = float("nan"), 1e4, -float("inf")
    loss, metrics = _loss_fns()[name](x, mask, agg)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.all(x.grad[mask == 0] == 0), x.grad
    assert torch.all(x.grad[mask == 1] != 0)
    assert all(math.isfinite(v) for v in metrics.values())


def test_entropy_from_logits_masked_gradient_zero():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    mask = torch.tensor([[1, 0, 1], [0, 0, 1]])
    loss, _ = A.entropy_loss(A.entropy_from_logits(logits), mask)
    loss.backward()
    assert torch.all(logits.grad[mask == 0] == 0) and logits.grad[mask == 1].abs().sum() > 0


def test_value_loss_clip_hand_example():
    # old V = 0, V = 1, R = 1, clip 0.2: V_clip = 0.2; max((1-1)^2, (0.2-1)^2) = 0.64 -> loss 0.32,
    # the clipped term wins so the gradient is 0 (the critic may not move further this epoch).
    v = torch.ones(1, 1, requires_grad=True)
    loss, m = A.value_loss(v, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), clip=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(0.32) and v.grad.item() == 0.0 and m["value/clipfrac"] == 1.0
    # no clip: plain 0.5 * (V - R)^2 = 0.5 * (1 - 3)^2 = 2
    loss, m = A.value_loss(v, torch.zeros(1, 1), torch.full((1, 1), 3.0), torch.ones(1, 1), clip=None)
    assert loss.item() == pytest.approx(2.0) and m["value/mse"] == pytest.approx(4.0)


# ----------------------------------------------------------------------------- KL estimators


def _two_categoricals():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    return p, q, float((p * (p / q).log()).sum())  # KL(p || q) = 0.2569...


def test_kl_estimators_exact_expectation():
    # E_{x~p}[k1] = E_{x~p}[k3] = KL(p||q) exactly; k2 is biased upward-ish but close for close p, q.
    p, q, true_kl = _two_categoricals()
    lp, lq = p.log()[None], q.log()[None]
    for kind in ("k1", "k3"):
        expectation = float((p * A.kl_penalty(lp, lq, kind)[0]).sum())
        assert expectation == pytest.approx(true_kl, rel=1e-9), kind
    assert float((p * A.kl_penalty(lp, lq, "k2")[0]).sum()) == pytest.approx(true_kl, rel=0.2)


def test_kl_estimators_sampled_mean_and_sign():
    p, q, true_kl = _two_categoricals()
    gen = torch.Generator().manual_seed(0)
    x = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    lp, lq = p.log()[x][None], q.log()[x][None]
    for kind in ("k1", "k3"):
        est = A.kl_penalty(lp, lq, kind)
        stderr = float(est.std()) / math.sqrt(x.numel())
        assert abs(float(est.mean()) - true_kl) < 5 * stderr, kind
    k1, k3 = A.kl_penalty(lp, lq, "k1"), A.kl_penalty(lp, lq, "k3")
    assert (k1 < 0).any() and (k3 >= 0).all()  # k1 is signed per sample, k3 never negative
    assert float(k3.std()) < float(k1.std())    # the "low-variance" claim holds here


def test_kl_reward_penalty_and_loss():
    # logprobs [-1, -2], ref [-1.5, -2], coef 0.1, k1 = logp - ref = [0.5, 0] -> reward [-0.05, 0]
    lp, ref = torch.tensor([[-1.0, -2.0, 5.0]]), torch.tensor([[-1.5, -2.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(A.kl_reward_penalty(lp, ref, mask, coef=0.1),
                               torch.tensor([[-0.05, 0.0, 0.0]]))
    # k3 with log-ratio -0.5: e^-0.5 - 1 + 0.5 = 0.10653; token-mean over 2 tokens = 0.053265
    loss, m = A.kl_loss(lp, ref, mask, kind="k3")
    assert loss.item() == pytest.approx((math.exp(-0.5) - 0.5) / 2)
    assert m["kl/mean"] == pytest.approx(loss.item())


# ----------------------------------------------------------------------------- logits helpers


def test_entropy_from_logits_closed_forms_and_stability():
    # uniform over V=4 -> ln 4; one-hot-ish huge logits -> ~0 without NaN
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1e4, 0.0, 0.0, 0.0]]])
    h = A.entropy_from_logits(logits)
    assert h[0, 0].item() == pytest.approx(math.log(4)) and abs(h[0, 1].item()) < 1e-6
    assert A.entropy_from_logits(logits.bfloat16()).dtype == torch.float32


@pytest.mark.parametrize("dtype,chunk", [(torch.float32, 0), (torch.float32, 2), (torch.bfloat16, 0)])
def test_token_logprobs_matches_log_softmax(dtype, chunk):
    torch.manual_seed(0)
    logits = (torch.randn(3, 5, 11) * 3).to(dtype)
    tokens = torch.randint(0, 11, (3, 5))
    ref = torch.log_softmax(logits.float(), -1).gather(-1, tokens[..., None])[..., 0]
    torch.testing.assert_close(A.token_logprobs(logits, tokens, chunk_rows=chunk), ref,
                               atol=1e-5, rtol=1e-5)


def test_chunked_token_logprobs_gradient():
    # the chunked autograd function against autograd through log_softmax, in float64 and bf16
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 6, (3, 4))
    assert torch.autograd.gradcheck(lambda z: A.token_logprobs(z, tokens, chunk_rows=2), (logits,))
    weights = torch.randn(3, 4)
    half = logits.detach().bfloat16().requires_grad_(True)
    (A.token_logprobs(half, tokens) * weights).sum().backward()
    ref = half.detach().float().requires_grad_(True)
    (torch.log_softmax(ref, -1).gather(-1, tokens[..., None])[..., 0] * weights).sum().backward()
    assert half.grad.dtype == torch.bfloat16
    torch.testing.assert_close(half.grad.float(), ref.grad, atol=1e-2, rtol=1e-2)


# --------------------------------------------------------------------------- TIS, verl's Dr. GRPO name


def test_verl_seq_mean_token_sum_norm_is_verls_agg_loss_b_times_seq_sum():
    # verl core_algos.agg_loss: sum(sum(loss_mat * mask, -1)) / loss_scale_factor (default mask.shape[-1]).
    # Before: tirl divided by B * T as well (its seq-sum), B times less than verl.
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # (1 + 2 + 4) / 3 positions
    assert A.aggregate(loss, mask, "seq-mean-token-sum-norm").item() == pytest.approx(7 / 3)
    assert A.aggregate(loss, mask, "seq-sum").item() == pytest.approx(7 / 6)  # Dr. GRPO's mean over sequences
    assert A.global_normalizer(mask, "seq-mean-token-sum-norm", seq_len=8) == 8.0
    assert A.global_normalizer(mask, "seq-sum", seq_len=8) == 16.0


def test_tis_is_the_identity_when_rollout_and_trainer_agree():
    g = torch.Generator().manual_seed(0)
    lp, old = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    adv, mask = torch.randn(3, generator=g), torch.tensor([[1, 1, 0, 1, 0]] * 3)
    w, m = A.truncated_is_weights(old, old.clone(), mask, cap=2.0)
    assert torch.equal(w, mask.float())
    assert m == {"tis/weight_mean": 1.0, "tis/clipped_frac": 0.0}
    base, _ = A.policy_loss(lp, old, adv, mask)
    weighted, _ = A.policy_loss(lp, old, adv, mask, weights=w)
    assert torch.equal(base, weighted)


def test_tis_weights_hand_example_and_cap():
    old = torch.log(torch.tensor([[0.5, 0.9, 0.2]]))
    rollout = torch.log(torch.tensor([[0.25, 0.3, 0.4]]))
    w, m = A.truncated_is_weights(old, rollout, torch.tensor([[1, 1, 1]]), cap=2.5)
    assert w.tolist()[0] == pytest.approx([2.0, 2.5, 0.5])  # 0.9 / 0.3 = 3 is capped at 2.5
    assert m["tis/clipped_frac"] == pytest.approx(1 / 3)
    assert m["tis/weight_mean"] == pytest.approx(5 / 3)
    with pytest.raises(ValueError, match="cap must be positive"):
        A.truncated_is_weights(old, rollout, torch.tensor([[1, 1, 1]]), cap=0)


def test_tis_gives_unknown_rollout_logprobs_weight_one_and_no_nan_reaches_the_loss():
    # the OpenAI backend writes NaN for re-tokenised outputs and the stop text it appends
    old = torch.log(torch.tensor([[0.5, 0.9, 0.2, 0.3]]))
    rollout = torch.log(torch.tensor([[0.25, 0.3, 0.4, 0.3]]))
    rollout[0, 1] = float("nan")
    rollout[0, 3] = float("nan")  # masked: weight 0
    mask = torch.tensor([[1, 1, 1, 0]])
    w, m = A.truncated_is_weights(old, rollout, mask, cap=2.5)
    assert w.tolist()[0] == pytest.approx([2.0, 1.0, 0.5, 0.0])
    assert m["tis/weight_mean"] == pytest.approx(3.5 / 3) and m["tis/clipped_frac"] == 0.0
    lp = old.clone().requires_grad_(True)
    loss, pm = A.policy_loss(lp, old, torch.tensor([1.0]), mask, weights=w)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()
    assert all(math.isfinite(v) for v in pm.values())


def test_tis_weights_scale_each_tokens_gradient():
    lp = torch.zeros(1, 2, requires_grad=True)
    old = torch.zeros(1, 2)
    weights = torch.tensor([[2.0, 0.5]])
    loss, _ = A.policy_loss(lp, old, torch.tensor([1.0]), torch.ones(1, 2), weights=weights, agg="seq-sum")
    loss.backward()
    # -A * ratio per token, ratio = 1 at lp = old, d/dlp = -A * w / (B * T)
    assert lp.grad.tolist()[0] == pytest.approx([-2.0 / 2, -0.5 / 2])


def test_decoupled_weights_hand_example_mask_over_the_cap_and_weigh_the_rest_in_full():
    # proximal (the learner before the update) vs behaviour (the stale sampler), per token:
    # 0.5 / 0.25 = 2, 0.3 / 0.3 = 1, 0.2 / 0.02 = 10 (> cap 5: masked), unknown (NaN): 1, padding: 0
    prox = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.4, 0.1]]))
    behaviour = torch.log(torch.tensor([[0.25, 0.3, 0.02, 0.4, 0.1]]))
    behaviour[0, 3] = float("nan")
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    w, m = A.decoupled_is_weights(prox, behaviour, mask, cap=5.0)
    assert w.tolist()[0] == pytest.approx([2.0, 1.0, 0.0, 1.0, 0.0])
    assert m["decoupled/weight_mean"] == pytest.approx(4 / 4)
    assert m["decoupled/weight_max"] == pytest.approx(10.0)
    assert m["decoupled/masked_frac"] == pytest.approx(1 / 4)
    # TIS on the same tokens truncates the 10 to the cap instead of masking it
    t, tm = A.truncated_is_weights(prox, behaviour, mask, cap=5.0)
    assert t.tolist()[0] == pytest.approx([2.0, 1.0, 5.0, 1.0, 0.0]) and tm["tis/clipped_frac"] == pytest.approx(1 / 4)
    # in the loss: each token's gradient scaled by its weight, the masked one's exactly 0
    lp = prox.clone().requires_grad_(True)
    loss, _ = A.policy_loss(lp, prox, torch.tensor([1.0]), mask, weights=w, agg="seq-sum")
    loss.backward()
    # -A * w / (B * T) at ratio 1 (seq-sum: B * T = 5)
    assert lp.grad.tolist()[0] == pytest.approx([-2.0 / 5, -1.0 / 5, 0.0, -1.0 / 5, 0.0])
    with pytest.raises(ValueError, match="cap must be positive"):
        A.decoupled_is_weights(prox, behaviour, mask, cap=0)


def test_adaptive_kl_controller_hand_values():
    # KL at twice the target: error clipped to +0.2; 64 samples over a horizon of 640 -> x1.02
    assert A.adaptive_kl_coef(0.1, 0.2, 0.1, 64, 640) == pytest.approx(0.1 * 1.02)
    # KL at 95% of the target: error -0.05 -> x(1 - 0.005)
    assert A.adaptive_kl_coef(0.1, 0.095, 0.1, 64, 640) == pytest.approx(0.1 * (1 - 0.005))
    assert A.adaptive_kl_coef(0.1, 0.1, 0.1, 64, 640) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="target > 0"):
        A.adaptive_kl_coef(0.1, 0.1, 0.0, 64, 640)
