"""`tirl convert [CONFIG] [key=value ...] --input FILE (--server URL --model-name NAME | --model PATH | --rules R) --run-dir DIR`.

Settings come from `ConvertConfig` defaults, then the YAML file, then dotted overrides, then the flags
below (a flag given on the command line wins). Builds the rewriter (`ChatRewriter` for a server,
`GeneratorRewriter` over `HFGenerator` for a local model, `RuleRewriter` for `rules`), a local sandbox
(or `--sandbox-url`), and
runs `tirl.convert.pipeline.convert_async` with a progress bar. Re-running the same command continues.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

FLAG_FIELDS = ("input", "style", "exec_mode", "output_check", "concurrency", "limit", "temperature",
               "max_tokens", "seed", "problem_field", "solution_field", "answer_field", "id_field",
               "exec_timeout_s", "skip_invalid", "rules", "layout", "number_format")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tirl.config import add_config_arguments, add_model_arguments

    parser.description = (
        "Rewrite text-only solutions into code-integrated SFT traces with an LLM (or by rules from GSM8K's "
        "calculator annotations or a per-problem equation: --rules), run every code block in the "
        "sandbox, put the real outputs in, and keep only traces whose outputs, format and final answer check "
        "out: accepted.jsonl (for tirl sft), rejected.jsonl (with reasons), summary.json. Resumable.")
    add_config_arguments(parser)
    llm = parser.add_argument_group("the rewriting LLM (one of)")
    llm.add_argument("--server", help="root URL of an OpenAI-compatible chat-completions server")
    llm.add_argument("--model-name", help="model to request from --server")
    llm.add_argument("--api-key-env", help="name of an environment variable holding the --server API key")
    llm.add_argument("--model", help="local transformers model directory (or .gguf) generating in-process")
    add_model_arguments(llm)
    llm.add_argument("--rules", choices=["calculator", "equation"],
                     help="no LLM: rewrite by rules, GSM8K's <<expr=result>> annotations (calculator) or one "
                          "arithmetic expression per problem (equation, with --solution-field equation); also "
                          "writes accepted_text.jsonl, the text-only twins")
    llm.add_argument("--layout", choices=["step", "program"], help="rules: one code call per calculation (step, "
                     "default) or one program per problem")
    llm.add_argument("--number-format", choices=["repr", "plain"], help="rules: outputs as Python prints them "
                     "(repr, default: 24.0) or float results printed with :.12g (plain: 24)")
    data = parser.add_argument_group("input and checks (flags override the config)")
    data.add_argument("--input", help="problems with solutions: .jsonl, .json, .parquet or a dataset")
    data.add_argument("--problem-field")
    data.add_argument("--solution-field")
    data.add_argument("--answer-field")
    data.add_argument("--id-field")
    data.add_argument("--limit", type=int, help="only the first N rows")
    data.add_argument("--skip-invalid", action="store_true", default=None, help="skip bad input rows (counted)")
    data.add_argument("--style", choices=["retool", "torl"], help="tag style of the traces (default: retool)")
    data.add_argument("--exec-mode", choices=["fresh", "session"], help="blocks as fresh programs (default) "
                      "or one session")
    data.add_argument("--output-check", choices=["numbers", "values", "exact", "none"],
                      help="written vs real output rule (default: numbers; values with --rules)")
    data.add_argument("--exec-timeout-s", type=float, help="seconds per code block (default: 10)")
    data.add_argument("--sandbox-url", help="a `tirl sandbox serve` / SandboxFusion server instead of a local sandbox")
    gen = parser.add_argument_group("sampling")
    gen.add_argument("--concurrency", type=int, help="items in flight (default: 8)")
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--max-tokens", type=int)
    gen.add_argument("--seed", type=int)
    parser.add_argument("--run-dir", default="runs/convert",
                        help="accepted.jsonl, rejected.jsonl, summary.json go here (default: runs/convert)")


def make_config(args: argparse.Namespace) -> Any:
    """ConvertConfig from defaults, CONFIG, key=value overrides, then the flags given (`tirl.commands`)."""
    from tirl.commands import command_config
    from tirl.convert.config import ConvertConfig

    return command_config(ConvertConfig, args, {name: name for name in FLAG_FIELDS})


def make_rewriter(args: argparse.Namespace, cfg: Any, items: list[Any]) -> tuple[Any, str]:
    from tirl.convert.llm import ChatRewriter, GeneratorRewriter

    if cfg.rules:
        from tirl.convert.rules import RuleRewriter
        from tirl.formats import get_style

        rw = RuleRewriter(items, cfg.rules, get_style(cfg.style), cfg.layout, cfg.number_format)
        return rw, f"rules:{cfg.rules}/{cfg.layout}/{cfg.number_format}"
    if args.server:
        if not args.model_name:
            raise ValueError("--server needs --model-name (the model the server serves)")
        key = None
        if args.api_key_env:
            key = os.environ.get(args.api_key_env)
            if not key:
                raise ValueError(f"environment variable {args.api_key_env} is not set")
        rw = ChatRewriter(args.server, args.model_name, temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                          max_concurrency=max(1, cfg.concurrency), api_key=key, seed=cfg.seed)
        return rw, f"{args.server}#{args.model_name}"
    from tirl.generation.hf import HFGenerator
    from tirl.models import check_device_and_precision, load_model, load_tokenizer

    check_device_and_precision(args.device, args.precision or "fp32")
    tok = load_tokenizer(args.model, gguf_file=args.gguf_file)
    model = load_model(args.model, gguf_file=args.gguf_file, dtype=args.dtype, device=args.device)
    rw = GeneratorRewriter(HFGenerator(model, tok, precision=args.precision or "fp32"), tok, temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                           seed=cfg.seed)
    return rw, str(args.model)


def run(args: argparse.Namespace) -> int:
    from tirl.commands import guarded

    return guarded("convert", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from tirl.commands import UserError, fail
    from tirl.convert.items import load_items
    from tirl.convert.pipeline import convert_async
    from tirl.jsonl import pretty
    from tirl.progress import progress

    try:
        cfg = make_config(args)
        if (bool(args.server) + bool(args.model) + bool(cfg.rules)) != 1:
            raise UserError("give exactly one of --server URL (with --model-name), --model PATH and --rules")
        items = load_items(cfg)
    except ValueError as e:  # ConfigError and DataError are ValueErrors too
        raise UserError(str(e)) from None
    sandbox = rewriter = None
    try:
        rewriter, model_id = make_rewriter(args, cfg, items)
        if args.sandbox_url:
            from tirl.sandbox import HttpSandbox

            sandbox = HttpSandbox(args.sandbox_url)
        else:
            from tirl.sandbox import Sandbox, SandboxConfig

            sandbox = Sandbox(SandboxConfig(timeout_s=cfg.exec_timeout_s,
                                            max_sessions=max(1, min(cfg.concurrency, 16))))
        counts = {"accepted": 0, "rejected": 0}
        with progress("convert", len(items)) as bar:
            def on_item(outcome: str) -> None:
                if outcome not in ("infra_error", "done_before"):
                    counts["accepted" if outcome == "accepted" else "rejected"] += 1
                bar.update(0, advance=1, info=f"accepted {counts['accepted']} rejected {counts['rejected']}")

            async def go() -> dict:
                try:
                    return await convert_async(cfg, rewriter, sandbox, args.run_dir, items=items,
                                               on_item=on_item, model_id=model_id,
                                               twin=rewriter.text_twin if cfg.rules else None)
                finally:
                    await rewriter.aclose()

            summary = asyncio.run(go())
    except (ValueError, OSError) as e:
        raise UserError(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from None
    finally:
        if sandbox is not None:
            sandbox.close()
    print(pretty(summary))
    print(f"accepted: {Path(args.run_dir) / 'accepted.jsonl'}; rejected: {Path(args.run_dir) / 'rejected.jsonl'}"
          + (f"; text twins: {Path(args.run_dir) / 'accepted_text.jsonl'}" if cfg.rules else ""))
    this_run = summary.get("this_run", {})
    failed = sum(this_run.get("infra_errors", {}).values())
    if failed and this_run.get("processed", 0) == 0:
        # Every request failed (server down, wrong model name...): not a conversion, an outage.
        examples = this_run.get("infra_error_examples") or ["no detail"]
        return fail("convert", f"all {failed} request(s) failed; first: {examples[0]}")
    return 0
