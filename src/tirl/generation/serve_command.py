"""`tirl serve MODEL [--host H] [--port N]`: the OpenAI-compatible completions server (see `server.py`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from tirl.formats import PromptConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tirl.config import add_model_arguments

    parser.description = (
        "Serve a local model (directory, hub name, or .gguf file) over an OpenAI-compatible "
        "/v1/completions endpoint (token-id prompts and vLLM's return_tokens_as_token_ids supported) and "
        "/v1/chat/completions, for `tirl eval --server URL`, `tirl convert --server URL` or any OpenAI client. "
        "Chat messages are rendered with the prompt settings saved with the model (tirl.json), which "
        "prompt.* overrides replace. Binds to loopback by default: there is no authentication.")
    parser.add_argument("model", help="model directory, Hugging Face name, or path to a .gguf file")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="prompt settings, e.g. prompt.system_prompt='' prompt.chat=false")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    add_model_arguments(parser, "MODEL")
    parser.add_argument("--served-model-name", default=None, help="name in /v1/models (default: MODEL)")
    parser.add_argument("--max-batch-size", type=int, default=32,
                        help="requests generated together at most (default: 32)")
    parser.add_argument("--cache-slots", type=int, default=16,
                        help="sequences whose KV cache is kept for the next tool turn; 0 = none (default: 16)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")


@dataclass
class ServeConfig:
    """What `tirl serve` takes as dotted overrides: the `prompt` section every command shares."""

    prompt: PromptConfig = field(default_factory=PromptConfig)


def run(args: argparse.Namespace) -> int:
    from tirl.commands import guarded

    return guarded("serve", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from tirl.commands import (check_model_source, check_port_free, command_config, loading, quiet_transformers,
                               set_threads)
    from tirl.generation.server import serve
    from tirl.trained_settings import read_settings

    from tirl.models import check_device_and_precision

    check_model_source(args.model, "MODEL")
    check_device_and_precision(args.device, args.precision or "fp32")
    saved = read_settings(args.model)
    args.config = None
    cfg = command_config(ServeConfig, args, base={"prompt": saved["prompt"]} if "prompt" in saved else None)
    check_port_free(args.host, args.port)
    set_threads(args.threads)
    quiet_transformers()
    with loading("model", args.model):
        serve(args.model, host=args.host, port=args.port, gguf_file=args.gguf_file, dtype=args.dtype,
              served_model_name=args.served_model_name, max_batch_size=args.max_batch_size,
              cache_slots=args.cache_slots, prompt=cfg.prompt, device=args.device,
              precision=args.precision or "fp32")
    return 0
