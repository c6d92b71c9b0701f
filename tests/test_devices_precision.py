"""Devices, mixed precision and the faster update paths (issue 13): same numbers, less work."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from tirl.algorithms.logprobs import entropy_from_logits, model_token_logprobs, token_logprobs
from tirl.models import autocast, resolve_device
from tirl.rollout import Trajectory
from tirl.train import rl_update as U
from tirl.train.batch import make_batch
from tirl.train.common import check_device_and_precision


def _tiny(seed=0, vocab=50):
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      initializer_range=0.3)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg)


def _trajs(n=8, vocab=50):
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        p = torch.randint(1, vocab, (3 + i % 3,), generator=g).tolist()
        r = torch.randint(1, vocab, (6 + i % 4,), generator=g).tolist()
        mask = [1, 1, 0, 0, 1] + [1] * (len(r) - 5)
        out.append(Trajectory(p, r, mask, [-1.0 if m else 0.0 for m in mask], group_index=i // 2,
                              sample_index=i % 2))
    return out


def test_auto_device_is_cpu_here_and_unknown_or_missing_devices_are_refused_in_one_line():
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="0 CUDA device"):
            resolve_device("cuda:1")
    with pytest.raises(ValueError, match="auto | cpu | cuda"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="precision must be one of fp32 | bf16 | fp16"):
        check_device_and_precision("cpu", "fp8")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        check_device_and_precision("cpu", "fp16")


def test_output_layer_at_masked_positions_in_chunks_equals_full_logits():
    """Values, entropies and gradients of the chunked, masked path match log_softmax over full logits."""
    model = _tiny()
    batch = make_batch(_trajs(), pad_id=0)
    ids, attn, mask = batch.input_ids, batch.attention_mask, batch.mask
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1] / 0.7
    ref = token_logprobs(logits, ids[:, 1:]) * mask
    ref_ent = entropy_from_logits(logits) * mask
    (ref * mask).sum().backward(inputs=list(model.parameters()))
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    lp, ent = model_token_logprobs(model, ids, attn, mask, 0.7, entropy="grad", chunk_tokens=5, unchunked_max=0)
    lp_small, ent_small = model_token_logprobs(model, ids, attn, mask, 0.7, entropy="grad")  # one plain chunk
    torch.testing.assert_close(lp_small, lp)
    torch.testing.assert_close(ent_small, ent)
    torch.testing.assert_close(lp, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent * mask, ref_ent, rtol=1e-5, atol=1e-5)
    assert lp[mask == 0].abs().sum() == 0
    lp.sum().backward()
    for g, r in zip([p.grad for p in model.parameters()], ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    _, none = model_token_logprobs(model, ids, attn, mask, 0.7, entropy="none")
    assert none is None


def _update(model, old_from_update, precision="fp32"):
    algo = U.AlgoConfig(name="grpo")
    batch = make_batch(_trajs(), pad_id=0, device=next(model.parameters()).device)
    if not old_from_update:
        batch.old_logprobs, _ = U.score_batch(model, batch, 1.0, 4, precision)
    rewards = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0])
    U.compute_advantages(batch, rewards, algo, 2)
    rows = U.rows_to_train(batch, algo, rewards, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    m = U.policy_update(model, opt, sched, batch, rows, algo, mini_batch_size=8, micro_batch_size=3, epochs=1,
                        temperature=1.0, max_grad_norm=1.0, seq_len=16, generator=torch.Generator().manual_seed(0),
                        precision=precision, old_from_update=old_from_update)
    return batch, m, opt


def test_old_logprobs_from_the_update_forward_equal_a_separate_pass_when_one_step_per_batch():
    a, b = _tiny(), _tiny()
    batch_a, m_a, _ = _update(a, old_from_update=False)
    batch_b, m_b, _ = _update(b, old_from_update=True)
    torch.testing.assert_close(batch_b.old_logprobs, batch_a.old_logprobs * batch_a.mask, rtol=1e-5,
                               atol=1e-6)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert m_a["train/grad_norm"] == pytest.approx(m_b["train/grad_norm"], rel=1e-5)
    assert U.one_step_per_batch(U.AlgoConfig(), ppo_epochs=1, mini_batch_size=8, batch_size=8)
    assert not U.one_step_per_batch(U.AlgoConfig(), ppo_epochs=2, mini_batch_size=8, batch_size=8)
    assert not U.one_step_per_batch(U.AlgoConfig(), ppo_epochs=1, mini_batch_size=4, batch_size=8)


def test_bf16_autocast_keeps_float32_master_weights_and_optimizer_state():
    model = _tiny()
    before = [p.detach().clone() for p in model.parameters()]
    _, m, opt = _update(model, old_from_update=True, precision="bf16")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(v.dtype == torch.float32 for s in opt.state.values() for v in s.values() if v.dim() > 0)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # bf16 log-probs stay close to fp32 ones (the importance ratio is computed in float32)
    batch = make_batch(_trajs(), pad_id=0)
    with torch.no_grad():
        lp32, _ = U.forward_logprobs(model, batch, 1.0)
        lp16, _ = U.forward_logprobs(model, batch, 1.0, precision="bf16")
    assert lp16.dtype == torch.float32
    assert (lp16 - lp32).abs().max() < 0.15


def test_autocast_is_a_no_op_for_fp32():
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")


@pytest.mark.gpu
def test_train_places_policy_on_the_gpu_and_runs_a_step(tmp_path):
    from tirl.config import load_config
    from tirl.train.rl import RLConfig, train_rl

    cfg = load_config(RLConfig, None, ["trainer.device=cuda", "trainer.precision=bf16", "trainer.steps=1",
                                       "trainer.prompts_per_step=2", "rollout.n=2", "rollout.max_new_tokens=16",
                                       "data.test_size=2", "trainer.eval_size=2", 'prompt.system_prompt=""'])
    out = train_rl(cfg, tmp_path / "rl")
    assert out["steps"] == 1


@pytest.mark.gpu
def test_generator_and_update_run_on_the_gpu():
    from tirl.generation import GenerationRequest, SamplingParams
    from tirl.generation.hf import HFGenerator

    model = _tiny().to("cuda")

    class Tok:
        pad_token_id, eos_token_id = 0, 1

        def decode(self, ids):
            return ""

    gen = HFGenerator(model, Tok(), precision="bf16")
    out = gen.generate([GenerationRequest([3, 4, 5], key="a")], SamplingParams(max_new_tokens=4, temperature=1.0))
    assert len(out[0].token_ids) >= 1
    batch, m, _ = _update(model, old_from_update=True, precision="bf16")
    assert batch.old_logprobs.device.type == "cuda" and m["train/optimizer_steps"] == 1


def _tirl(*args):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "tirl.cli", *args], capture_output=True, text=True, timeout=300,
                          env=os.environ.copy())


@pytest.mark.parametrize("cmd,flags,needle", [
    ("train", ["--device", "tpu"], "trainer.device must be auto | cpu | cuda"),
    ("sft", ["--device", "cpu", "--precision", "fp16"], "trainer.precision fp16 needs a CUDA device"),
])
def test_device_and_precision_flags_are_checked_before_anything_is_written(tmp_path, cmd, flags, needle):
    r = _tirl(cmd, *flags, "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and needle in r.stdout + r.stderr, r.stdout + r.stderr
    assert not (tmp_path / "run").exists()


def test_fp16_loss_scaling_steps_like_fp32_and_skips_an_overflowed_step():
    from tirl.train.common import backward, clip_and_step

    def run(scaler, poison=False):
        w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        opt = torch.optim.SGD([w], lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        loss = (w * torch.tensor([3.0, float("inf") if poison else 4.0])).sum()
        backward(loss, scaler)
        clip_and_step([w], opt, sched, 0.0, scaler)
        return w.detach()

    plain = run(None)
    torch.testing.assert_close(run(torch.amp.GradScaler("cpu")), plain)
    assert torch.equal(run(torch.amp.GradScaler("cpu"), poison=True), torch.tensor([1.0, -2.0]))


def test_output_layer_sees_only_trained_positions_a_chunk_at_a_time():
    model = _tiny()
    batch = make_batch(_trajs(), pad_id=0)
    shapes = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    lp, _ = model_token_logprobs(model, batch.input_ids, batch.attention_mask, batch.mask, 1.0,
                                 entropy="detached", chunk_tokens=16, unchunked_max=0)
    lp.sum().backward()  # the backward recomputes each chunk: still never more than 16 rows
    hook.remove()
    assert all(len(s) == 2 and s[0] <= 16 for s in shapes)  # (rows, V): never (B, T, V)
    assert sum(s[0] for s in shapes) == 2 * int(batch.mask.sum())  # forward + recompute, trained positions only
