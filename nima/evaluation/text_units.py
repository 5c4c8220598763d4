"""Count the UTF-8 bytes and characters that a run of token ids stands for.

Bits per byte need the size of the scored text, not of the tokens. Byte-level tokenizers (``byte``,
byte-level ``bpe``) can split one character over several tokens, so decoding a slice of ids may
cut a character in half. Nima tokenizers expose ``token_bytes`` (the bytes of each id): we sum
those lengths (exact) and count characters with an incremental UTF-8 decoder. For other tokenizers
we decode in chunks and carry the tokens of an incomplete trailing character into the next chunk.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Any

import numpy as np

REPLACEMENT = "\ufffd"
_MAX_UTF8_TOKENS = 4  # a UTF-8 character spans at most 4 bytes, so at most 4 byte-level tokens


def _as_int_list(ids: Any) -> list[int]:
    if hasattr(ids, "tolist"):
        return [int(i) for i in ids.tolist()]
    return [int(i) for i in ids]


def count_text_units(tokenizer: Any, ids: Sequence[int], chunk_tokens: int = 65_536) -> tuple[int, int]:
    """Return ``(utf8_bytes, characters)`` of the text that ``ids`` decode to, in bounded memory.

    The end-of-text token counts as 0 bytes and 0 characters: it marks a boundary between
    documents rather than standing for text (its printed form ``<|endoftext|>`` is not in the corpus).
    """
    table = getattr(tokenizer, "token_bytes", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    if table is not None:
        table = list(table)
        if eos is not None and 0 <= eos < len(table):
            table[eos] = b""
        return _count_with_byte_table(table, ids, chunk_tokens)
    if eos is not None:
        ids = [i for i in _as_int_list(ids) if i != eos]
    return _count_by_decoding(tokenizer, ids, chunk_tokens)


def _count_with_byte_table(table: Sequence[bytes], ids: Sequence[int], chunk_tokens: int) -> tuple[int, int]:
    lengths = np.fromiter((len(b) for b in table), dtype=np.int64, count=len(table))
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    n_bytes = n_chars = 0
    for start in range(0, len(ids), chunk_tokens):
        chunk = np.asarray(_as_int_list(ids[start : start + chunk_tokens]), dtype=np.int64)
        n_bytes += int(lengths[chunk].sum())
        n_chars += len(decoder.decode(b"".join(table[i] for i in chunk.tolist())))
    n_chars += len(decoder.decode(b"", final=True))
    return n_bytes, n_chars


def _count_by_decoding(tokenizer: Any, ids: Sequence[int], chunk_tokens: int) -> tuple[int, int]:
    n_bytes = n_chars = 0
    carry: list[int] = []
    n = len(ids)
    for start in range(0, n, chunk_tokens):
        piece = carry + _as_int_list(ids[start : start + chunk_tokens])
        last = start + chunk_tokens >= n
        carry = []
        text = tokenizer.decode(piece)
        if not last and text.endswith(REPLACEMENT):
            # Possibly a character cut in half at the chunk edge: decode its tokens with the next chunk.
            for k in range(1, min(_MAX_UTF8_TOKENS, len(piece)) + 1):
                shorter = tokenizer.decode(piece[:-k])
                if not shorter.endswith(REPLACEMENT):
                    carry, text = piece[-k:], shorter
                    break
        n_bytes += len(text.encode("utf-8"))
        n_chars += len(text)
    return n_bytes, n_chars
