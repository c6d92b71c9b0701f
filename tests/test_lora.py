"""LoRA through peft (optional extra): only adapters train, the frozen base is the reference, checkpoints
hold adapters, the merged model loads without peft, and resume continues from the adapters."""

import pytest
import torch

peft = pytest.importorskip("peft")

from fixtures_models import tiny_model_dir  # noqa: E402,F401 - pytest fixture
from tirl.config import load_config  # noqa: E402
from tirl.models import load_model  # noqa: E402
from tirl.train import lora  # noqa: E402


def test_only_adapters_train_and_the_base_with_adapters_off_is_the_reference(tiny_model_dir):
    base = load_model(tiny_model_dir, device="cpu")
    ids = torch.tensor([[5, 17, 42, 9, 33, 8]])
    with torch.no_grad():
        before = base(ids).logits.clone()
    policy = lora.apply(load_model(tiny_model_dir, device="cpu"), lora.LoraConfig(r=4))
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)  # a trained adapter
        assert not torch.allclose(policy(ids).logits, before, atol=1e-3)
        with lora.reference_view(policy, None) as ref:
            torch.testing.assert_close(ref(ids).logits, before)
        assert not torch.allclose(policy(ids).logits, before, atol=1e-3)  # adapters back on


def _rl_cfg(model_dir, steps, *more):
    from tirl.train.rl import RLConfig

    return load_config(RLConfig, None, [
        f"model.path={model_dir}", "model.lora.r=4", 'prompt.system_prompt=""', "rollout.n=2",
        "rollout.max_new_tokens=12", "trainer.prompts_per_step=2", "trainer.save_every=1", "data.test_size=2",
        "trainer.eval_size=2", "data.train_size=20", "trainer.optim.lr=1e-2", "algorithm.kl_coef=0.1",
        # a random model earns -1 everywhere (zero advantages): the entropy bonus gives the adapters a gradient
        "algorithm.entropy_coef=0.1", f"trainer.steps={steps}", *more])


def test_rl_turns_lora_dropout_off_so_the_update_sees_the_policy_that_sampled(tiny_model_dir, tmp_path):
    # Before: peft's LoRA dropout stayed on, so once the adapters had learned (step 2) the update's
    # train-mode forward disagreed with the eval-mode rollout that sampled the tokens.
    from tirl.train.logger import read_metrics
    from tirl.train.rl import train_rl

    run = tmp_path / "rl"
    train_rl(_rl_cfg(tiny_model_dir, 2, "model.lora.dropout=0.5", "trainer.optim.lr=5e-2"), run)
    gap = [m["rollout/logprob_max_diff"] for m in read_metrics(run)]
    assert gap[1] < 1e-4, gap  # the update's own forward is the old policy here (one step per batch)


def test_rl_with_lora_checkpoints_adapters_resumes_and_writes_a_merged_model(tiny_model_dir, tmp_path):
    from tirl.train.logger import read_metrics
    from tirl.train.rl import train_rl

    run = tmp_path / "rl"
    train_rl(_rl_cfg(tiny_model_dir, 1), run)
    ckpt = run / "checkpoints" / "step-000001" / "policy"
    assert (ckpt / "adapter_config.json").is_file() and not (ckpt / "model.safetensors").exists()
    out = train_rl(_rl_cfg(tiny_model_dir, 2), run, resume=True)
    merged = load_model(out["merged_model"], device="cpu")  # plain transformers, no peft needed
    base = load_model(tiny_model_dir, device="cpu")
    diff = max((a - b).abs().max().item() for a, b in zip(merged.state_dict().values(), base.state_dict().values()))
    assert diff > 0  # the adapters learned something and were folded in
    kl = [m["kl/mean"] for m in read_metrics(run)]
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[1] > 0  # the reference is the base: KL grows from 0


def test_sft_with_lora_writes_a_merged_model(tiny_model_dir, tmp_path):
    from tirl.train.sft import SFTConfig, train_sft

    cfg = load_config(SFTConfig, None, [f"model.path={tiny_model_dir}", "model.lora.r=4", 'prompt.system_prompt=""',
                                        "data.max_length=96", "data.task.train_size=16", "trainer.steps=2",
                                        "trainer.batch_size=4", "trainer.micro_batch_size=4", "trainer.eval_every=0",
                                        "trainer.optim.lr=1e-2"])
    out = train_sft(cfg, tmp_path / "sft")
    assert (tmp_path / "sft" / "checkpoints" / "step-000002" / "model" / "adapter_config.json").is_file()
    model = load_model(out["model"], device="cpu")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in load_model(tiny_model_dir).parameters())
