"""LoRA through `peft` (the optional `tirl[peft]` extra): only low-rank adapters train.

* `model.lora.r > 0` wraps the loaded model with adapters on `target_modules`; every other weight is
  frozen, so the optimizer holds state for the adapters only.
* The frozen base doubles as the reference model: reference log-probs are the same model with its
  adapters switched off (`reference_view`), so a KL term costs no second copy of the weights.
* Checkpoints hold the adapters only (peft's `save_pretrained`); a resume loads the base again and the
  adapters on top. `merge: true` (the default) also writes the merged float model at the end, which
  loads anywhere without peft.

Not covered: QLoRA (quantised base), several adapters at once, LoRA for the PPO critic (it trains in
full).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator


@dataclass
class LoraConfig:
    r: int = 0
    """Adapter rank; 0 = no LoRA (full fine-tuning)."""
    alpha: int = 16
    """Scale of the adapters' update (alpha / r), as in peft."""
    dropout: float = 0.0
    """Dropout on the adapters' input (SFT). RL turns it off, like every dropout: its update runs in
    train mode and its old log-probs in eval mode, and the two must see the same policy."""
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    """Module names that get adapters (Llama / Qwen2 / Mistral naming)."""
    merge: bool = True
    """At the end, also write the merged float model (SFT: `RUN_DIR/model`; RL: `RUN_DIR/merged`)."""


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ValueError("model.lora.r > 0 needs peft: pip install 'tirl[peft]'") from None
    return peft


def check(cfg: LoraConfig) -> None:
    if cfg.r < 0:
        raise ValueError(f"model.lora.r must be >= 0, got {cfg.r}")
    if cfg.r > 0:
        _peft()


def apply(model: Any, cfg: LoraConfig, adapter_dir: str | Path | None = None) -> Any:
    """`model` with trainable adapters (fresh, or loaded from `adapter_dir`); `model` itself when r = 0."""
    if cfg.r <= 0:
        return model
    from tirl.models import is_checkpointing

    peft = _peft()
    if adapter_dir is not None:
        wrapped = peft.PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    else:
        wrapped = peft.get_peft_model(model, peft.LoraConfig(
            r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
            task_type="CAUSAL_LM"))
    if is_checkpointing(model):
        wrapped.enable_input_require_grads()  # the frozen embeddings' output must carry a graph
    wrapped.eval()
    return wrapped


def is_lora(model: Any) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


@contextlib.contextmanager
def reference_view(policy: Any, ref: Any) -> Iterator[Any]:
    """The reference model to score with: `ref` when there is a separate copy, else the LoRA policy with
    its adapters switched off (the frozen base it started from)."""
    if ref is not None:
        yield ref
        return
    if not is_lora(policy):
        raise ValueError("no reference model: a KL term needs one (or LoRA, whose base is the reference)")
    with policy.disable_adapter():
        yield policy


def save_merged(model: Any, tokenizer: Any, out: str | Path) -> Path:
    """Fold the adapters into the base weights and save a plain float model (the model is changed)."""
    merged = model.merge_and_unload() if is_lora(model) else model
    merged.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return Path(out)
