"""``nima prepare`` / ``python scripts/prepare_data.py``: a corpus -> tokenizer + token shards."""

from __future__ import annotations

import argparse
import sys

from nima.cli import CommandParser
from nima.data.preparation import DEFAULT_SAMPLE_BYTES, prepare
from nima.data.shards import DEFAULT_SHARD_TOKENS
from nima.data.sources import KNOWN_DATASETS
from nima.errors import DataError


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        error_type=DataError,
        prog="nima prepare",
        description="Tokenize a corpus into token shards train/*.bin, val/*.bin (+ tokenizer.json, "
        "meta.json) under <data_dir>/<dataset>/<tokenizer>/, on every core. Preparing again with the "
        "same inputs reuses the result; an interrupted preparation resumes where it stopped.",
    )
    parser.add_argument(
        "--dataset",
        default="tiny_shakespeare",
        help=f"known dataset ({', '.join(KNOWN_DATASETS)}), or a file, a folder (recursively) or a "
        "quoted glob of .txt, .md, .jsonl, .jsonl.gz, .jsonl.zst, .parquet files, or a folder saved by "
        "datasets' save_to_disk (default: tiny_shakespeare)",
    )
    parser.add_argument(
        "--tokenizer",
        default="char",
        help="char: one id per character; byte: 256 byte values + end-of-text; "
        "bpe: byte-level BPE trained on the training split (needs --vocab_size); gpt2: GPT-2's own "
        "BPE (50,257 ids, fetched once); or the path of a "
        "tokenizer.json to encode with as it is (e.g. one written by nima import, for fine-tuning)",
    )
    parser.add_argument("--vocab_size", type=int, default=None, help="BPE vocabulary size, e.g. 10000")
    parser.add_argument(
        "--data_dir",
        default=None,
        help="where raw and prepared data live (default: $NIMA_DATA_DIR, else experiments/data)",
    )
    parser.add_argument(
        "--text_field", default="text", help="field (jsonl) or column (parquet, datasets) holding the text"
    )
    parser.add_argument("--encoding", default="utf-8", help="text encoding of the source (default: utf-8)")
    parser.add_argument(
        "--val_fraction",
        type=float,
        default=0.1,
        help="share kept for validation: of the documents (whole ones, chosen by a hash of their "
        "text or, for a folder of text files, of their path), or of the text of a one-document "
        "corpus, from its end (default: 0.1)",
    )
    parser.add_argument(
        "--val_files", default=None, help="glob of the dataset's files that are the validation split"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="encoding processes (default: every core); same result"
    )
    parser.add_argument(
        "--shard_tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard (default: 10^8)"
    )
    parser.add_argument(
        "--tokenizer_sample_bytes",
        type=int,
        default=DEFAULT_SAMPLE_BYTES,
        help="BPE: train the tokenizer on at most this much text, spread over the corpus (default: 10^9)",
    )
    parser.add_argument(
        "--skip_bad_records",
        action="store_true",
        help="count and skip records that are not JSON or lack the text field, instead of stopping",
    )
    parser.add_argument(
        "--part",
        default=None,
        type=_part,
        help="K/N: encode only part K of N (for N machines); then run without --part to assemble",
    )
    parser.add_argument("--force", action="store_true", help="prepare anew even if a matching result exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _part(value: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--part must look like 2/8 (part K of N), got {value!r}") from None
    return k, n


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
        val_files=args.val_files,
        workers=args.workers,
        shard_tokens=args.shard_tokens,
        tokenizer_sample_bytes=args.tokenizer_sample_bytes,
        skip_bad_records=args.skip_bad_records,
        part=args.part,
        quiet=args.quiet,
        force=args.force,
    )
    if data is None:
        print(f"prepared part {args.part[0]}/{args.part[1]} of {args.dataset}")
        return 0
    meta = data.meta
    verb = "already prepared" if data.reused else "prepared"
    print(
        f"{verb} {meta['dataset']} with the {data.tokenizer.kind} tokenizer "
        f"(vocab_size {data.tokenizer.vocab_size}, {data.dtype.name}) in {data.path}"
    )
    encoded, seconds = meta.get("encoded") or {}, meta["timings"].get("encode_s") or 0.0
    if not data.reused and encoded.get("bytes") and seconds > 0:
        print(
            f"  encoded {encoded['bytes'] / 1e6:,.1f} MB in {seconds:.1f} s with {encoded['processes']} "
            f"process(es): {encoded['bytes'] / 1e6 / seconds:,.1f} MB/s, "
            f"{encoded['tokens'] / seconds / 1e6:,.2f}M tokens/s"
        )
    splits = meta["splits"]
    for split in ("train", "val"):
        print(
            f"  {split}: {splits[split]['tokens']:,} tokens, {splits[split]['documents']:,} documents, "
            f"{len(splits[split]['shards'])} shard(s)"
        )
    return 0
