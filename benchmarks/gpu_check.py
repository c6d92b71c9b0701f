"""One call on a single-GPU machine: does tirl work there, and how near the GPU's limits does it run?

    make gpu-wheels                      # here: tirl and its pure-Python dependencies into dist/gpu-wheels
    make gpu-check                       # there: install them --no-index, then this script
    python benchmarks/gpu_check.py --out runs/gpu-check                     # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/dry       # dry run (what the test runs)

Phases, each recorded as ok / failed / skipped, so one failure does not hide the others:
  1. `gpu`-marked tests (pytest -m gpu; skipped on a dry run).
  2. The sandbox runs a program.
  3. A random-initialised model of Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads / 2 KV heads,
     MLP 4864, vocabulary 151,936; built from a config, nothing downloaded) with a tokenizer trained on
     the arithmetic task (ids past its vocabulary decode to nothing), saved like any model.
  4. Log-probs of the same weights on the CPU (float32) and on the device (float32, and bf16 autocast).
  5. GRPO steps with the sandbox (`train_rl`, bf16 autocast, zero-advantage groups kept so the update
     runs on a random model): step time, tokens/s, generation / update split.
  6. `benchmarks/limits.py` on the device: bf16 matmul peak, bandwidth, decode at batch 16 and 64 as a
     fraction of its bound, the update's MFU against the measured bf16 peak.
Peak memory: the device's (torch.cuda.max_memory_allocated) and the process's resident peak. One
summary is printed at the end; everything goes to OUT/gpu_check.json. Exit 1 when a phase failed.
`--tiny` swaps in a 2-layer model of the same family, for the dry run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import limits  # noqa: E402  (benchmarks/limits.py)

REPO = Path(__file__).resolve().parents[1]
QWEN25_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                  rms_norm_eps=1e-6, tie_word_embeddings=True)
TINY = dict(QWEN25_05B, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=1024)  # vocabulary past the tokenizer's, as in the full check


def phase(results: dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    t = time.perf_counter()
    print(f"--- {name}", flush=True)
    try:
        out = fn()
        results[name] = {"status": "ok", **(out if isinstance(out, dict) else {})}
    except Exception as e:  # one broken phase must not hide the others
        traceback.print_exc()
        results[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        out = None
    results[name]["seconds"] = round(time.perf_counter() - t, 1)
    return out


def gpu_tests(timeout: int) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"],
                       cwd=REPO, capture_output=True, text=True, timeout=timeout)
    tail = (r.stdout + r.stderr).strip().splitlines()[-15:]
    if r.returncode not in (0, 5):  # 5: none collected
        raise RuntimeError("pytest -m gpu failed:\n" + "\n".join(tail))
    return {"pytest": tail[-1] if tail else ""}


def sandbox_runs() -> dict[str, Any]:
    from tirl.sandbox import Sandbox

    with Sandbox() as sb:
        res = sb.run("print(6 * 7)", timeout=10)
        level = sb.isolation.get("level")
    if res.stdout.strip() != "42":
        raise RuntimeError(f"sandbox: status {res.status}, stdout {res.stdout!r}, stderr {res.stderr[-300:]!r}")
    return {"isolation": level}


def build_model(out: Path, tiny: bool) -> dict[str, Any]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tirl.models import train_tokenizer
    from tirl.tasks import arithmetic

    texts = [p.problem + " " + p.answer for p in arithmetic.generate(500, seed=0)]
    tok = train_tokenizer(texts)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**(TINY if tiny else QWEN25_05B), bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1), "path": str(out)}


def logprob_agreement(path: Path, device: torch.device) -> dict[str, Any]:
    from tirl.algorithms.logprobs import model_token_logprobs
    from tirl.models import autocast, load_model

    torch.manual_seed(1)
    cpu = load_model(path, device="cpu")
    ids = torch.randint(0, cpu.config.vocab_size, (2, 96))
    att, mask = torch.ones_like(ids), torch.ones(2, 95)

    def lp(model: Any, dev: torch.device, precision: str) -> torch.Tensor:
        with torch.no_grad(), autocast(dev, precision):
            return model_token_logprobs(model, ids.to(dev), att.to(dev), mask.to(dev))[0].float().cpu()

    ref = lp(cpu, torch.device("cpu"), "fp32")
    del cpu
    on_dev = load_model(path, device=device)
    d32 = (lp(on_dev, device, "fp32") - ref).abs()
    d16 = (lp(on_dev, device, "bf16") - ref).abs()
    out = {"fp32_max_abs_diff": float(d32.max()), "bf16_max_abs_diff": float(d16.max()),
           "bf16_mean_abs_diff": float(d16.mean()), "logprob_mean": float(ref.mean())}
    if out["fp32_max_abs_diff"] > 1e-3 or out["bf16_mean_abs_diff"] > 0.05:
        raise RuntimeError(f"CPU and {device} disagree: {out}")
    return out


def grpo_steps(path: Path, run_dir: Path, device: torch.device, tiny: bool) -> dict[str, Any]:
    from tirl.config import load_config
    from tirl.train.logger import read_metrics
    from tirl.train.rl import RLConfig, train_rl

    steps = 2  # the first pays for start-up; the second is the one reported
    cfg = load_config(RLConfig, None, [
        f"model.path={path}", f"trainer.device={device}", "trainer.precision=bf16", f"trainer.steps={steps}",
        "rollout.n=4", "trainer.prompts_per_step=4" if tiny else "trainer.prompts_per_step=16",
        f"rollout.max_new_tokens={16 if tiny else 128}", "trainer.micro_batch_size=16", "trainer.eval_size=0",
        'data.test=""', 'prompt.system_prompt=""', "trainer.save_every=100000", "trainer.threads=0",
        # a random model earns -1 everywhere: keep those groups so the update really runs
        "algorithm.filter_zero_advantage=false", "algorithm.skip_zero_advantage=false",
    ])
    summary = train_rl(cfg, run_dir)
    last = read_metrics(run_dir)[-1]
    keys = ("time/step_s", "time/generation_s", "time/sandbox_s", "time/train_s", "throughput/tokens_per_s",
            "tool/code_ratio", "reward/mean")
    return {"steps": steps, "sandbox_level": summary.get("sandbox", {}).get("level"),
            "run_peak_rss_mb": summary["memory"]["peak_rss_mb"], **{k: last.get(k) for k in keys}}


def device_limits(path: Path, device: torch.device, tiny: bool) -> dict[str, Any]:
    args = argparse.Namespace(model=str(path), tiny=False, device=str(device), threads=0,
                              decode_batches=[16, 64], decode_steps=4 if tiny else 16, prompt_len=64 if tiny else 256,
                              update_rows=8 if tiny else 32, update_new=16 if tiny else 256, micro_batch=8,
                              update_reps=1 if tiny else 3, no_update=False)
    r = limits.measure(args)
    return {"limits": r["limits"], "decode": r["decode"], "update": r["update"]}


def show(results: dict[str, Any]) -> None:
    print("\n=== gpu check summary ===")
    for name, r in results.items():
        if isinstance(r, dict) and "status" in r:
            detail = r.get("error") or ", ".join(f"{k}={_fmt(v)}" for k, v in r.items()
                                                 if k not in ("status", "seconds", "decode", "update", "limits"))
            print(f"{r['status']:7s} {name:24s} {r['seconds']:6.1f}s  {detail}")
    lim = results.get("limits") or {}
    if lim.get("status") == "ok":
        print(f"bf16 matmul peak {lim['limits']['matmul_bf16_gflops']:.0f} GFLOP/s, copy {lim['limits']['copy_gb_s']:.0f} GB/s")
        for d in lim["decode"]:
            print(f"decode ({d['path']}) batch {d['batch']}: {d['step_ms']:.2f} ms/step, {d['tokens_per_s']:.0f} tokens/s, "
                  f"{100 * d['fraction']:.0f}% of its bound")
        print(f"update: MFU {100 * lim['update']['mfu']:.1f}% of the measured bf16 peak")
    print(f"peak memory: device {_fmt(results.get('device_peak_mb'))} MB, process resident "
          f"{_fmt(results.get('process_peak_rss_mb'))} MB")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu_check.json, the model and the RL run")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model of the same family (dry run)")
    ap.add_argument("--test-timeout", type=int, default=180, help="seconds for pytest -m gpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (use --device cpu --tiny for a dry run)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from tirl.commands import quiet_transformers
    from tirl.resources import stage_peak

    quiet_transformers()
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                               "torch": torch.__version__, "tiny": args.tiny}
    with stage_peak() as mem:
        if device.type == "cuda":
            phase(results, "gpu_tests", lambda: gpu_tests(args.test_timeout))
        else:
            results["gpu_tests"] = {"status": "skipped", "seconds": 0.0, "why": "dry run on the CPU"}
        phase(results, "sandbox", sandbox_runs)
        model_dir = Path(tempfile.mkdtemp(prefix="model-", dir=out))
        if phase(results, "model", lambda: build_model(model_dir, args.tiny)) is not None:
            phase(results, "logprob_agreement", lambda: logprob_agreement(model_dir, device))
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            phase(results, "grpo", lambda: grpo_steps(model_dir, out / "rl", device, args.tiny))
            phase(results, "limits", lambda: device_limits(model_dir, device, args.tiny))
    results["device_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    results["process_peak_rss_mb"] = mem.peak_rss_mb
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    show(results)
    failed = [k for k, r in results.items() if isinstance(r, dict) and r.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
