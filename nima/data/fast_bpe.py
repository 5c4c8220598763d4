"""Optional fast BPE encoding: ``tiktoken`` built from Nima's own trained vocabulary.

Why: on a small CPU, Hugging Face ``tokenizers`` encodes about 1-2.5 MB of text per
core-second; ``tiktoken`` encodes the same vocabulary about three times faster, 8 MB per
core-second (measured in benchmarks/README.md). Preparation uses it when it is installed
(``pip install tiktoken``) and gives the same ids; otherwise it stays on ``tokenizers``.

Same ids? Both split text with GPT-2's pattern and then merge bytes, but by different rules:
``tokenizers`` applies its trained merge list in order, while ``tiktoken`` repeatedly joins the
adjacent pair whose joined bytes have the lowest id. For a vocabulary trained by ``tokenizers`` the
id of a merged token follows the merge order, so both usually take the same steps; a pair that
happens to join into a vocabulary entry without being that entry's own merge can still make them
differ on a rare word. So the fast path is used only under three checks:

1. layout: the tokenizer is built the way Nima trains one (byte-level GPT-2 split, no normalizer,
   plain BPE, every byte in the vocabulary, merged ids increasing in merge order);
2. the vocabulary: every entry that is valid text encodes to the same ids in both;
3. the corpus: the caller compares both on a sample of the real text
   (:mod:`nima.data.stream_encoders` checks the corpus' first 512 KiB and then one piece in 256,
   and a work unit with any difference is encoded again with ``tokenizers``).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from nima.data.chunking import iter_pieces

GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""GPT-2's pre-tokenizer pattern: what ``tokenizers``' ByteLevel pre-tokenizer uses."""

MAX_FAST_PIECE_CHARS = 100_000
"""Longer texts go to ``tokenizers``: tiktoken's regex engine runs out of backtracking stack (and
panics) on a run of about a million whitespace characters."""

REFERENCE_PIECE_CHARS = 1024
"""``tokenizers`` is fastest on ~1 KiB inputs, so the reference cuts longer texts (at safe cuts)."""


class FastBPEUnavailable(Exception):
    """The fast path cannot be used for this tokenizer; the message says why (one line)."""


def tiktoken_installed() -> bool:
    """Whether the optional ``tiktoken`` package can be imported."""
    try:
        import tiktoken  # noqa: F401  (lazy: optional; a missing or broken one means the slow path)
    except ImportError:
        return False
    return True


class FastBPE:
    """Encodes text with ``tiktoken`` built from a :class:`~nima.data.tokenizer.BPETokenizer`.

    Raises :class:`FastBPEUnavailable` when ``tiktoken`` is missing or the tokenizer fails the
    layout or vocabulary check. Special tokens written in the text (``<|endoftext|>``) become their
    special id, as ``tokenizers`` does. :meth:`reference` gives the ``tokenizers`` ids, for checks.
    """

    def __init__(self, tokenizer: Any):
        try:
            import tiktoken  # lazy: optional, preparation falls back to tokenizers without it
        except ImportError:
            raise FastBPEUnavailable("tiktoken is not installed") from None
        self._hf = tokenizer.hf_tokenizer
        spec = json.loads(self._hf.to_str())
        specials = _check_layout(spec)
        token_bytes = tokenizer.token_bytes
        special_ids = set(specials.values())
        ranks = {piece: i for i, piece in enumerate(token_bytes) if i not in special_ids}
        if len(ranks) != len(token_bytes) - len(specials):
            raise FastBPEUnavailable("two vocabulary entries have the same bytes")
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise FastBPEUnavailable(f"byte 0x{missing[0]:02x} has no id of its own")
        self._specials = frozenset(specials)
        self._encoding = tiktoken.Encoding(
            "nima-bpe", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials
        )
        self._to_numpy = hasattr(self._encoding, "encode_to_numpy")
        self._check_vocabulary(token_bytes, specials)

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` (uint32 array)."""
        if len(text) > MAX_FAST_PIECE_CHARS:
            return self.reference(text)
        try:
            if self._to_numpy:  # tiktoken >= 0.8: no Python list in between
                return self._encoding.encode_to_numpy(
                    text, allowed_special=self._specials, disallowed_special=()
                )
            ids = self._encoding.encode(text, allowed_special=self._specials, disallowed_special=())
            return np.asarray(ids, dtype=np.uint32)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # noqa: BLE001 - tiktoken's Rust panics derive from BaseException
            return self.reference(text)

    def reference(self, text: str) -> np.ndarray:
        """Token ids of ``text`` from ``tokenizers`` (the reference the fast path must match)."""
        pieces = list(iter_pieces([text], piece_chars=REFERENCE_PIECE_CHARS))
        encodings = self._hf.encode_batch_fast(pieces, add_special_tokens=False)
        if not encodings:
            return np.zeros(0, dtype=np.uint32)
        return np.concatenate([np.asarray(e.ids, dtype=np.uint32) for e in encodings])

    def agrees(self, text: str) -> bool:
        """Whether the fast path gives exactly the reference ids on ``text``."""
        return np.array_equal(self.encode(text), self.reference(text))

    def _check_vocabulary(self, token_bytes: list[bytes], specials: dict[str, int]) -> None:
        """Every entry that is valid text must encode the same way in both."""
        texts = []
        special_ids = set(specials.values())
        for i, piece in enumerate(token_bytes):
            if i in special_ids:
                continue
            try:
                texts.append(piece.decode("utf-8"))
            except UnicodeDecodeError:
                continue  # part of a multi-byte character: never met on its own
        texts.extend(specials)
        reference = self._hf.encode_batch_fast(texts, add_special_tokens=False)
        for text, expected in zip(texts, reference, strict=True):
            if self.encode(text).tolist() != expected.ids:
                raise FastBPEUnavailable(f"the vocabulary entry {text!r} encodes differently")


def _check_layout(spec: dict[str, Any]) -> dict[str, int]:
    """Check that a ``tokenizers`` JSON is laid out as Nima trains BPE; returns the special tokens."""
    pre = spec.get("pre_tokenizer") or {}
    if spec.get("normalizer") is not None:
        raise FastBPEUnavailable("the tokenizer has a normalizer")
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space"):
        raise FastBPEUnavailable("the pre-tokenizer is not GPT-2's byte-level split")
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout") or model.get("byte_fallback"):
        raise FastBPEUnavailable("the model is not plain byte-level BPE")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise FastBPEUnavailable("the BPE model marks word pieces")
    specials = {}
    for added in spec.get("added_tokens") or []:
        plain = not (added.get("lstrip") or added.get("rstrip") or added.get("single_word"))
        if not added.get("special") or added.get("normalized") or not plain:
            raise FastBPEUnavailable(f"the added token {added.get('content')!r} is not a plain special token")
        specials[added["content"]] = int(added["id"])
    vocab = model.get("vocab") or {}
    last = -1
    for merge in model.get("merges") or []:
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        merged = vocab.get(left + right)
        if merged is None or merged <= last:
            raise FastBPEUnavailable(f"the merge {left!r} + {right!r} is out of id order")
        last = merged
    return specials
