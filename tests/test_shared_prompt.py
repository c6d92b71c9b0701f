"""Scoring with each GRPO group's prompt run once equals the row-by-row forward: log-probs and gradients."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from tirl.algorithms.logprobs import model_token_logprobs
from tirl.algorithms.shared_prompt import prompt_groups
from tirl.rollout import Trajectory
from tirl.train.batch import make_batch

V = 50


def _model(kind: str, attn: str):
    common = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, attn_implementation=attn)
    torch.manual_seed(0)
    model = (Qwen2ForCausalLM(Qwen2Config(**common)) if kind == "qwen2"
             else LlamaForCausalLM(LlamaConfig(**common)))
    return model.double().float()  # fp32, eval-free (no dropout in these configs)


def _batch(groups=3, n=4, seed=0):
    """`groups` prompts of lengths 3, 7, 11... each sampled n times; responses of different lengths with an
    unscored (interpreter-like) span, so rows are right-padded and prompts would be left-padded."""
    g = torch.Generator().manual_seed(seed)
    trajs = []
    for k in range(groups):
        prompt = torch.randint(1, V, (3 + 4 * k,), generator=g).tolist()
        for i in range(n):
            r = torch.randint(1, V, (4 + (3 * i + k) % 7,), generator=g).tolist()
            mask = [1, 1] + [0] * min(2, len(r) - 2) + [1] * (len(r) - 2 - min(2, len(r) - 2))
            trajs.append(Trajectory(prompt, r, mask, [0.0] * len(r), group_index=k, sample_index=i))
    return make_batch(trajs, pad_id=0)


def _score(model, batch, share):
    model.zero_grad()
    lp, ent = model_token_logprobs(model, batch.input_ids, batch.attention_mask, batch.mask, temperature=0.7,
                                   entropy="grad", share_prompt=share)
    w = torch.linspace(-1, 1, lp.numel()).view_as(lp)  # a loss that weighs every position differently
    ((lp * w).sum() + 0.1 * (ent * batch.mask).sum()).backward()
    return lp.detach(), ent.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prompt_equals_the_row_by_row_forward(kind, attn):
    model = _model(kind, attn)
    batch = _batch()
    assert prompt_groups(batch.input_ids, batch.mask)[2] == [0, 4, 8]
    lp0, ent0, g0 = _score(model, batch, share=False)
    lp1, ent1, g1 = _score(model, batch, share=True)
    assert torch.isfinite(lp1).all() and (lp1[batch.mask == 0] == 0).all()
    torch.testing.assert_close(lp1, lp0, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent1[batch.mask != 0], ent0[batch.mask != 0], rtol=0, atol=1e-5)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-5, msg=name)


def test_rows_are_grouped_only_by_identical_prompt_ids():
    batch = _batch(groups=2, n=2)
    plen, group, heads = prompt_groups(batch.input_ids, batch.mask)
    assert plen.tolist() == [3, 3, 7, 7] and group.tolist() == [0, 0, 1, 1] and heads == [0, 2]
    batch.input_ids[1, 0] += 1  # same length, one different token: its own group
    assert prompt_groups(batch.input_ids, batch.mask)[1].tolist() == [0, 1, 2, 2]
    one_each = _batch(groups=2, n=1)
    assert prompt_groups(one_each.input_ids, one_each.mask) is None  # nothing to share: the plain forward


def test_micro_batch_mixing_groups_and_lone_rows_still_matches():
    model = _model("qwen2", "sdpa")
    batch = _batch(groups=3, n=3, seed=1)
    sub = batch.subset([0, 4, 5, 8, 1])  # two rows of group 0, two of group 1, one of group 2
    lp0, _, g0 = _score(model, sub, share=False)
    lp1, _, g1 = _score(model, sub, share=True)
    torch.testing.assert_close(lp1, lp0, rtol=0, atol=1e-5)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-5, msg=name)


def test_policy_update_with_shared_prompts_equals_the_plain_one():
    from tirl.train import rl_update as U

    algo = U.AlgoConfig(name="grpo")
    after = []
    for share in (False, True):
        model = _model("qwen2", "sdpa")
        opt = torch.optim.SGD(model.parameters(), lr=0.5)  # a step proportional to the gradient
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        batch = _batch(groups=3, n=4, seed=2)
        batch.rollout_logprobs = batch.rollout_logprobs - 3.0 * batch.mask
        rewards = torch.tensor([1.0, -1.0, 1.0, 1.0] * 3)
        U.compute_advantages(batch, rewards, algo, 4)
        # micro-batches of 3 shuffled rows: groups split, some rows alone
        m = U.policy_update(model, opt, sched, batch, U.rows_to_train(batch, algo, rewards, 4), algo, temperature=1.0,
                            old_from_update=True, share_prompt=share, mini_batch_size=12, micro_batch_size=3,
                            epochs=1, max_grad_norm=1.0, seq_len=16, generator=torch.Generator().manual_seed(0))
        after.append(([p.detach().clone() for p in model.parameters()], batch.old_logprobs.clone(), m))
    (p0, old0, m0), (p1, old1, m1) = after
    torch.testing.assert_close(old1, old0, rtol=0, atol=1e-5)
    assert m1["loss/policy"] == pytest.approx(m0["loss/policy"], abs=1e-6)
    assert any(not torch.allclose(a, b) for a, b in zip(p0, _model("qwen2", "sdpa").parameters()))  # it moved
    for a, b in zip(p0, p1):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_one_prompt_pass_serves_every_micro_batch_with_the_plain_gradient():
    from tirl.algorithms.logprobs import prompt_pass

    model = _model("qwen2", "sdpa")
    batch = _batch(groups=3, n=4, seed=3)
    _, _, g0 = _score(model, batch, share=False)
    lp0, _ = model_token_logprobs(model, batch.input_ids, batch.attention_mask, batch.mask, temperature=0.7)
    model.zero_grad()
    calls = []
    hook = model.model.register_forward_hook(lambda *a: calls.append(1))
    pp = prompt_pass(model, batch.input_ids, batch.attention_mask, batch.mask)
    w = torch.linspace(-1, 1, batch.mask.numel()).view_as(batch.mask)
    ent_w = 0.1 * batch.mask
    for part in ([0, 5, 9], [1, 2, 3, 4, 10], [6, 7, 8, 11]):  # every micro-batch mixes groups
        sub = batch.subset(part)
        lp, ent = model_token_logprobs(model, sub.input_ids, sub.attention_mask, sub.mask, temperature=0.7,
                                       entropy="grad", prompts=pp)
        torch.testing.assert_close(lp.detach(), lp0[part, : lp.shape[1]].detach(), rtol=0, atol=1e-5)
        T = lp.shape[1]
        ((lp * w[part, :T]).sum() + (ent * ent_w[part, :T]).sum()).backward()
    pp.backward()
    hook.remove()
    assert len(calls) == 1 + 3  # the prompts once, then each micro-batch's own tokens
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, g0[name], rtol=1e-4, atol=1e-5, msg=name)
    other = _batch(groups=1, n=2, seed=9)  # a prompt the pass never saw: the caller runs its own forward
    assert pp.hidden(other.input_ids, other.attention_mask, other.mask) is None


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_recomputed_prompt_pass_gives_the_same_update_bit_for_bit(precision, dropout):
    """trainer.recompute_prompt: the prompt pass holds no graph through the micro-batches and runs again
    for its backward, under the same autocast and (dropout) random state: the same weights after the step."""
    from tirl.train import rl_update as U

    algo = U.AlgoConfig(name="grpo")
    after, passes = [], []
    for recompute in (False, True):
        model = _model("qwen2", "eager")
        model.config.attention_dropout = dropout
        for layer in model.model.layers:
            layer.self_attn.attention_dropout = dropout
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        batch = _batch(groups=3, n=4, seed=4)
        rewards = torch.tensor([1.0, -1.0, 1.0, -1.0] * 3)
        U.compute_advantages(batch, rewards, algo, 4)
        calls = []
        hook = model.model.register_forward_hook(lambda *a: calls.append(1))
        torch.manual_seed(123)
        U.policy_update(model, opt, sched, batch, U.rows_to_train(batch, algo, rewards, 4), algo, temperature=1.0,
                        old_from_update=True, share_prompt=True, recompute_prompt=recompute, precision=precision,
                        mini_batch_size=12, micro_batch_size=3, epochs=1, max_grad_norm=1.0, seq_len=16,
                        generator=torch.Generator().manual_seed(0))
        hook.remove()
        after.append([p.detach().clone() for p in model.parameters()])
        passes.append(len(calls))
    assert passes[1] == passes[0] + 1  # the prompts ran once more
    assert any(not torch.equal(a, b) for a, b in zip(after[0], _model("qwen2", "eager").parameters()))
    for a, b in zip(*after):
        assert torch.equal(a, b)
