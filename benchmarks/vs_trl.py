"""tirl vs TRL: GRPO steps per second on the same model, prompts, batch, lengths, learning rate and threads.

    pip install -e ".[bench]"                     # TRL is a benchmark extra, never a tirl dependency
    python benchmarks/vs_trl.py                   # a random 4.3M-parameter Qwen2 built here, 8 x 8 x 64
    python benchmarks/vs_trl.py --model RUN/sft/model --reward boxed   # the demo's SFT model, mixed rewards
    python benchmarks/vs_trl.py --variant share-prompt --variant skip-zero   # ablation rows against one TRL

Two workloads. A random model (the default) earns the same reward on every sample: every GRPO group has
zero std, so its advantages are all 0. A trained model: `--model DIR` takes a model and its tokenizer
from one directory, e.g. the cold-start SFT model of a demo run (`tirl demo --run-dir RUN` writes it to
`RUN/sft/model`), trained on exactly this task (3-digit products, `--level 2`) and prompt format (ReTool
tags, no system prompt, the tokenizer's chat template: `--chat auto`, as the demo); TRL gets the same
rendered prompt text. Without its tool that model never gets a product right (math grade -1 on every
sample, at every level), so its groups are all zero-std too; `--reward boxed` (+1 for a `\\boxed{}` answer
within the budget: a format reward, the same function on both sides) gives it mixed rewards.

One invocation builds (or takes) one model directory and one prompt set, then runs TRL's `GRPOTrainer` and
`tirl train` on them one after the other, each in a fresh child process (so each has its own peak
memory and neither warms the other's caches), with the same torch threads. Both: GRPO, group size n,
prompts x n completions a step, at most `--new-tokens` new tokens sampled at temperature 1, one
optimizer step per batch, no KL, no reference model, the same reward, no tools
(tirl's rollout does not stop at its code tag; TRL's never does). Printed per run: median s/step over
the steps after the first (start-up excluded), completion tokens per second, peak resident memory of
the child, the share of zero-std groups, and the ratio. Check `cat /proc/loadavg` first; the load is
printed before and after.

Both sides compute the same loss: token-mean over every sampled token of the batch (TRL's default
`loss_type="dapo"`; tirl with `algorithm.filter_zero_advantage=false`, so groups whose rewards are all
equal stay in the normaliser as in TRL). The asymmetry: tirl runs no forward/backward for rows whose
advantage is 0 (`algorithm.skip_zero_advantage`, exact: those rows add nothing to the loss or the
gradient, and a step left with nothing to run still makes its zero-gradient optimizer step); TRL's
GRPO has no such skip and runs them. `--ablate skip-zero` turns it off. On the random model every
group has zero std, so tirl's update is all skipped there: read that workload with and without it.

The tool path (TRL `tools=[python]` vs tirl's sandbox) is `benchmarks/vs_trl_tools.py`: TRL 1.16 parses
tool calls only for chat templates it knows and needs a model that writes them, so that benchmark builds
its own model (TRL's Qwen2.5 template, cold-start SFT'd to call the tool) and shares this file's helpers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _problems(k: int, seed: int, level: int = 2) -> list:
    from tirl.tasks import generate

    return generate(k, split="train", seed=seed, level=level, kinds=("mul",))


def _prompts(tok, problems, chat: bool) -> list[str]:
    import dataclasses

    from tirl.formats import get_style
    from tirl.rollout import prompt_text

    style = dataclasses.replace(get_style("retool"), system_prompt="")
    return [prompt_text(tok, p.problem, style, chat=chat) for p in problems]


def boxed_reward(problem, response, trajectory, reference) -> float:
    """`--reward boxed`: +1 when the response ends with a `\\boxed{}` answer within the length budget, else -1
    (a format reward). On the demo's SFT model without its tool, the math grade is -1 on every sample,
    so every group would have zero std; this one varies. tirl's custom-reward signature; TRL calls it too."""
    from tirl.formats import extract_boxed

    return 1.0 if extract_boxed(response) is not None else -1.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def trl_config(a: dict, output_dir: str, **extra):
    """TRL's `GRPOConfig` matching tirl's run: batch, group size, budget, lr, steps, seed, GRPO clip range, no KL,
    one optimizer step per batch, constant lr, CPU, no logging or saving; `extra` adds mode-specific keys."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=output_dir, per_device_train_batch_size=a["prompts"] * a["n"], num_generations=a["n"],
        max_completion_length=a["new_tokens"], learning_rate=a["lr"], max_steps=a["steps"], logging_steps=1,
        report_to=[], use_cpu=True, temperature=1.0, top_p=1.0, beta=0.0, num_iterations=1,
        epsilon=0.2, epsilon_high=0.28, save_strategy="no", seed=a["seed"],
        gradient_accumulation_steps=1, dataloader_num_workers=0, shuffle_dataset=False,
        disable_tqdm=True, lr_scheduler_type="constant", warmup_steps=0,
        gradient_checkpointing=False,  # TRL's default is on; tirl's is off: compare the faster settings
        **extra,
    )


def step_clock(times: list[float]):
    """A TRL callback appending each optimizer step's wall time to `times`."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    return Clock()


