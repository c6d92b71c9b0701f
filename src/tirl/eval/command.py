"""`tirl eval (--model PATH | --server URL) (--benchmark NAMES | --data FILE) [options] --run-dir DIR`.

Builds the generator (in-process transformers, or an OpenAI-compatible server), a sandbox that is
started only when the first code block needs it, loads the benchmarks, and runs `tirl.eval.evaluate`
(resumable: re-run the same command to continue). Prints the score table; files go to --run-dir.
`--tool off` runs no code (`tirl.eval.without_tool`); `--tool both` evaluates with and without it into
`tool_on/` and `tool_off/` and prints them side by side (`comparison.json`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Evaluate a model or server on math benchmarks with the code interpreter: avg@k, pass@k, maj@k and "
        "the tool-use statistics, per benchmark and overall. Resumable: re-run the same command with the same "
        "--run-dir to continue an interrupted evaluation. The papers' setting (ReTool): --n 32 "
        "--temperature 1.0 --top-p 0.7 --max-tokens 16384 (configs/eval_retool.yaml). Sampling settings "
        "come from the built-in defaults, then the settings saved with --model (tirl.json: prompt and tool "
        "loop as trained), then CONFIG, then key=value overrides (the same prompt.* and rollout.* keys as "
        "`tirl train`), then the flags below.")
    from tirl.config import add_config_arguments, add_model_arguments

    add_config_arguments(parser, example="rollout.n=4 rollout.temperature=1.0 prompt.system_prompt=''")
    S = argparse.SUPPRESS  # a flag the user did not give leaves the config's value alone
    src = parser.add_argument_group("what to evaluate")
    src.add_argument("--model", help="model directory, Hugging Face name, or .gguf file (in-process generation)")
    src.add_argument("--server", help="root URL of an OpenAI-compatible completions server (vLLM, SGLang, tirl serve)")
    src.add_argument("--tokenizer", help="tokenizer for --server (default: the model id the server lists)")
    src.add_argument("--served-model-name", help="model name to request from --server (default: its first)")
    add_model_arguments(src)
    src.add_argument("--prompt-mode", default="auto", choices=["auto", "tokens", "text"],
                     help="--server prompts as token ids (exact) or text (re-tokenised by the server)")
    src.add_argument("--max-concurrency", type=int, default=32, help="requests in flight to --server (default: 32)")
    data = parser.add_argument_group("problems")
    data.add_argument("--benchmark", default="", help="comma-separated names: aime24, aime25, math500, gsm8k, svamp "
                      "(the last two ship with tirl)")
    data.add_argument("--data", action="append", default=[],
                      help="JSONL/JSON/Parquet file with problem and answer fields (repeatable); named by its "
                      "stem, or by its rows' data_source (verl)")
    data.add_argument("--data-dir", help="directory holding <benchmark>.jsonl files (default: the dataset hub)")
    data.add_argument("--problem-field", default="problem",
                      help="problem field of --data files (default: problem, else TRL's / verl's prompt)")
    data.add_argument("--answer-field", default="answer", help="answer field of --data files (default: answer, "
                      "else solution, ground_truth or verl's reward_model.ground_truth)")
    data.add_argument("--id-field", default="id",
                      help="id field of --data files (default: id, else unique_id, else the row index)")
    data.add_argument("--limit", type=int, default=S, help="only the first N problems of each benchmark")
    data.add_argument("--skip-invalid", action="store_true", default=S,
                      help="skip malformed rows of --data files (their count is printed) instead of refusing the file")
    s = parser.add_argument_group("sampling and the tool loop")
    s.add_argument("--n", type=int, default=S, help="samples per problem (default: 1)")
    s.add_argument("--temperature", type=float, default=S, help="0 = greedy (default: 0)")
    s.add_argument("--top-p", type=float, default=S, help="nucleus mass (default: 1.0)")
    s.add_argument("--top-k", type=int, default=S, help="0 = off (default)")
    s.add_argument("--max-tokens", type=int, default=S, help="response budget incl. interpreter output (default: 4096)")
    s.add_argument("--max-tool-calls", type=int, default=S, help="code blocks run per response (default: 8)")
    s.add_argument("--max-output-chars", type=int, default=S, help="interpreter output kept per call (default: 256)")
    s.add_argument("--style", default=S, choices=["retool", "torl", "torl-fence"],
                   help="tag style (default: retool); torl-fence runs a python block when its fence closes")
    s.add_argument("--chat", default=S, action=argparse.BooleanOptionalAction,
                   help="use the tokenizer's chat template (default: when it has one)")
    s.add_argument("--seed", type=int, default=S, help="(default: 0)")
    s.add_argument("--batch-size", type=int, default=S, help="samples generated together (default: 16)")
    s.add_argument("--lenient", action="store_true", default=S, help="grade the last number when no \\boxed{} is found")
    s.add_argument("--tool", choices=["on", "off", "both"], default="on",
                   help="off: no code is run, a closed code block ends the response and the answer must come "
                        "from the model's own text; both: each benchmark with and without the tool, into "
                        "RUN_DIR/tool_on and RUN_DIR/tool_off, and the two side by side (comparison.json)")
    s.add_argument("--sandbox-url", help="use a `tirl sandbox serve` / SandboxFusion server instead of a local sandbox")
    s.add_argument("--exec-timeout", type=float, default=S, help="seconds per code call (default: sandbox's 10)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    parser.add_argument("--run-dir", default="runs/eval",
                        help="samples.jsonl, problems.jsonl, summary.json go here (default: runs/eval)")


FLAG_KEYS = {
    "n": "rollout.n", "temperature": "rollout.temperature", "top_p": "rollout.top_p", "top_k": "rollout.top_k",
    "max_tokens": "rollout.max_new_tokens", "max_tool_calls": "rollout.max_tool_calls",
    "max_output_chars": "rollout.max_output_chars", "seed": "rollout.seed", "exec_timeout": "rollout.exec_timeout",
    "style": "prompt.style", "chat": "prompt.chat", "batch_size": "batch_size", "lenient": "lenient",
    "limit": "limit", "skip_invalid": "skip_invalid",
}
"""Each flag is the dotted key it sets (flags win over the file and the overrides)."""


def load_all(args: argparse.Namespace) -> dict[str, list[Any]]:
    """Every requested benchmark's problems, by name (raises `DataError` saying where it looked)."""
    from tirl.data import DataError
    from tirl.eval import load_benchmark, load_benchmark_file, split_by_source

    out: dict[str, list[Any]] = {}
    for name in [b.strip() for b in args.benchmark.split(",") if b.strip()]:
        out[name] = load_benchmark(name, args.data_dir, limit=args.limit, skip_invalid=args.skip_invalid)
    for f in [x for d in args.data for x in d.split(",") if x.strip()]:
        problems = load_benchmark_file(f, limit=args.limit, problem_field=args.problem_field,
                                       answer_field=args.answer_field, id_field=args.id_field,
                                       skip_invalid=args.skip_invalid)
        # rows skipped with --skip-invalid are counted by the loader's warning (tirl.data.rows.collect)
        groups = split_by_source(Path(f).stem, problems)  # verl's data_source: one score row per source
        for name in groups.keys() & out.keys():
            raise DataError(f"two benchmarks named {name!r}; rename {f} (or its data_source)")
        out.update(groups)
    if not out:
        raise DataError("nothing to evaluate: give --benchmark NAME[,NAME] and/or --data FILE")
    return out


