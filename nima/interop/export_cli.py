"""``nima export``: write a checkpoint as a Hugging Face ``transformers`` model folder.

The folder is written next to its destination under a temporary name and renamed into place when
complete, so an interrupted export never leaves a half-written model, and an existing folder is
replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from nima.cli import CommandParser
from nima.errors import ConfigError
from nima.files import check_writable
from nima.inference.loading import add_loading_options, describe_identity, load_for_inference
from nima.interop.huggingface import export_huggingface

EXAMPLES = """examples:
  nima export --checkpoint experiments/checkpoints/best_model.pt --out experiments/hf_model
  python -c "from transformers import AutoModelForCausalLM, AutoTokenizer; \\
             m = AutoModelForCausalLM.from_pretrained('experiments/hf_model'); \\
             t = AutoTokenizer.from_pretrained('experiments/hf_model')"
"""


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(
        prog="nima export",
        description="Write a checkpoint (model and tokenizer) as a Hugging Face transformers folder: "
        "config.json, model.safetensors, tokenizer.json. gpt2 models become GPT2LMHeadModel, llama "
        "models LlamaForCausalLM (Qwen3ForCausalLM with qk_norm).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file (.pt) written by training")
    p.add_argument("--out", required=True, type=Path, help="folder to write (created)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    add_loading_options(p, device=False)
    return p


def main(argv: list[str]) -> int:
    """Run ``nima export``; returns the exit code (user errors raise NimaError)."""
    args = build_parser().parse_args(argv)
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a folder; choose another --out")
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out} already exists; choose another --out or add --overwrite")
    check_writable(out, "--out")  # before the checkpoint is loaded
    loaded = load_for_inference(
        args.checkpoint, tokenizer=args.tokenizer, device="cpu", data_dir=args.data_dir
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as err:
        raise ConfigError(f"--out {out} cannot be written: {err.strerror or err}; choose another") from None
    try:
        export_huggingface(loaded.model, staging, loaded.tokenizer)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    arch = json.loads((out / "config.json").read_text(encoding="utf-8"))["architectures"][0]
    print(
        f"wrote {out}: {arch}, {loaded.model.num_parameters() / 1e6:.2f}M parameters, "
        f"{describe_identity(loaded.tokenizer.identity())}",
        file=sys.stderr,
    )
    return 0
