"""Shared fixtures: the tiny Qwen2 model, built once per test session through `build_tiny_model`.

Import the fixtures into a test module (`from fixtures_models import tiny_model_dir, tiny_model,
tiny_tokenizer`) or into conftest.py. The model is random (init std 0.3, so greedy output varies from
token to token and padding/cache bugs change tokens); its tokenizer is trained on a few arithmetic
traces in both tag styles.
"""

from __future__ import annotations

import pytest
import torch

from tirl.formats import RETOOL, TORL


def tiny_corpus() -> list[str]:
    """Short traces in both tag styles, so that tags, digits and common words are in the vocabulary."""
    texts = []
    for a, b in [(12, 34), (567, 89), (1024, 7), (31, 415), (99, 99)]:
        for style in (RETOOL, TORL):
            code = f"x = {a} * {b}\nprint(x)"
            texts.append(
                f"What is {a} times {b}? Let me compute it.\n{style.wrap_code(code)}"
                f"{style.wrap_output(str(a * b))}The product is {a * b}.\n{style.wrap_answer(str(a * b))}"
            )
    texts.append("Error: Traceback (most recent call last): ZeroDivisionError: division by zero")
    return texts * 4


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tirl.models import build_tiny_model

    torch.set_num_threads(1)
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), tiny_corpus(), init_std=0.3)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from tirl.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from tirl.models import load_model

    return load_model(tiny_model_dir, device="cpu")


def write_tiny_gguf(out_dir, texts: list[str], seed: int = 0):
    """A tiny random Llama model and its byte-level BPE tokenizer written as one float32 GGUF file with
    the `gguf` package (the layout llama.cpp's converter writes), so GGUF loading and saving are tested
    without a download. Returns (directory, file name)."""
    import json
    from pathlib import Path

    import gguf
    import numpy as np
    from transformers import LlamaConfig, LlamaForCausalLM

    from tirl.models import train_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(texts, vocab_size=300)
    H, F, L, heads, kv = 32, 64, 2, 4, 2
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=H, intermediate_size=F, num_hidden_layers=L,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=512,
                      tie_word_embeddings=True, initializer_range=0.3)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    w = gguf.GGUFWriter(str(out / "tiny.gguf"), "llama")
    w.add_context_length(512)
    w.add_embedding_length(H)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(H // heads)
    spec = json.loads(tok.backend_tokenizer.to_str())
    added = {a["content"]: a["id"] for a in spec["added_tokens"]}
    tokens = [""] * len(tok)
    for t, i in {**spec["model"]["vocab"], **added}.items():
        tokens[i] = t
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in added else 1 for t in tokens])  # 3 = control, 1 = normal
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    for i in range(L):
        for hf, gg in [("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
                       ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
                       ("mlp.down_proj", "ffn_down"), ("input_layernorm", "attn_norm"),
                       ("post_attention_layernorm", "ffn_norm")]:
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    for k, v in model.state_dict().items():
        if k in names:
            w.add_tensor(names[k], v.numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out, "tiny.gguf"


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory):
    """(directory, file name) of a tiny float32 GGUF model; see `write_tiny_gguf`."""
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf"), tiny_corpus())
