"""The lean decode step (`tirl.generation.lean_decode`) against transformers' own forward: bit for bit
with eager attention, within bf16 rounding of SDPA, on Llama and Qwen2 configs, padded batches with
holes, over many steps, from the bf16 sampling copy; float32 keeps transformers' forward."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from cpu_flags import has_amx
from tirl.generation.base import GenerationRequest, SamplingParams
from tirl.generation.hf import HFGenerator
from tirl.generation.lean_decode import lean_decoder

VOCAB = 97


class _Tok:
    """Just enough tokenizer for `HFGenerator` with no stop strings."""

    pad_token_id = 0
    eos_token_id = None

    def encode(self, text, add_special_tokens=False):
        return [1]

    def decode(self, ids):
        return " ".join(map(str, ids))


def _model(family: str, attn: str, seed: int = 0):
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  initializer_range=0.3)
    torch.manual_seed(seed)
    if family == "llama":
        m = LlamaForCausalLM(LlamaConfig(**common, attn_implementation=attn))
    else:
        m = Qwen2ForCausalLM(Qwen2Config(**common, attn_implementation=attn))
    return m.eval()


def _requests(n: int = 6, seed: int = 1) -> list[GenerationRequest]:
    g = torch.Generator().manual_seed(seed)
    # Different lengths: the batch is left-padded, so the mask has zeros the step must honour.
    return [GenerationRequest(torch.randint(1, VOCAB, (3 + 5 * i,), generator=g).tolist(), key=("r", i))
            for i in range(n)]


def _generate(model, lean: bool, precision: str, temperature: float = 1.0, steps: int = 24):
    gen = HFGenerator(model, _Tok(), precision=precision, lean_decode=lean, eos_token_ids=[])
    params = SamplingParams(temperature=temperature, max_new_tokens=steps, seed=3)
    return gen, gen.generate(_requests(), params)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_lean_decode_equals_transformers_eager_bit_for_bit(family):
    """bf16, the sampling copy tirl decodes with: the same floats, step after step."""
    if family == "llama" and has_amx():
        # Measured 2026-12-07 on a CPU with AMX: Qwen2 still bit for bit, Llama not (6 to 72 of 144
        # log-probs differ by a bf16 rounding, 0.02, and then the sampled tokens; which ones varies
        # between model copies in one process). Cause not found yet: an open item of issue 26.
        pytest.skip("on CPUs with AMX the Llama lean step is not bit for bit (docs/speed.md)")
    model = _model(family, "eager")
    _, ref = _generate(copy.deepcopy(model), lean=False, precision="bf16")
    gen, lean = _generate(model, lean=True, precision="bf16")
    assert gen._lean and all(gen._lean.values()), "the lean step did not run"
    if torch.backends.mkldnn.is_available():
        assert gen._linears.packed, "the CPU's bf16 matmuls did not use reordered weights"
    for a, b in zip(ref, lean):
        assert a.token_ids == b.token_ids
        assert a.logprobs == b.logprobs  # exact floats: the same operations in the same order


def test_reordered_weights_follow_an_update_of_the_model():
    """An optimizer step between two generations: the lean step must sample from the new weights."""
    outs = []
    for lean in (False, True):
        model = _model("llama", "eager")
        gen = HFGenerator(model, _Tok(), precision="bf16", lean_decode=lean, eos_token_ids=[])
        params = SamplingParams(temperature=1.0, max_new_tokens=8, seed=2)
        gen.generate(_requests(), params)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.5)  # in place, as AdamW's step: the version counters move
        outs.append([o.logprobs for o in gen.generate(_requests(), params)])
    assert outs[0] == outs[1]


def test_the_trainer_drops_the_reordered_weights_before_an_update_and_decoding_makes_them_again():
    """SyncFeed.learning: the update runs without the lean step's stale weights under its peak; the next
    generation rebuilds them and samples exactly as a generator that never dropped them."""
    from types import SimpleNamespace

    from tirl.train.feed import SyncFeed

    outs = []
    for drop in (False, True):
        model = _model("llama", "eager")
        gen = HFGenerator(model, _Tok(), precision="bf16", eos_token_ids=[])
        params = SamplingParams(temperature=1.0, max_new_tokens=8, seed=2)
        gen.generate(_requests(), params)
        if drop:
            with SyncFeed(SimpleNamespace(generator=gen), backend=None).learning():
                assert gen._linears is None
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.5)
        outs.append([o.logprobs for o in gen.generate(_requests(), params)])
        assert gen._linears is not None
    assert outs[0] == outs[1]


def test_float32_sampling_keeps_transformers_forward():
    """fp32 (no half-precision copy): the lean step's packed-heads matmuls would round differently from
    eager's (~3e-6 on logits), so transformers' forward runs and the numbers are its own."""
    gen, _ = _generate(_model("llama", "eager"), lean=True, precision="fp32")
    assert not gen._lean


def test_lean_decode_keeps_the_cache_transformers_would_resume_from():
    """A second turn resumes from the caches the lean steps wrote: same tokens as transformers' path."""
    model = _model("llama", "eager")
    outs = []
    for lean in (False, True):
        gen = HFGenerator(copy.deepcopy(model), _Tok(), precision="bf16", lean_decode=lean, eos_token_ids=[])
        params = SamplingParams(temperature=1.0, max_new_tokens=10, seed=5)
        first = gen.generate(_requests(), params)
        turn2 = [GenerationRequest(r.token_ids + o.token_ids + [7, 8, 9], key=r.key)
                 for r, o in zip(_requests(), first)]
        outs.append([o.token_ids for o in gen.generate(turn2, params)])
    assert outs[0] == outs[1]


def test_lean_decode_is_close_to_sdpa():
    model = _model("qwen2", "sdpa", seed=4)
    _, ref = _generate(copy.deepcopy(model), lean=False, precision="bf16", temperature=0.0, steps=8)
    gen, lean = _generate(model, lean=True, precision="bf16", temperature=0.0, steps=8)
    assert all(gen._lean.values())
    # bf16 rounding apart: a random model's near-ties may flip a later token; up to there, close.
    agreed = 0
    for a, b in zip(ref, lean):
        for x, y, u, v in zip(a.token_ids, b.token_ids, a.logprobs, b.logprobs):
            assert abs(u - v) < 0.15
            if x != y:
                break
            agreed += 1
    assert agreed >= 4 * len(ref)


def test_models_outside_the_lean_path_keep_transformers_forward():
    llama = _model("llama", "eager")
    assert lean_decoder(llama)
    sliding = Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                           use_sliding_window=True, sliding_window=8, max_window_layers=0))
    assert not lean_decoder(sliding)
    lora_like = _model("llama", "eager")
    lora_like.model.layers[0].self_attn.q_proj = torch.nn.Sequential(lora_like.model.layers[0].self_attn.q_proj)
    assert not lean_decoder(lora_like)
    dynamic = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=1, num_attention_heads=2,
                                           rope_scaling={"rope_type": "dynamic", "factor": 2.0}))
    assert not lean_decoder(dynamic)
    # and generation with a model outside still runs, through transformers
    gen = HFGenerator(dynamic.eval(), _Tok(), eos_token_ids=[])
    out = gen.generate(_requests(2), SamplingParams(temperature=0.0, max_new_tokens=4))
    assert all(len(o.token_ids) == 4 for o in out) and not any(gen._lean.values())
