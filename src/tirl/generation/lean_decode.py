"""One decode step (one new token per row over the KV cache) of a Llama- or Qwen2-family model, written
as the bare tensor operations transformers' modules run, over the same weights and the same cache.

Why: on a CPU, transformers' forward for one token spends much of its time around the matmuls: module
calls, mask building and SDPA's flash kernel, which for one query per row costs 0.3 ms a layer at batch
16 (~1 ms with `enable_gqa`, its path when no row is padded). Here attention is transformers' eager
attention on packed heads (scores `q k^T * scale` plus the padding bias, float32 softmax, `p v`: 0.18 ms
a layer), the layers are a plain loop, and on a CPU in bf16 the matmuls use weights reordered once for
oneDNN (`Linears`). SmolLM2-135M, 2 cores, batch 16 / 64: 46.1 / 121.2 ms a step against 60.7 / 141.0
(`benchmarks/limits.py`, docs/speed.md).

Exactness: in bf16/fp16 (the sampling copy `HFGenerator` decodes with) the step computes what
transformers computes with `attn_implementation="eager"`, bit for bit (tested on Llama and Qwen2
configs, padded batches, resumption from its cache, weight updates; checked on SmolLM2). A model loaded
with SDPA gets eager's arithmetic at decode: bf16 scores where SDPA accumulates in float32, a rounding
difference. In float32 the packed-heads score matmul rounds differently from eager's (~3e-6 on logits),
so `HFGenerator` keeps transformers' forward there. Prefill (many tokens per row) stays transformers'.

`lean_decoder(model)` says whether a model qualifies: Llama or Qwen2 (no sliding window), default,
linear or llama3 rotary scaling (fixed frequencies), SiLU MLP, plain `nn.Linear` projections (a LoRA-
wrapped layer does not qualify) and no tensor-parallel split. Anything else keeps transformers' forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

FAMILIES = ("llama", "qwen2")
FIXED_ROPE = ("default", "linear", "llama3")


def _rope_type(cfg: Any) -> str:
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    return params.get("rope_type", params.get("type", "default")) or "default"


def lean_decoder(model: Any) -> bool:
    """True when `lean_step` computes `model`'s own one-token forward (see the module docstring)."""
    cfg = getattr(model, "config", None)
    body = getattr(model, "model", None)
    if cfg is None or getattr(cfg, "model_type", None) not in FAMILIES or body is None:
        return False
    if getattr(cfg, "use_sliding_window", False) or getattr(cfg, "pretraining_tp", 1) != 1:
        return False
    if getattr(cfg, "hidden_act", "silu") != "silu" or _rope_type(cfg) not in FIXED_ROPE:
        return False
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or ())):
        return False
    if type(getattr(model, "lm_head", None)) is not torch.nn.Linear:
        return False
    for layer in body.layers:
        a, m = layer.self_attn, layer.mlp
        projections = (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj)
        if any(type(p) is not torch.nn.Linear for p in projections):
            return False
    return True