def run_trl(a: dict, out: mp.Queue) -> None:
    import torch

    torch.set_num_threads(a["threads"])
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging
    from trl import GRPOTrainer

    from tirl.rewards import grade

    logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(a["model"])
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(a["model"], dtype=torch.float32)
    problems = _problems(a["prompts"] * a["steps"], a["seed"], a.get("level", 2))
    ds = Dataset.from_dict({"prompt": _prompts(tok, problems, a["chat"]), "answer": [p.answer for p in problems]})

    def reward(completions, answer, **_):
        if a.get("reward") == "boxed":
            return [boxed_reward(None, c, None, x) for c, x in zip(completions, answer)]
        return [grade(c, x) for c, x in zip(completions, answer)]

    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = trl_config(a, tmp, bf16=a["precision"] == "bf16")
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=ds, processing_class=tok,
                              callbacks=[step_clock(times)])
        gen_times: list[float] = []
        generate = trainer._generate  # TRL's sampling (tokenising, generate, decoding); the rest is the update

        def timed_generate(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return generate(*args, **kwargs)
            finally:
                gen_times.append(time.perf_counter() - t0)

        trainer._generate = timed_generate
        trainer.train()
        lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
        zero_std = [h["frac_reward_zero_std"] for h in trainer.state.log_history if "frac_reward_zero_std" in h]
    out.put({"step_s": times, "completion_tokens": [x * a["prompts"] * a["n"] for x in lengths],
             "peak_mb": _peak_mb(), "zero_std": zero_std,
             "split": {"generation": gen_times, "sandbox": [0.0] * len(times),
                       "update": [t - g for t, g in zip(times, gen_times)]}})


ABLATIONS = {
    "skip-zero": "run the forward/backward of zero-advantage rows too (as TRL does)",
    "share-prompt": "the update runs every sample's prompt (no prompt shared per group)",
    "shared-prefill": "each sample prefills its prompt (no prefix sharing)",
    "stop-ids": "stop strings found by decoding a window after every token",
    "fused-old": "a separate no-grad forward for the old log-probs",
    "masked-head": "full (B, T, V) logits over every position",
    "preallocated-cache": "the KV cache grows by concatenation at every decode step",
    "length-buckets": "micro-batches in the shuffled order, each padded to its longest row",
    "inverse-cdf": "tokens drawn by torch.multinomial",
}


# ablations that are config switches: their dotted overrides
ABLATION_OVERRIDES = {"skip-zero": "algorithm.skip_zero_advantage=false", "share-prompt": "trainer.share_prompt=false"}


def _ablate(names: list[str]) -> None:
    """Turn tirl's speed-ups off one by one (benchmark only), for the 'what bought what' rows."""
    import functools

    from tirl.algorithms import logprobs
    from tirl.generation import hf
    from tirl.train import rl_update

    for name in names:
        if name in ABLATION_OVERRIDES:
            continue  # passed to the run as an override
        elif name == "shared-prefill":
            hf.HFGenerator.__init__ = functools.partialmethod(hf.HFGenerator.__init__, share_prefix=False)
        elif name == "stop-ids":
            hf.HFGenerator._single_token_stops = lambda self, stops: {}
            hf.HFGenerator._may_end_stop = lambda self, token, ends: True
        elif name == "fused-old":
            rl_update.one_step_per_batch = lambda *a, **k: False
        elif name == "preallocated-cache":
            hf.HFGenerator.__init__ = functools.partialmethod(hf.HFGenerator.__init__, preallocate=False)
        elif name == "length-buckets":
            rl_update.micro_batches = lambda lengths, cap, call_cost=0: [
                list(range(s, min(s + cap, len(lengths)))) for s in range(0, len(lengths), cap)]
        elif name == "inverse-cdf":
            import torch

            hf._draw = lambda probs, gen: torch.multinomial(probs, 1, generator=gen)[:, 0]
        elif name == "masked-head":
            logprobs._split_head = lambda model: None
        else:
            raise SystemExit(f"--ablate: unknown {name!r}; one of {', '.join(ABLATIONS)}")


def _no_code_stop() -> None:
    """No tools: generation stops at EOS or the length budget only, as TRL's does. (With the sandbox
    merely capped at 0 calls, a random model that samples the `</code>` tag would pause there, get the
    cap message injected and resume in a second turn: more work than TRL does, for nothing.)"""
    import dataclasses

    from tirl.train import rl

    make_style = rl.make_style
    rl.make_style = lambda cfg: dataclasses.replace(make_style(cfg), stop="\x00no-tools\x00")


def run_tirl(a: dict, out: mp.Queue) -> None:
    import torch

    torch.set_num_threads(a["threads"])
    _ablate(a["ablate"])
    _no_code_stop()
    from tirl.commands import quiet_transformers

    quiet_transformers()
    problems = _problems(a["prompts"] * a["steps"], a["seed"], a.get("level", 2))
    _, res = train_tirl(a, problems, [
        'prompt.system_prompt=""', f"prompt.chat={str(a['chat']).lower()}", "rollout.max_tool_calls=0",
        *([f"reward.function={Path(__file__).resolve()}:boxed_reward", "reward.combine=replace"]
          if a.get("reward") == "boxed" else []),
        *(ABLATION_OVERRIDES[x] for x in a["ablate"] if x in ABLATION_OVERRIDES), *a["overrides"],
    ])
    out.put(res)


def train_tirl(a: dict, problems: list, overrides: list[str]) -> tuple[list[dict], dict]:
    """`tirl train` on `problems` with what both benchmarks match to TRL (GRPO, n samples, the budget,
    temperature 1, lr, threads, precision, TRL's clip range, one optimizer step a batch, and the
    normaliser counting all-equal groups too, though tirl still skips running them), then `overrides`.
    Returns the run's metrics rows and the result both report (step times, tokens, memory, split)."""
    from tirl.config import load_config
    from tirl.train.logger import read_metrics
    from tirl.train.rl import RLConfig, train_rl

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        data.write_text("".join(json.dumps({"id": p.id, "problem": p.problem, "answer": p.answer}) + "\n"
                                for p in problems))
        cfg = load_config(RLConfig, None, [
            f"model.path={a['model']}", f"data.train={data}", 'data.test=""', f"rollout.n={a['n']}",
            f"rollout.max_new_tokens={a['new_tokens']}", "rollout.stop_at_answer=false", "rollout.temperature=1.0",
            f"trainer.prompts_per_step={a['prompts']}", f"trainer.micro_batch_size={a['prompts'] * a['n']}",
            f"trainer.steps={a['steps']}", "trainer.save_every=0", "trainer.eval_size=0",
            f"trainer.threads={a['threads']}", f"trainer.optim.lr={a['lr']}", f"trainer.seed={a['seed']}",
            f"trainer.precision={a['precision']}", "algorithm.name=grpo", "algorithm.clip_low=0.2",
            "algorithm.clip_high=0.28", "algorithm.filter_zero_advantage=false", *overrides,
        ])
        train_rl(cfg, Path(tmp) / "run")
        ms = read_metrics(Path(tmp) / "run")
    split = {k: [float(m.get(key, 0.0)) for m in ms]
             for k, key in (("generation", "time/generation_s"), ("sandbox", "time/sandbox_s"),
                            ("update", "time/train_s"))}
    # sampled tokens only (with tools, as TRL's completion length counts them: its tool_mask)
    return ms, {"step_s": [float(m["time/step_s"]) for m in ms],
                "completion_tokens": [float(m.get("rollout/generated_tokens", 0.0)) for m in ms],
                "peak_mb": _peak_mb(), "split": split, "zero_std": [float(m["reward/frac_zero_std"]) for m in ms]}


def _child(fn, a: dict) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(a, q))
    p.start()
    res = q.get()
    p.join()
    return res


