"""Pretrained tokenizers by name: ``gpt2`` (GPT-2's byte-level BPE, 50,257 ids).

GPT-2's tokenizer is its two published files, ``encoder.json`` (token -> id) and ``vocab.bpe``
(the merges), the same files ``tiktoken`` reads for its ``gpt2`` encoding (checked by the same
sha256). They are looked for in ``<data_dir>/tokenizers/gpt2/``, then in the offline mirror
``$NIMA_DATA_MIRROR/tokenizers/gpt2/``, and downloaded into the first otherwise (once). The
tokenizer is built with Hugging Face ``tokenizers``, as ``transformers``' GPT-2 tokenizer is, and
saved as any other ``tokenizer.json``; preparation encodes with ``tiktoken`` when it is installed
(checked against ``tokenizers`` as for trained BPE).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from nima.data.sources import MIRROR_ENV, KnownDataset, fetch_known_dataset
from nima.data.tokenizer import EOT_TEXT, BPETokenizer
from nima.errors import DataError

PRETRAINED = ("gpt2",)
_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main"
GPT2_FILES = (
    KnownDataset(
        name="tokenizers/gpt2",
        url=f"{_BASE_URL}/encoder.json",
        sha256="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        filename="encoder.json",
    ),
    KnownDataset(
        name="tokenizers/gpt2",
        url=f"{_BASE_URL}/vocab.bpe",
        sha256="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        filename="vocab.bpe",
    ),
)


def pretrained_tokenizer(name: str, data_dir: Path) -> BPETokenizer:
    """The pretrained tokenizer ``name`` (see :data:`PRETRAINED`), fetched once into ``data_dir``."""
    if name != "gpt2":
        raise DataError(f"unknown pretrained tokenizer {name!r}; choose one of: {', '.join(PRETRAINED)}")
    paths = []
    for file in GPT2_FILES:
        try:
            paths.append(fetch_known_dataset(file, data_dir))
        except DataError as err:
            folder = Path(data_dir) / file.name
            raise DataError(
                f"the GPT-2 tokenizer is not available ({err}); put encoder.json and vocab.bpe from "
                f"{_BASE_URL}/ into {folder} (or into ${MIRROR_ENV}/{file.name})"
            ) from None
    return gpt2_style_tokenizer(paths[0], paths[1])


def gpt2_style_tokenizer(encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike) -> BPETokenizer:
    """A byte-level BPE tokenizer from files in GPT-2's format (any vocabulary in that format)."""
    try:
        vocab = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
        lines = Path(vocab_bpe).read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read the tokenizer files {encoder_json}, {vocab_bpe}: {err}") from None
    merges = [tuple(line.split(" ")) for line in lines[1:] if line.strip()]  # line 0: a version header
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    if EOT_TEXT in vocab:
        hf.add_special_tokens([EOT_TEXT])
    return BPETokenizer(hf)
