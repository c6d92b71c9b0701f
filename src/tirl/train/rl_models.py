"""The models of an RL run: the policy, PPO's critic and the frozen KL reference, loaded fresh or from
a checkpoint, every dropout at 0.

Loading order is part of the run's numbers: the critic's value head is initialised from the global
torch RNG, right after the policy, as `train_rl` has always done it (`tests/test_rl_identity.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tirl.train import lora


@dataclass
class Models:
    policy: Any
    critic: Any = None
    """PPO's value model (None for GRPO / RLOO)."""
    ref: Any = None
    """The frozen reference for the KL term; None without one, or with LoRA (the base, adapters off)."""


def load_models(cfg: Any, base: str, ckpt: Path | None, device: Any) -> Models:
    """The run's models from `base` (a fresh run) or the checkpoint `ckpt` (a resumed one). A checkpoint is
    a plain float directory (or LoRA adapters over the base); only the base may be GGUF."""
    lora_on = cfg.model.lora.r > 0
    if ckpt and not lora_on:
        policy = load_policy(str(ckpt / "policy"), cfg)
    else:
        # after the adapters exist: peft's LoRA dropout is a Dropout of its own
        policy = without_dropout(lora.apply(load_policy(base, cfg, cfg.model.gguf_file), cfg.model.lora,
                                            adapter_dir=ckpt / "policy" if ckpt else None))
    critic = load_critic(str(ckpt / "critic") if ckpt else (cfg.model.critic_path or base),
                         device) if cfg.algorithm.name == "ppo" else None
    # With LoRA the frozen base is the reference (adapters off): no second copy.
    ref = load_policy(base, cfg, cfg.model.gguf_file) if cfg.algorithm.kl_coef > 0 and not lora_on else None
    if ref is not None:
        ref.requires_grad_(False)
    return Models(policy, critic, ref)


def load_policy(path: str, cfg: Any, gguf_file: str | None = None) -> Any:
    from tirl.models import enable_checkpointing, load_model

    model = without_dropout(load_model(path, gguf_file=gguf_file, dtype=cfg.model.dtype, device=cfg.trainer.device,
                                       attn_implementation=cfg.model.attn_implementation))
    if cfg.trainer.gradient_checkpointing:
        enable_checkpointing(model)
    return model


def load_critic(path: str, device: Any = None) -> Any:
    from transformers import AutoModelForTokenClassification

    from tirl.models import resolve_device

    # A token-classification head with one label is a value head on a copy of the policy.
    return without_dropout(AutoModelForTokenClassification.from_pretrained(path, num_labels=1).to(resolve_device(device)))


def without_dropout(model: Any) -> Any:
    """Every dropout at 0, as verl loads actor and critic. Updates run in train mode while old
    log-probs and values are scored in eval mode: with dropout on (Qwen2's token-classification head
    adds Dropout(0.1), peft's `model.lora.dropout` adds one per adapter) the ratio and the value clip
    would compare noisy numbers with clean ones."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for key in ("attention_dropout", "hidden_dropout", "classifier_dropout", "hidden_dropout_prob",
                "attention_probs_dropout_prob"):
        if getattr(model.config, key, None):
            setattr(model.config, key, 0.0)
    return model