class LazySandbox:
    """A sandbox started on the first code block: a model that never writes code never pays for one."""

    def __init__(self, url: str | None = None):
        self.url, self._sb = url, None

    def run_batch(self, codes: list[str], timeout: float | None = None) -> list[Any]:
        if self._sb is None:
            from tirl.sandbox import HttpSandbox, Sandbox, SandboxConfig
            from tirl.sandbox.isolation import describe

            self._sb = HttpSandbox(self.url) if self.url else Sandbox(SandboxConfig())
            print(f"sandbox: {describe(self.isolation)}", file=sys.stderr, flush=True)
        return self._sb.run_batch(codes) if timeout is None else self._sb.run_batch(codes, timeout=timeout)

    @property
    def isolation(self) -> dict | None:
        """The sandbox's isolation report; None while no code block has started it."""
        return self._sb.isolation if self._sb is not None else None

    def close(self) -> None:
        if self._sb is not None:
            self._sb.close()


def make_generator(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """(generator, tokenizer, model id) for --model or --server."""
    from tirl.models import load_tokenizer

    if args.server:
        from tirl.generation.openai import OpenAIGenerator

        tok_src = args.tokenizer
        probe = None
        if tok_src is None:  # the server's model id is usually a path or hub name the tokenizer loads from
            probe = OpenAIGenerator(args.server, None, model=args.served_model_name, prompt_mode=args.prompt_mode)
            tok_src = probe.model
            probe.close()
        tok = load_tokenizer(tok_src)
        gen = OpenAIGenerator(args.server, tok, model=args.served_model_name, prompt_mode=args.prompt_mode,
                              max_concurrency=args.max_concurrency)
        return gen, tok, f"server:{args.server}/{gen.model}"
    from tirl.generation.hf import HFGenerator
    from tirl.models import check_device_and_precision, load_model

    check_device_and_precision(args.device, args.precision or "fp32")
    tok = load_tokenizer(args.model, gguf_file=args.gguf_file)
    model = load_model(args.model, gguf_file=args.gguf_file, dtype=args.dtype, device=args.device)
    model_id = str(args.model) + (f"#{args.gguf_file}" if args.gguf_file else "")
    return HFGenerator(model, tok, max_batch_size=args.batch_size, precision=args.precision or "fp32"), tok, model_id


def run(args: argparse.Namespace) -> int:
    from tirl.commands import guarded

    return guarded("eval", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    run_evaluation(args)
    return 0


def run_evaluation(args: argparse.Namespace) -> dict[str, Any]:
    """What `tirl eval` does with its arguments: {"on" / "off": summary} (and "comparison" for --tool
    both); the tables are printed, the files written. `tirl.evaluate` calls it too."""
    from tirl.commands import (UserError, check_model_source, command_config, loading, quiet_transformers,
                               set_threads)
    from tirl.eval import EvalConfig, evaluate
    from tirl.eval.table import render_table
    from tirl.generation.openai import ServerError
    from tirl.trained_settings import read_settings

    if bool(args.model) == bool(args.server):
        raise UserError("give exactly one of --model PATH_OR_NAME and --server URL")
    check_model_source(args.model, "--model")
    cfg = command_config(EvalConfig, args, FLAG_KEYS, base=read_settings(args.model))
    try:
        cfg.validate()
    except ValueError as e:
        raise UserError(str(e)) from None
    if cfg.rollout.exec_cache != "off" or cfg.rollout.exec_record:
        raise UserError("rollout.exec_cache and rollout.exec_record are tirl train settings; tirl eval runs "
                        "every program and keeps no execution record")
    if cfg.rollout.n > 1 and cfg.rollout.temperature == 0:
        print(f"tirl eval: warning: rollout.n={cfg.rollout.n} with temperature 0 (greedy) repeats one answer "
              f"{cfg.rollout.n} times; set --temperature > 0 for pass@k / maj@k", file=sys.stderr)
    args.limit, args.batch_size, args.skip_invalid = cfg.limit, cfg.batch_size, cfg.skip_invalid
    problems = load_all(args)
    set_threads(args.threads)
    quiet_transformers()
    if args.tool != "on" and hasattr(args, "max_tool_calls"):
        raise UserError(f"--tool {args.tool} decides the tool calls; drop --max-tool-calls")
    runs = tool_runs(args.tool, cfg, Path(args.run_dir))
    sandbox = LazySandbox(args.sandbox_url)
    gen = None
    summaries = {}
    try:
        with loading("model", args.model or args.server):
            gen, tok, model_id = make_generator(args)
        for mode, (run_cfg, run_dir) in runs.items():
            summaries[mode] = evaluate(gen, tok, sandbox, problems, run_cfg, run_dir, model_id=model_id)
            render_table(summaries[mode])
            print(f"samples: {run_dir / 'samples.jsonl'}; summary: {run_dir / 'summary.json'}"
                  + (f" ({summaries[mode]['resumed_samples']} samples resumed)"
                     if summaries[mode]["resumed_samples"] else ""))
    except (ValueError, ServerError, OSError) as e:  # settings mismatch, 4xx, unreachable server, bad path
        raise UserError(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from None
    finally:
        sandbox.close()
        if gen is not None and hasattr(gen, "close"):
            gen.close()
    if len(summaries) == 2:
        from tirl.eval.summary import tool_comparison
        from tirl.eval.table import render_comparison
        from tirl.jsonl import write_json

        comparison = tool_comparison(summaries["on"], summaries["off"])
        write_json(Path(args.run_dir) / "comparison.json", comparison)
        render_comparison(comparison)
        print(f"comparison: {Path(args.run_dir) / 'comparison.json'}")
        summaries["comparison"] = comparison
    return summaries


def tool_runs(tool: str, cfg: Any, run_dir: Path) -> dict[str, tuple[Any, Path]]:
    """{"on" / "off": (its config, its run directory)} for `--tool on | off | both`."""
    from tirl.eval import without_tool

    if tool == "both":
        return {"on": (cfg, run_dir / "tool_on"), "off": (without_tool(cfg), run_dir / "tool_off")}
    return {tool: (cfg if tool == "on" else without_tool(cfg), run_dir)}