def _rms(h: torch.Tensor, norm: Any) -> torch.Tensor:
    """transformers' RMSNorm: float32 statistics, the weight applied in the input's dtype."""
    x = h.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * x.to(h.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Linears:
    """The step's matmuls. On a CPU in bf16, each projection's weight is reordered once into oneDNN's
    blocked layout (`mkldnn._reorder_linear_weight`, what torch.compile's CPU freezing does): a one-row-
    per-sequence matmul otherwise re-blocks the weight at every call (SmolLM2's output layer at batch 16:
    15.0 -> 7.5 ms). Same kernel, same floats (tested). The reordered copy costs one more bf16 copy of
    the weights (SmolLM2: 0.27 GB); `stamp` says which weights it was made from."""

    def __init__(self, model: Any = None, stamp: Any = None):
        self.stamp = stamp
        self.packed: dict[int, torch.Tensor] = {}
        if model is not None and _can_pack(model):
            for mod in model.modules():
                if type(mod) is torch.nn.Linear:
                    self.packed[id(mod)] = torch.ops.mkldnn._reorder_linear_weight(mod.weight.detach(), 16)

    def __call__(self, x: torch.Tensor, layer: Any) -> torch.Tensor:
        w = self.packed.get(id(layer))
        if w is None:
            return F.linear(x, layer.weight, layer.bias)
        return torch.ops.mkldnn._linear_pointwise(x, w, layer.bias, "none", [], "")


def _can_pack(model: Any) -> bool:
    p = next(model.parameters())
    return (p.device.type == "cpu" and p.dtype is torch.bfloat16 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and not _cpu_autocast())


def _cpu_autocast() -> bool:
    # torch < 2.4 has no device-type argument here
    return torch.is_autocast_enabled("cpu") if hasattr(torch, "get_autocast_dtype") else torch.is_autocast_cpu_enabled()


def _rotary(body: Any, pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin `(B, 1, 1, D)` for each row's position, as transformers' rotary embedding makes them."""
    rot = body.rotary_emb
    freqs = pos[:, None, None].float() * rot.inv_freq.to(device=pos.device, dtype=torch.float)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos() * rot.attention_scaling, emb.sin() * rot.attention_scaling
    return cos.to(dtype)[:, None], sin.to(dtype)[:, None]  # (B, 1, 1, D): broadcast over heads


def _attention(a: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer_cache: Any,
               bias: torch.Tensor, linear: Linears) -> torch.Tensor:
    """Self-attention of one new token per row (`x` `(B, hidden)`); writes its key and value into
    `layer_cache`."""
    B, D = x.shape[0], a.head_dim
    q = linear(x, a.q_proj).view(B, 1, -1, D).transpose(1, 2)
    k = linear(x, a.k_proj).view(B, 1, -1, D).transpose(1, 2)
    v = linear(x, a.v_proj).view(B, 1, -1, D).transpose(1, 2)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    keys, values = layer_cache.update(k, v)
    # The query heads sharing a key/value head become that head's rows (transformers' `pack_gqa`):
    # no copy of the cache per query head.
    qp = q.reshape(B, keys.shape[1], -1, D)
    scores = torch.matmul(qp, keys.transpose(2, 3)) * a.scaling + bias
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(qp.dtype)
    out = torch.matmul(probs, values).reshape(B, -1)
    return linear(out, a.o_proj)


def lean_step(model: Any, tokens: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any,
              linear: Linears | None = None) -> torch.Tensor:
    """Logits `(B, V)` (the model's dtype) of one decode step: `tokens` `(B,)` fed at positions `pos`
    `(B,)`, `mask` `(B, L)` the attention mask including them (0 on pads and holes), `cache` a
    `DynamicCache` holding the L - 1 earlier positions, to which the step's keys/values are added;
    `linear` the model's matmuls (`Linears(model)`; plain `F.linear` when None)."""
    body = model.model
    linear = linear or Linears()
    h = body.embed_tokens(tokens)  # modules at both ends: hooks on them still see every step
    cos, sin = _rotary(body, pos, h.dtype)
    # The padding bias transformers adds: 0 where attended, the dtype's minimum elsewhere.
    bias = torch.zeros(mask.shape, dtype=h.dtype, device=h.device)
    bias = bias.masked_fill_(mask == 0, torch.finfo(h.dtype).min)[:, None, None, :]
    for layer, layer_cache in zip(body.layers, cache.layers):
        h = h + _attention(layer.self_attn, _rms(h, layer.input_layernorm), cos, sin, layer_cache, bias, linear)
        m, x = layer.mlp, _rms(h, layer.post_attention_layernorm)
        h = h + linear(F.silu(linear(x, m.gate_proj)) * linear(x, m.up_proj), m.down_proj)
    out = _rms(h, body.norm)
    lm_head = model.lm_head
    if id(lm_head) in linear.packed:
        return linear(out, lm_head)
    return lm_head(out)
