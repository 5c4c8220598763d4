"""``nima serve``: an OpenAI-compatible HTTP server for a trained checkpoint.

Prints one line saying where it listens and how to call it, then serves until SIGTERM or Ctrl-C
(requests in flight end with an error; nothing hangs).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from nima.cli import CommandParser
from nima.errors import ConfigError
from nima.inference.loading import add_loading_options, load_for_inference, set_threads
from nima.serving.server import ServeSettings, bind, run_server

EXAMPLES = """examples:
  nima serve --checkpoint experiments/quick_test/checkpoints/best_model.pt
  nima serve --checkpoint CKPT --port 8080 --max_batch 16 --api_key "$NIMA_API_KEY"
  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"prompt": "ROMEO:", "max_tokens": 50, "temperature": 0.8}'
The playground page is at http://127.0.0.1:8000/ (see docs/inference.md, "Serving").
"""


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="nima serve",
        description="Serve a checkpoint over HTTP with the OpenAI API (completions, chat, streaming) "
        "and a playground page.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file (.pt) written by training")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)"
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port)")
    p.add_argument(
        "--max_batch", type=int, default=8, help="requests generated together; more wait (default 8)"
    )
    p.add_argument(
        "--api_key",
        default=os.environ.get("NIMA_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 routes (default: $NIMA_API_KEY, else none)",
    )
    p.add_argument("--model_name", help="the model id clients use (default: from the checkpoint path)")
    p.add_argument(
        "--chat_template",
        type=Path,
        help="Jinja chat template (or tokenizer_config.json) for /v1/chat/completions "
        "(default: the tokenizer's own, else a plain 'User:/Assistant:' transcript)",
    )
    add_loading_options(p)
    return p


def main(argv: list[str]) -> int:
    """Run ``nima serve``; returns the exit code (user errors raise NimaError)."""
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} must be in 0..65535")
    settings = ServeSettings(
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        api_key=args.api_key,
        model_id=args.model_name,
        chat_template=args.chat_template,
    )
    if settings.max_batch < 1:
        raise ConfigError(f"--max_batch {settings.max_batch} must be at least 1")
    set_threads(args.threads)
    sock = bind(settings.host, settings.port)  # a busy port fails before the model is loaded
    try:
        loaded = load_for_inference(
            args.checkpoint, tokenizer=args.tokenizer, device=args.device, data_dir=args.data_dir
        )
        run_server(loaded, settings, sock)
    finally:
        sock.close()
    return 0
