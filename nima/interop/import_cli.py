"""``nima import``: turn a Hugging Face model folder into a Nima checkpoint.

The result, ``<out>/checkpoints/model.pt`` with ``<out>/tokenizer.json``, works with ``nima eval``
and ``nima generate``: for example, to score GPT-2 on your own text as a baseline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nima.checkpoint import save_model_checkpoint
from nima.cli import CommandParser
from nima.errors import ConfigError
from nima.files import check_writable
from nima.inference.loading import describe_identity
from nima.interop.huggingface import import_huggingface

EXAMPLES = """examples:
  nima import --hf_model path/to/gpt2 --out experiments/gpt2
  nima eval --checkpoint experiments/gpt2/checkpoints/model.pt --text my_text.txt
  nima generate --checkpoint experiments/gpt2/checkpoints/model.pt --prompt "Hello"
"""


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="nima import",
        description="Read a Hugging Face model folder (GPT-2, Llama or Qwen3, safetensors, local) and "
        "write it as a Nima checkpoint with its tokenizer.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--hf_model", required=True, type=Path, help="folder with config.json and model.safetensors"
    )
    p.add_argument("--out", required=True, type=Path, help="run folder to write (checkpoints/model.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint there")
    return p


def main(argv: list[str]) -> int:
    """Run ``nima import``; returns the exit code (user errors raise NimaError)."""
    args = build_parser().parse_args(argv)
    target = args.out / "checkpoints" / "model.pt"
    for existing in (target, args.out / "tokenizer.json"):  # the two files an import writes
        if existing.exists() and not args.overwrite:
            raise ConfigError(f"{existing} already exists; choose another --out or add --overwrite")
    check_writable(target.parent, "--out")  # before the model is read
    model, tokenizer = import_huggingface(args.hf_model)
    if tokenizer is None:
        raise ConfigError(
            f"{args.hf_model}: its tokenizer.json is neither byte-level nor SentencePiece-style BPE (nor "
            "one Nima exported), so Nima cannot tokenize for it; use import_huggingface() from Python "
            "with your own token ids"
        )
    save_model_checkpoint(model, tokenizer, target, source={"huggingface": str(args.hf_model.resolve())})
    print(
        f"wrote {target}: {model.config.arch} family, {model.num_parameters() / 1e6:.2f}M parameters, "
        f"{describe_identity(tokenizer.identity())}",
        file=sys.stderr,
    )
    return 0
