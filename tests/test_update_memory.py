"""The update's activation memory: gradient checkpointing (what the SmolLM2 recipe turns on to hold its
peak down) must give the same numbers, bit for bit, as keeping every activation."""

import torch

from fixtures_models import tiny_model_dir  # noqa: F401 (fixture)
from tirl.algorithms.logprobs import model_token_logprobs
from tirl.models import autocast, load_model


def _loss_and_grads(model, ids, mask, precision):
    model.zero_grad(set_to_none=True)
    with autocast("cpu", precision):
        lp, _ = model_token_logprobs(model, ids, torch.ones_like(ids), mask)
    loss = -(lp * mask).sum() / mask.sum()
    loss.backward()
    return lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gradient_checkpointing_gives_identical_logprobs_and_gradients(tiny_model_dir):
    model = load_model(tiny_model_dir, device="cpu")
    model.train()
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (4, 48))
    mask = torch.zeros(4, 47)
    mask[:, 20:] = 1
    for precision in ("fp32", "bf16"):
        lp_plain, g_plain = _loss_and_grads(model, ids, mask, precision)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lp_ckpt, g_ckpt = _loss_and_grads(model, ids, mask, precision)
        model.gradient_checkpointing_disable()
        assert torch.equal(lp_plain, lp_ckpt), precision
        assert g_plain.keys() == g_ckpt.keys()
        for name in g_plain:
            assert torch.equal(g_plain[name], g_ckpt[name]), (precision, name)
