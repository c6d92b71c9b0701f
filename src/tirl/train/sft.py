"""`tirl sft`: cold-start supervised fine-tuning on code-integrated traces (ReTool's first stage).

Each trace is tokenised once with its loss mask (`tirl.data.tokenize_trace`: 1 on the assistant's
own tokens, 0 on prompt, padding and interpreter output) under the same prompt the RL rollout will
use. Batches are padded, not packed: sequences are right-padded and grouped by length (shuffled
within an epoch, sorted inside windows of 50 batches, batch order shuffled), which wastes little on
padding without letting attention cross sequence boundaries.

The loss is the mean over the trainable tokens of an optimizer batch, accumulated exactly over
micro-batches (each micro-batch's token sum is divided by the whole batch's token count).
Checkpoints and `--resume` are the RL trainer's (`tirl.train.checkpoint`). The result is
`RUN_DIR/model/`, a plain `save_pretrained` directory `tirl train` takes as `model.path`.

Not covered: packing with block-diagonal attention, multi-turn conversations. LoRA: `model.lora` (see
`tirl.train.lora`).
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from tirl.commands import check_model_source, loading
from tirl.config import check_resume, save_config
from tirl.data import IGNORE_INDEX, DataError
from tirl.formats import get_style
from tirl.jsonl import write_json
from tirl.train import lora
from tirl.train.checkpoint import load_state, resume_point, save_checkpoint
from tirl.train.common import (OptimConfig, backward, build_optimizer, check_device_and_precision, clip_and_step,
                               grad_scaler, set_threads)
from tirl.progress import progress
from tirl.resources import release_free_memory, release_if_grown, stage_peak
from tirl.train.logger import LogConfig, MetricsLogger
from tirl.trained_settings import settings_of, write_settings
from tirl.train.setup import (BUILTIN, DataConfig, ModelConfig, PromptConfig, check_attention, make_style,
                              resolve_model)


@dataclass
class SFTDataConfig:
    train: str = BUILTIN
    """`builtin` (traces generated for the built-in task) or a traces file (ReTool-SFT messages,
    tool-role messages or ToRL fences: see tirl.data.load_traces)."""
    eval: str = ""
    """Held-out traces file; empty = hold out `eval_fraction` of the training traces."""
    eval_fraction: float = 0.05
    eval_size: int = 256
    """Held-out traces scored at each evaluation (the first N); 0 = all. A whole dev slice (723 GSM8K
    traces) took longer than 10 training steps each time."""
    skip_invalid: bool = False
    """Skip malformed rows (and report how many) instead of refusing the file."""
    max_length: int = 512
    """Tokens per example; longer traces are cut at the end (and counted)."""
    task: DataConfig = field(default_factory=DataConfig)
    """Built-in task settings (level, kinds, train_size, seed) when train is `builtin`."""
    mix: dict[str, float] = field(default_factory=lambda: {"code": 0.45, "text": 0.45, "fix": 0.10})
    """Built-in trace kinds: code (copy numbers into code), text (compute in text), fix (NameError, fixed)."""
    text_error_rate: float = 0.5
    """Share of built-in text traces whose stated result has a wrong digit, as a small model's would."""
    balance_answer_lengths: bool = False
    """Built-in task: draw the SFT problems so that every answer length is about equally common (from a
    pool 4x `task.train_size`), so copying the interpreter's output is learned for every length, not only
    the most common one (`tirl.tasks.balance_answer_lengths`). RL and evaluation keep the task's own mix."""


@dataclass
class SFTTrainerConfig:
    steps: int = 300
    batch_size: int = 16
    """Sequences per optimizer step."""
    micro_batch_size: int = 16
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=20, schedule="cosine"))
    eval_every: int = 50
    save_every: int = 100
    """Checkpoint every N steps and at the last step; 0 = only at the last step."""
    keep_checkpoints: int = 1
    seed: int = 0
    threads: int = 1
    device: str = "auto"
    """auto | cpu | cuda | cuda:N; auto = the first GPU when there is one."""
    precision: str = "fp32"
    """fp32 | bf16 | fp16 autocast (bf16 on CPU too); weights and optimizer state stay float32."""
    gradient_checkpointing: bool = False
    log: LogConfig = field(default_factory=LogConfig)
    """Where metrics go besides metrics.jsonl (TensorBoard, W&B, trackio) and the plain progress line."""


@dataclass
class SFTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    trainer: SFTTrainerConfig = field(default_factory=SFTTrainerConfig)
    output: Optional[str] = None
    """Where the final model goes; None = RUN_DIR/model."""


