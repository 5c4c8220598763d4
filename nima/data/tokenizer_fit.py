"""The tokenizer a preparation encodes with: given, pretrained, or fitted to the corpus.

- a path (a ``tokenizer.json``, or a folder with one): used as it is;
- ``gpt2``: GPT-2's own BPE (:mod:`nima.data.pretrained`);
- ``byte``: the 256 byte values and an end-of-text id;
- ``char``: the alphabet of the whole corpus (read on every core), so validation never meets an
  unknown character; an end-of-text id only when the corpus has several documents;
- ``bpe``: byte-level BPE trained on a sample of the train split of at most
  ``tokenizer_sample_bytes`` characters, taken evenly from every work unit (all of it when the
  corpus is smaller).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from nima.data.pretrained import PRETRAINED, pretrained_tokenizer
from nima.data.tokenizer import (
    MIN_BPE_VOCAB,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    load_tokenizer,
)
from nima.data.unit_encoding import run_units, training_sample, unit_alphabet
from nima.data.units import Plan
from nima.errors import DataError

TOKENIZER_KINDS = ("char", "byte", "bpe", *PRETRAINED)


def given_tokenizer(tokenizer: str | os.PathLike) -> Tokenizer | None:
    """The tokenizer saved at ``tokenizer`` (a tokenizer.json, or a folder holding one), or None
    when ``tokenizer`` names a kind (char, byte, bpe, gpt2) instead."""
    if str(tokenizer) in TOKENIZER_KINDS:
        return None
    path = Path(tokenizer).expanduser()
    if not (path.is_file() or (path / "tokenizer.json").is_file()):
        raise DataError(
            f"unknown tokenizer {str(tokenizer)!r}: choose one of {', '.join(TOKENIZER_KINDS)}, "
            "or give the path of a tokenizer.json (for example one that nima import wrote)"
        )
    return load_tokenizer(path)


def fit_tokenizer(
    kind: str,
    vocab_size: int | None,
    plan: Plan,
    *,
    data_dir: Path,
    val_fraction: float,
    sample_chars: int,
    workers: int,
    quiet: bool,
) -> Tokenizer:
    """The ``kind`` of tokenizer for the corpus that ``plan`` covers (see the module docstring)."""
    if kind in PRETRAINED:
        return pretrained_tokenizer(kind, data_dir)
    if kind == "byte":
        return ByteTokenizer(with_eot=True)
    if kind == "char":
        alphabets = run_units(unit_alphabet, plan.units, workers)
        return CharTokenizer(sorted(set("".join(alphabets))), with_eot=not plan.single_document)
    assert kind == "bpe" and vocab_size is not None
    if not quiet:
        print(f"training BPE ({vocab_size} ids) on up to {sample_chars:,} characters...", file=sys.stderr)
    # Each merge needs a pair of tokens in the text, and the trainer reserves room for the size it
    # is given: never ask for more ids than the sample has characters.
    corpus_chars = min(sample_chars, sum(unit.bytes for unit in plan.units))
    sample = training_sample(plan.units, val_fraction, sample_chars)
    return BPETokenizer.train(sample, min(vocab_size, MIN_BPE_VOCAB + corpus_chars))
