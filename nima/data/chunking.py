"""Cutting a text stream into pieces without changing how it tokenizes.

Byte-level BPE first splits text with GPT-2's pattern, where a word carries the space before it
(``" the"``). A cut between a non-space and a following whitespace character (``"word| next"``)
is a cut that pattern makes anyway, so encoding the pieces one by one gives exactly the ids of
encoding the whole text. Cutting anywhere else (``"word |next"``) would not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

# A cut goes between the two characters. The second is ASCII whitespace, which every regex engine
# agrees on; Python's \s alone would also match U+001C..U+001F, which the pre-tokenizer's engine
# treats as punctuation (so "!\x1c" is one pre-token and must not be cut).
_SAFE_CUT = re.compile(r"\S[ \t\n\r\f\v]")

PIECE_CHARS = 1024
"""Target piece length for batch encoding (``tokenizers`` is fastest on ~1 KiB inputs)."""

MAX_PIECE_CHARS = 1 << 20
"""A text with no safe cut in this many characters is cut anyway, to bound memory."""


def iter_pieces(
    blocks: Iterable[str], piece_chars: int = PIECE_CHARS, max_chars: int = MAX_PIECE_CHARS
) -> Iterator[str]:
    """Re-cut a stream of text blocks into pieces of about ``piece_chars`` at safe cuts.

    The pieces join back to exactly the input text. ``max_chars`` must be well above
    ``piece_chars``, or most cuts would be forced rather than safe.
    """
    if max_chars < 2 * piece_chars:
        raise ValueError(f"max_chars ({max_chars}) must be at least twice piece_chars ({piece_chars})")
    carry = ""
    for block in blocks:
        text = carry + block if carry else block
        start, end = 0, len(text)
        while end - start > piece_chars:
            match = _SAFE_CUT.search(text, start + piece_chars - 1)
            if match is None:
                if end - start <= max_chars:
                    break  # a safe cut may come with the next block
                cut = start + max_chars
            else:
                cut = min(match.start() + 1, start + max_chars)
            yield text[start:cut]
            start = cut
        carry = text[start:]
    if carry:
        yield carry