def validate_sft(cfg: SFTConfig) -> None:
    """Refuse values that cannot train, before anything is written."""
    get_style(cfg.prompt.style)
    cfg.trainer.optim.validate("trainer.optim")
    t = cfg.trainer
    if t.steps < 1 or t.batch_size < 1 or t.micro_batch_size < 1 or cfg.data.max_length < 1:
        raise ValueError("trainer.steps, trainer.batch_size, trainer.micro_batch_size and data.max_length must be >= 1")
    if not 0 <= cfg.data.eval_fraction < 1:
        raise ValueError(f"data.eval_fraction must be in [0, 1), got {cfg.data.eval_fraction}")
    if cfg.data.eval_size < 0:
        raise ValueError(f"data.eval_size must be >= 0 (0 = all), got {cfg.data.eval_size}")
    check_device_and_precision(t.device, t.precision)
    lora.check(cfg.model.lora)
    check_attention(cfg.model.attn_implementation)


def load_sft_traces(cfg: SFTDataConfig, style: Any) -> tuple[list, list]:
    """(train, eval) traces; the built-in task's traces come straight from `tirl.tasks`."""
    from tirl.data import load_traces, trace_from_row

    if cfg.train == BUILTIN:
        from tirl.tasks import balance_answer_lengths, generate_task, task_traces

        t = cfg.task
        pool = 4 * t.train_size if cfg.balance_answer_lengths else t.train_size
        items = generate_task(t.task, pool, split="train", seed=t.seed, level=t.task_level, kinds=t.task_kinds,
                              answer_digits=t.answer_digits)
        if cfg.balance_answer_lengths:
            items = balance_answer_lengths(items, t.train_size, seed=t.seed)
        rows = task_traces(t.task, items, style=style, mix=dict(cfg.mix), text_error_rate=cfg.text_error_rate,
                           seed=t.seed)
        traces = [trace_from_row(r, style, id=r["id"], where=f"builtin[{i}]") for i, r in enumerate(rows)]
    else:
        traces = list(load_traces(cfg.train, style, skip_invalid=cfg.skip_invalid))
    keep = slice(cfg.eval_size or None)
    if cfg.eval:
        return traces, list(load_traces(cfg.eval, style, skip_invalid=cfg.skip_invalid))[keep]
    n_eval = int(len(traces) * cfg.eval_fraction)
    return traces[n_eval:], traces[:n_eval][keep]


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    rng = random.Random(f"{seed}-{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w : w + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    L = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), L), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), L), IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros((len(examples), L), dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[b, :n] = torch.tensor(e["input_ids"])
        labels[b, :n] = torch.tensor(e["labels"])
        attn[b, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attn}


def token_loss_sum(model: Any, batch: dict[str, torch.Tensor], precision: str = "fp32") -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over trainable tokens, and their count.

    The output layer runs only at trainable positions, in float32 chunks (`model_token_logprobs`), so
    no (B, T, V) logits tensor is built for a real vocabulary."""
    from tirl.algorithms.logprobs import model_token_logprobs
    from tirl.models import autocast

    dev = next(model.parameters()).device
    batch = {k: v.to(dev) for k, v in batch.items()}
    trainable = batch["labels"][:, 1:] != IGNORE_INDEX
    with autocast(dev, precision):
        lp, _ = model_token_logprobs(model, batch["input_ids"], batch["attention_mask"], trainable, temperature=0)
    return -lp.sum(), int(trainable.sum())


@torch.no_grad()
def eval_loss(model: Any, examples: list[dict[str, Any]], pad_id: int, micro: int, precision: str = "fp32") -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), micro):
        loss, n = token_loss_sum(model, collate(examples[i : i + micro], pad_id), precision)
        total += float(loss)
        count += n
    release_free_memory()
    return total / max(count, 1)


def train_sft(cfg: SFTConfig, run_dir: str | Path, resume: bool = False, force: bool = False) -> dict[str, Any]:
    """Train, save the model and write `summary.json` (with the run's peak resident memory, `memory`)."""
    with stage_peak() as mem:
        summary = _train_sft(cfg, run_dir, resume, force)
    summary["memory"] = mem.as_dict()
    write_json(Path(run_dir) / "summary.json", summary)
    return summary


def _train_sft(cfg: SFTConfig, run_dir: str | Path, resume: bool, force: bool) -> dict[str, Any]:
    from tirl.data import tokenize_traces
    from tirl.models import enable_checkpointing, load_model, load_tokenizer

    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    tc = cfg.trainer
    check_device_and_precision(tc.device, tc.precision)
    lora.check(cfg.model.lora)
    set_threads(tc.threads)
    validate_sft(cfg)
    ckpt = resume_point(run_dir, resume)
    if ckpt is not None:
        check_resume(run_dir, cfg, force)
    style = make_style(cfg.prompt)
    train_traces, eval_traces = load_sft_traces(cfg.data, style)  # refuse bad data before anything is written
    if not train_traces:
        raise DataError(f"{cfg.data.train}: no training traces")
    check_model_source(cfg.model.path)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")

    base = resolve_model(cfg.model, style, cfg.data.task, run_dir)
    with loading("model", base):
        tokenizer = load_tokenizer(base, gguf_file=cfg.model.gguf_file)
    # prompt.chat None = the prompt rule's own default (the chat template when the tokenizer has one)
    train_ex = tokenize_traces(train_traces, tokenizer, style, cfg.data.max_length, use_chat_template=cfg.prompt.chat)
    eval_ex = tokenize_traces(eval_traces, tokenizer, style, cfg.data.max_length, use_chat_template=cfg.prompt.chat)
    if not train_ex:
        raise ValueError("no training traces")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    torch.manual_seed(tc.seed)
    # A checkpoint is a plain float directory (or LoRA adapters over the base); only the base may be GGUF.
    lora_on = cfg.model.lora.r > 0
    from_ckpt = ckpt is not None and not lora_on
    with loading("model", base):
        model = load_model(str(ckpt / "model") if from_ckpt else base,
                           gguf_file=None if from_ckpt else cfg.model.gguf_file, dtype=cfg.model.dtype, device=tc.device,
                           attn_implementation=cfg.model.attn_implementation)
    if tc.gradient_checkpointing:
        enable_checkpointing(model)
    model = lora.apply(model, cfg.model.lora, adapter_dir=ckpt / "model" if ckpt and lora_on else None)
    opt, sched = build_optimizer([p for p in model.parameters() if p.requires_grad], tc.optim, tc.steps)
    scaler = grad_scaler(tc.precision, next(model.parameters()).device)
    logger = MetricsLogger(run_dir, tc.log, config=asdict(cfg), label="sft", total_steps=tc.steps)
    start = 0
    if ckpt is not None:
        state = load_state(ckpt)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = state["step"]
        logger.truncate_after(start)

    lengths = [len(e["input_ids"]) for e in train_ex]
    per_epoch = -(-len(train_ex) // tc.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    summary: dict[str, Any] = {"train_traces": len(train_ex), "eval_traces": len(eval_ex),
                               "truncated": sum(1 for e in train_ex if e["num_truncated"])}
    with progress("sft", tc.steps) as bar:
        bar.update(bar.task_ids[0], completed=start)
        epoch_cache: dict[int, list[list[int]]] = {}
        for step in range(start + 1, tc.steps + 1):
            t0 = time.perf_counter()
            epoch, k = divmod(step - 1, per_epoch)  # the data position is the step itself
            if epoch not in epoch_cache:
                epoch_cache = {epoch: length_grouped_batches(lengths, tc.batch_size, tc.seed, epoch)}
            rows = [train_ex[i] for i in epoch_cache[epoch][k]]
            n_tokens = sum(sum(e["loss_mask"][1:]) for e in rows)
            model.train()
            total = 0.0
            for m in range(0, len(rows), tc.micro_batch_size):
                loss_sum, _ = token_loss_sum(model, collate(rows[m : m + tc.micro_batch_size], pad_id), tc.precision)
                loss = loss_sum / max(n_tokens, 1)
                backward(loss, scaler)
                total += float(loss.detach())
            lr = sched.get_last_lr()[0]
            grad_norm = clip_and_step(params, opt, sched, tc.optim.max_grad_norm, scaler)
            # Micro-batches of changing lengths leave freed blocks glibc keeps: the SmolLM2 demo's SFT
            # climbed from 4.4 to 6.1 GB resident over 60 steps without this.
            release_if_grown()
            metrics = {"loss/sft": total, "train/lr": lr, "train/grad_norm": grad_norm, "train/epoch": float(epoch),
                       "throughput/tokens_per_s": sum(len(e["input_ids"]) for e in rows) / (time.perf_counter() - t0)}
            if eval_ex and ((tc.eval_every and step % tc.eval_every == 0) or step == tc.steps):
                metrics["eval/loss"] = eval_loss(model, eval_ex, pad_id, tc.micro_batch_size, tc.precision)
            logger.log(step, metrics)
            if (tc.save_every and step % tc.save_every == 0) or step == tc.steps:
                save_checkpoint(run_dir, step, {"model": model}, {"optimizer": opt.state_dict(),
                                "scheduler": sched.state_dict()}, tokenizer=tokenizer, keep=tc.keep_checkpoints,
                                settings=settings_of(cfg.prompt))
            bar.update(bar.task_ids[0], completed=step, info=f"loss {total:.3f}")
    logger.close()
    out = Path(cfg.output) if cfg.output else run_dir / "model"
    if lora_on and cfg.model.lora.merge:
        lora.save_merged(model, tokenizer, out)  # a plain model `tirl train` takes as model.path
    else:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    write_settings(out, settings_of(cfg.prompt))
    summary.update(steps=tc.steps, wall_s=time.perf_counter() - t_start, model=str(out), run_dir=str(run_dir))
    return summary
