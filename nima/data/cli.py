"""``nima prepare`` / ``python scripts/prepare_data.py``: text -> tokenizer + train.bin / val.bin."""

from __future__ import annotations

import argparse
import sys

from nima.cli import CommandParser
from nima.data.preparation import prepare
from nima.data.sources import KNOWN_DATASETS
from nima.errors import DataError


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        error_type=DataError,
        prog="nima prepare",
        description="Tokenize a corpus into train.bin / val.bin (+ tokenizer.json, meta.json) under "
        "<data_dir>/<dataset>/<tokenizer>/. Preparing again with the same inputs reuses the result.",
    )
    parser.add_argument(
        "--dataset",
        default="tiny_shakespeare",
        help=f"known dataset ({', '.join(KNOWN_DATASETS)}) or a path to a .txt file, "
        "a folder of .txt files, or a .jsonl file (default: tiny_shakespeare)",
    )
    parser.add_argument(
        "--tokenizer",
        default="char",
        help="char: one id per character; byte: 256 byte values + end-of-text; "
        "bpe: byte-level BPE trained on the training split (needs --vocab_size); or the path of a "
        "tokenizer.json to encode with as it is (e.g. one written by nima import, for fine-tuning)",
    )
    parser.add_argument("--vocab_size", type=int, default=None, help="BPE vocabulary size, e.g. 10000")
    parser.add_argument(
        "--data_dir",
        default=None,
        help="where raw and prepared data live (default: $NIMA_DATA_DIR, else experiments/data)",
    )
    parser.add_argument("--text_field", default="text", help="field holding the text in .jsonl lines")
    parser.add_argument("--encoding", default="utf-8", help="text encoding of the source (default: utf-8)")
    parser.add_argument(
        "--val_fraction",
        type=float,
        default=0.1,
        help="share of the text, from its end, kept for validation (default: 0.1)",
    )
    parser.add_argument("--force", action="store_true", help="prepare anew even if a matching result exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``nima prepare``; user errors raise :class:`~nima.errors.DataError` (exit code 2 in nima.cli)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.vocab_size is not None and args.tokenizer != "bpe":
        raise DataError(
            f"--vocab_size is only for --tokenizer bpe (the {args.tokenizer} vocabulary is fixed)"
        )
    data = prepare(
        args.dataset,
        args.tokenizer,
        vocab_size=args.vocab_size,
        data_dir=args.data_dir,
        encoding=args.encoding,
        text_field=args.text_field,
        val_fraction=args.val_fraction,
        quiet=args.quiet,
        force=args.force,
    )
    meta = data.meta
    verb = "already prepared" if data.reused else "prepared"
    print(
        f"{verb} {meta['dataset']} with the {data.tokenizer.kind} tokenizer "
        f"(vocab_size {data.tokenizer.vocab_size}, {data.dtype.name}) in {data.path}"
    )
    print(f"  train.bin: {data.train_tokens:,} tokens   val.bin: {data.val_tokens:,} tokens")
    return 0