def summarise(name: str, r: dict) -> dict:
    """Medians over the steps after the first (which pays for start-up): robust to a neighbour's load spike."""
    steps = r["step_s"][1:] or r["step_s"]
    toks = r["completion_tokens"][1:] or r["completion_tokens"]
    s = statistics.median(steps)
    row = {"name": name, "s_per_step": s, "tokens_per_s": statistics.mean(toks) / statistics.mean(steps),
           "peak_mb": r["peak_mb"], "steps_measured": len(steps),
           "zero_std": statistics.mean(r["zero_std"]) if r["zero_std"] else float("nan")}
    for k, v in r["split"].items():
        row[k] = statistics.median(v[1:] or v)
    return row


def build_model(out: Path, hidden: int, layers: int) -> str:
    from tirl.formats import get_style
    from tirl.models import build_tiny_model
    from tirl.train.setup import DataConfig, tokenizer_corpus

    if not (out / "config.json").is_file():
        build_tiny_model(out, tokenizer_corpus(get_style("retool"), DataConfig(task_level=2)), hidden_size=hidden,
                         layers=layers, heads=4, kv_heads=2, intermediate_size=2 * hidden, seed=0)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: a random Qwen2 built here)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=7, help="with --hidden 256: 4.3M parameters")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8, help="GRPO group size")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reward", default="grade", choices=["grade", "boxed"],
                    help="grade: the math grader (tirl.rewards.grade); boxed: +1 for a \\boxed{} answer, a format "
                         "reward that varies within groups where the grade does not")
    ap.add_argument("--level", type=int, default=2, choices=[1, 2, 3],
                    help="products of 2-, 3- or 4-digit numbers (2: the demo's task)")
    ap.add_argument("--chat", default="auto", choices=["auto", "yes", "no"],
                    help="prompts through the tokenizer's chat template (auto: when it has one, as the demo does); "
                         "TRL gets the same rendered text as a plain prompt")
    ap.add_argument("--rounds", type=int, default=2, help="alternating TRL / tirl runs (default: 2)")
    ap.add_argument("--tirl-only", action="store_true", help="skip TRL (ablation rows of tirl alone)")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--ablate", action="append", default=[], choices=list(ABLATIONS),
                    help="turn one of tirl's speed-ups off (repeatable): " + "; ".join(
                        f"{k}: {v}" for k, v in ABLATIONS.items()))
    ap.add_argument("--variant", action="append", default=[], metavar="A[,B...]",
                    help="also run tirl with these ablations every round (repeatable), for ablation rows "
                         "measured against the same TRL runs")
    ap.add_argument("overrides", nargs="*", help="extra dotted overrides for the tirl run")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_model(Path(tmp) / "model", args.hidden, args.layers)
        a = {k: getattr(args, k) for k in ("prompts", "n", "new_tokens", "steps", "lr", "threads", "precision",
                                           "seed", "overrides", "ablate", "level", "reward")}
        a["model"] = model
        from transformers import AutoTokenizer

        a["chat"] = (args.chat == "yes" or
                     (args.chat == "auto" and AutoTokenizer.from_pretrained(model).chat_template is not None))
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(model)
        print(f"model: {args.model or 'random Qwen2'} (hidden {c.hidden_size}, {c.num_hidden_layers} layers, "
              f"vocab {c.vocab_size}); {args.prompts} prompts x {args.n} samples x {args.new_tokens} new tokens, "
              f"{args.steps} steps, lr {args.lr}, {args.threads} thread(s), {args.precision}, "
              f"chat template {'on' if a['chat'] else 'off'}, level {args.level}, reward {args.reward}")
        print(f"load average before: {' '.join(open('/proc/loadavg').read().split()[:3])}", flush=True)
        rows = []
        label = " ".join([*args.overrides, *(f"-{x}" for x in args.ablate)])
        variants = [[x.strip() for x in v.split(",") if x.strip()] for v in args.variant]
        for v in variants:
            for x in v:
                if x not in ABLATIONS:
                    raise SystemExit(f"--variant: unknown {x!r}; one of {', '.join(ABLATIONS)}")
        for r in range(args.rounds):  # alternate, so a change of load hits both sides
            if not args.tirl_only:
                rows.append(summarise(f"TRL GRPOTrainer [{r + 1}]", _child(run_trl, a)))
            rows.append(summarise(f"tirl train [{r + 1}]" + (f" ({label})" if label else ""), _child(run_tirl, a)))
            for v in variants:
                rows.append(summarise(f"tirl variant [{r + 1}] ({' '.join(f'-{x}' for x in v)})",
                                      _child(run_tirl, {**a, "ablate": [*a["ablate"], *v]})))
        print(f"load average after:  {' '.join(open('/proc/loadavg').read().split()[:3])}")
    print(f"{'':46s} {'s/step':>8s} {'compl. tok/s':>13s} {'peak MB':>8s} {'0-std':>6s}   "
          "split (generation / sandbox / update s)")
    for r in rows:
        split = (f"{r['generation']:.2f} / {r['sandbox']:.2f} / {r['update']:.2f}" if "update" in r else "")
        print(f"{r['name']:46s} {r['s_per_step']:8.2f} {r['tokens_per_s']:13.0f} {r['peak_mb']:8.0f} "
              f"{r['zero_std']:6.2f}   {split}")
    print("0-std: share of GRPO groups whose rewards are all equal (mean over all steps)")
    if not args.tirl_only:
        trl = statistics.median(r["s_per_step"] for r in rows if r["name"].startswith("TRL"))
        ours = statistics.median(r["s_per_step"] for r in rows if r["name"].startswith("tirl train"))
        print(f"tirl is {trl / ours:.2f}x faster per step than TRL (median s/step {ours:.2f} vs {trl:.2f})")
        for v in variants:
            tag = f"({' '.join(f'-{x}' for x in v)})"
            s_v = statistics.median(r["s_per_step"] for r in rows if r["name"].startswith("tirl variant")
                                    and r["name"].endswith(tag))
            print(f"tirl {tag} is {trl / s_v:.2f}x faster per step than TRL (median s/step {s_v:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
