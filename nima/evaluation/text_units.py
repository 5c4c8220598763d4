"""Count the UTF-8 bytes and characters that a run of token ids stands for.

Bits per byte need the size of the scored text, not of the tokens. Byte-level tokenizers (``byte``,
byte-level ``bpe``) can split one character over several tokens, so a chunk boundary may fall
inside a UTF-8 sequence; decoding such a chunk would count a replacement character instead of the
real bytes. We therefore hold back the trailing tokens of an incomplete sequence and decode them
with the next chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT = "\ufffd"
_MAX_UTF8_TOKENS = 4  # a UTF-8 character spans at most 4 bytes, so at most 4 byte-level tokens


def _as_int_list(ids: Any) -> list[int]:
    if hasattr(ids, "tolist"):
        return [int(i) for i in ids.tolist()]
    return [int(i) for i in ids]


def count_text_units(tokenizer: Any, ids: Sequence[int], chunk_tokens: int = 65_536) -> tuple[int, int]:
    """Return ``(utf8_bytes, characters)`` of ``tokenizer.decode(ids)``, decoding in chunks so that
    memory stays bounded for long streams."""
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
