"""`tirl serve MODEL [--host H] [--port N]`: the OpenAI-compatible completions server (see `server.py`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve a local model (directory, hub name, or .gguf file) over an OpenAI-compatible "
        "/v1/completions endpoint (token-id prompts and vLLM's return_tokens_as_token_ids supported), "
        "for `tirl eval --server URL` or any OpenAI client. Binds to loopback by default: there is no "
        "authentication.")
    parser.add_argument("model", help="model directory, Hugging Face name, or path to a .gguf file")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--gguf-file", default=None, help="GGUF file name inside MODEL (a directory)")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (default: float32)")
    parser.add_argument("--served-model-name", default=None, help="name in /v1/models (default: MODEL)")
    parser.add_argument("--max-batch-size", type=int, default=32,
                        help="requests generated together at most (default: 32)")
    parser.add_argument("--cache-slots", type=int, default=16,
                        help="sequences whose KV cache is kept for the next tool turn; 0 = none (default: 16)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")


def run(args: argparse.Namespace) -> int:
    from tirl.generation.server import serve

    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    _quiet()
    serve(args.model, host=args.host, port=args.port, gguf_file=args.gguf_file, dtype=args.dtype,
          served_model_name=args.served_model_name, max_batch_size=args.max_batch_size,
          cache_slots=args.cache_slots)
    return 0


def _quiet() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
