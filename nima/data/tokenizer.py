"""Tokenizers: text <-> token ids, saved and loaded as JSON (never pickle).

Three kinds share one interface (:class:`Tokenizer`):

- ``char``: one id per character of the corpus' alphabet (built from the whole corpus, so the
  validation split never meets an unknown character); encoding any other character is a DataError.
- ``byte``: the 256 UTF-8 byte values plus an end-of-text token (id 256); needs no training.
- ``bpe``: byte-level BPE trained with Hugging Face ``tokenizers`` on the training split, with the
  special token ``<|endoftext|>``; imported models may also bring a SentencePiece-style BPE
  (Llama 2, Mistral: "▁" for spaces, ``<0xNN>`` byte fallback) with its own end-of-text token.

Byte and BPE tokenizers cover every Unicode string: ``decode(encode(text)) == text`` exactly.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from nima.errors import DataError
from nima.files import atomic_write_text

EOT_TEXT = "<|endoftext|>"
"""The end-of-text special token that separates documents (GPT-2's spelling)."""

TOKENIZER_FORMAT = "nima-tokenizer-v1"
MIN_BPE_VOCAB = 257
"""256 byte values plus the end-of-text token: the smallest byte-level BPE vocabulary."""
MAX_BPE_VOCAB = 1 << 22
"""Four million ids: several times the largest vocabularies in use (about 256k). The trainer
reserves room for the size asked up front, so a typo of a billion would ask for tens of GiB."""


class StreamDecoder:
    """Turns token ids into text as they arrive, for printing while a model generates.

    ``push(id)`` returns the text that is complete so far (possibly ``""``); a UTF-8 character
    split across several byte-level tokens is held back until its last byte arrives, so no
    half-character is ever printed. ``flush()`` returns what is left (incomplete bytes become
    U+FFFD).
    """

    def __init__(self, token_bytes: Sequence[bytes]):
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Add one token id; return the newly completed text."""
        return self._decoder.decode(self._token_bytes[int(token_id)])

    def push_many(self, token_ids: Iterable[int]) -> str:
        """Add several token ids; return the newly completed text."""
        return "".join(self.push(i) for i in token_ids)

    def flush(self) -> str:
        """End the stream: return any held-back bytes (as U+FFFD if they are incomplete)."""
        return self._decoder.decode(b"", final=True)


class Tokenizer:
    """Base class of every tokenizer: ``encode``, ``decode``, ``decode_stream``, JSON save/load.

    Attributes: ``kind`` ("char" | "byte" | "bpe"), ``vocab_size`` (ids are ``0..vocab_size-1``),
    ``eos_token_id`` (the end-of-text id, or None when the tokenizer has none).

    Streaming decode for generation::

        stream = tokenizer.decode_stream()
        for token_id in model.generate_stream(...):
            print(stream.push(token_id), end="", flush=True)
        print(stream.flush())
    """

    kind: str = ""
    vocab_size: int = 0
    eos_token_id: int | None = None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (the end-of-text token reads as ``<|endoftext|>``)."""
        return bytes_decode(b"".join(self.token_bytes[int(i)] for i in ids))

    def decode_stream(self) -> StreamDecoder:
        """A :class:`StreamDecoder` that yields printable text as ids arrive."""
        return StreamDecoder(self.token_bytes)

    @property
    def token_bytes(self) -> list[bytes]:
        """The UTF-8 bytes each id stands for (index = id)."""
        raise NotImplementedError

    @property
    def eot_text(self) -> str | None:
        """The end-of-text token as text, or None."""
        return EOT_TEXT if self.eos_token_id is not None else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready description that :func:`tokenizer_from_dict` reads back."""
        raise NotImplementedError

    def to_json(self) -> str:
        """The tokenizer as a JSON string (deterministic: same tokenizer, same string)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    def save(self, path: str | Path) -> Path:
        """Write the JSON to ``path`` atomically; returns the path."""
        return atomic_write_text(Path(path), self.to_json())

    def identity(self) -> dict[str, Any]:
        """What a checkpoint records to check that it is used with the same tokenizer."""
        digest = hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()
        return {"kind": self.kind, "vocab_size": self.vocab_size, "sha256": digest}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eos_token_id={self.eos_token_id})"


def bytes_decode(data: bytes) -> str:
    """UTF-8 decode that never fails: invalid sequences (from sampling) become U+FFFD."""
    return data.decode("utf-8", errors="replace")


class CharTokenizer(Tokenizer):
    """One id per character, ids in code-point order; optional end-of-text id after the characters."""

    kind = "char"

    def __init__(self, chars: Iterable[str], with_eot: bool = False):
        self.chars: list[str] = sorted(set(chars))
        bad = [c for c in self.chars if len(c) != 1]
        if bad:
            raise DataError(f"char tokenizer: vocabulary entries must be single characters, got {bad[0]!r}")
        if not self.chars:
            raise DataError("char tokenizer: the vocabulary is empty (is the corpus empty?)")
        self._index = {c: i for i, c in enumerate(self.chars)}
        self.eos_token_id = len(self.chars) if with_eot else None
        self.vocab_size = len(self.chars) + (1 if with_eot else 0)

    def encode(self, text: str) -> list[int]:
        index = self._index
        try:
            return [index[c] for c in text]
        except KeyError as err:
            raise DataError(
                f"char tokenizer has no id for the character {err.args[0]!r} (U+{ord(err.args[0]):04X}); "
                "it was not in the training corpus — use --tokenizer byte or bpe for open-ended text"
            ) from None

    @property
    def token_bytes(self) -> list[bytes]:
        table = [c.encode("utf-8", errors="surrogatepass") for c in self.chars]
        if self.eos_token_id is not None:
            table.append(EOT_TEXT.encode())
        return table

    def decode(self, ids: Sequence[int]) -> str:
        chars, eot = self.chars, self.eos_token_id
        try:
            return "".join(EOT_TEXT if i == eot else chars[i] for i in map(int, ids))
        except IndexError:
            bad = next(i for i in map(int, ids) if not 0 <= i < self.vocab_size)
            raise DataError(
                f"token id {bad} is outside the char vocabulary (size {self.vocab_size})"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TOKENIZER_FORMAT,
            "kind": "char",
            "chars": "".join(self.chars),
            "eot": self.eos_token_id is not None,
        }


class ByteTokenizer(Tokenizer):
    """The 256 UTF-8 byte values (id = byte value) plus end-of-text (id 256); no training needed."""

    kind = "byte"

    def __init__(self, with_eot: bool = True):
        self.eos_token_id = 256 if with_eot else None
        self.vocab_size = 257 if with_eot else 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8", errors="surrogatepass"))

    @property
    def token_bytes(self) -> list[bytes]:
        return _byte_table(self.eos_token_id is not None)

    def to_dict(self) -> dict[str, Any]:
        return {"format": TOKENIZER_FORMAT, "kind": "byte", "eot": self.eos_token_id is not None}


@lru_cache(maxsize=2)
def _byte_table(with_eot: bool) -> list[bytes]:
    return [bytes([b]) for b in range(256)] + ([EOT_TEXT.encode()] if with_eot else [])


@lru_cache(maxsize=1)
def byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in character for each byte (GPT-2's mapping), reversed."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    )
    stand_ins = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in stand_ins:
            stand_ins[b] = chr(256 + extra)
            extra += 1
    return {ch: b for b, ch in stand_ins.items()}


BYTE_LEVEL, SENTENCEPIECE = "byte_level", "sentencepiece"


def bpe_style(hf_tokenizer: Any) -> str | None:
    """How a ``tokenizers`` BPE spells bytes in its vocabulary, read from its decoder.

    ``"byte_level"``: every byte is a printable stand-in character (GPT-2, Qwen, Nima's own).
    ``"sentencepiece"``: pieces are UTF-8 text with "▁" for spaces, and bytes outside the
    vocabulary are ``<0xNN>`` tokens (Llama 2, Mistral, TinyLlama). None: anything else.
    """
    if type(hf_tokenizer.model).__name__ != "BPE" or hf_tokenizer.decoder is None:
        return None
    spec = json.loads(hf_tokenizer.decoder.__getstate__())
    steps = spec.get("decoders", []) if spec.get("type") == "Sequence" else [spec]
    kinds = {step.get("type") for step in steps}
    if "ByteLevel" in kinds:
        return BYTE_LEVEL
    if kinds & {"Metaspace", "ByteFallback"}:
        return SENTENCEPIECE
    return None


class BPETokenizer(Tokenizer):
    """BPE from Hugging Face ``tokenizers``: byte-level (what :meth:`train` makes, with the
    ``<|endoftext|>`` special token) or SentencePiece-style (imported with a Llama 2 or Mistral
    model, whose end-of-text token is ``</s>``: pass it as ``eos_token``).

    ``vocab_size`` is the size actually reached, which can be below the requested size on a small
    corpus (no more merges to learn).
    """

    kind = "bpe"

    def __init__(self, hf_tokenizer: Any, eos_token: str = EOT_TEXT):
        self._hf = hf_tokenizer
        self.style = bpe_style(hf_tokenizer)
        if self.style is None:
            raise DataError(
                "this tokenizers file is neither byte-level BPE (GPT-2, Qwen) nor SentencePiece-style "
                "BPE with byte fallback (Llama 2, Mistral); Nima cannot map its tokens to bytes"
            )
        self.vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_token = eos_token
        self.eos_token_id = hf_tokenizer.token_to_id(eos_token)
        self._token_bytes: list[bytes] | None = None

    @property
    def eot_text(self) -> str | None:
        return self.eos_token if self.eos_token_id is not None else None

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> BPETokenizer:
        """Learn a byte-level BPE vocabulary of (at most) ``vocab_size`` ids from ``texts``."""
        check_bpe_vocab_size(vocab_size)
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[EOT_TEXT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer)
        return cls(hf)

    @property
    def hf_tokenizer(self) -> Any:
        """The underlying ``tokenizers.Tokenizer`` (for batch encoding)."""
        return self._hf

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of several texts at once (encoded in parallel by ``tokenizers``)."""
        return [e.ids for e in self._hf.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        if self.style == SENTENCEPIECE:  # its decoder also drops the space "▁" added before the text
            return self._hf.decode([int(i) for i in ids], skip_special_tokens=False)
        return super().decode(ids)

    @property
    def token_bytes(self) -> list[bytes]:
        if self._token_bytes is None:
            special = {t.content for t in self._hf.get_added_tokens_decoder().values()}
            if self.style == BYTE_LEVEL:
                piece_bytes = _byte_level_piece_bytes()
            else:
                piece_bytes = _sentencepiece_piece_bytes
            table = []
            for i in range(self.vocab_size):
                piece = self._hf.id_to_token(i)
                table.append(piece.encode("utf-8") if piece in special else piece_bytes(piece))
            self._token_bytes = table
        return self._token_bytes

    def continuation_tokenizer(self) -> Any:
        """A ``tokenizers.Tokenizer`` for text that continues a document: SentencePiece-style
        tokenizers put a space ("▁") before every text they encode, which is right only at the
        start of a document; this copy leaves it out. Byte-level BPE adds nothing: itself."""
        if self.style != SENTENCEPIECE:
            return self._hf
        spec = json.loads(self._hf.to_str())
        normalizer = spec.get("normalizer") or {}
        if normalizer.get("type") == "Prepend":
            spec["normalizer"] = None
        elif normalizer.get("type") == "Sequence":
            normalizer["normalizers"] = [n for n in normalizer["normalizers"] if n.get("type") != "Prepend"]
        for part in (spec.get("pre_tokenizer"), spec.get("decoder")):
            steps = (part or {}).get("pretokenizers") or (part or {}).get("decoders") or [part or {}]
            for step in steps:
                if step.get("type") == "Metaspace":
                    step["prepend_scheme"] = "never"
                    step.pop("add_prefix_space", None)
        return HFTokenizer.from_str(json.dumps(spec))

    def to_dict(self) -> dict[str, Any]:
        data = {"format": TOKENIZER_FORMAT, "kind": "bpe", "hf_tokenizer": json.loads(self._hf.to_str())}
        if self.eos_token != EOT_TEXT:
            data["eos_token"] = self.eos_token
        return data


def _byte_level_piece_bytes() -> Callable[[str], bytes]:
    # Each stand-in character -> its byte, as a str.translate table: then latin-1 gives the bytes.
    to_bytes = {ord(ch): b for ch, b in byte_level_alphabet().items()}
    return lambda piece: piece.translate(to_bytes).encode("latin-1")


def _sentencepiece_piece_bytes(piece: str) -> bytes:
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            pass
    return piece.replace("\u2581", " ").encode("utf-8")


def check_bpe_vocab_size(vocab_size: int | None) -> int:
    """The BPE vocabulary size, or a DataError saying what is allowed."""
    if vocab_size is None:
        raise DataError("--tokenizer bpe needs --vocab_size N (for example --vocab_size 10000)")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_BPE_VOCAB:
        raise DataError(
            f"--vocab_size {vocab_size} is too small for byte-level BPE: it needs at least {MIN_BPE_VOCAB} "
            "(256 byte values + <|endoftext|>); try 1000 to 50000"
        )
    if vocab_size > MAX_BPE_VOCAB:
        raise DataError(
            f"--vocab_size {vocab_size} is more than Nima trains BPE to (at most {MAX_BPE_VOCAB:,} ids; "
            "vocabularies in use have 1,000 to 256,000)"
        )
    return vocab_size


def tokenizer_from_dict(data: dict[str, Any], source: str = "tokenizer") -> Tokenizer:
    """Rebuild a tokenizer from :meth:`Tokenizer.to_dict` output."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("format") != TOKENIZER_FORMAT:
        raise DataError(f"{source} is not a Nima tokenizer file (expected format {TOKENIZER_FORMAT!r})")
    if kind == "char":
        return CharTokenizer(data["chars"], with_eot=bool(data.get("eot")))
    if kind == "byte":
        return ByteTokenizer(with_eot=bool(data.get("eot", True)))
    if kind == "bpe":
        hf = HFTokenizer.from_str(json.dumps(data["hf_tokenizer"]))
        return BPETokenizer(hf, eos_token=data.get("eos_token", EOT_TEXT))
    raise DataError(f"{source}: unknown tokenizer kind {kind!r}; expected char, byte or bpe")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer saved with :meth:`Tokenizer.save` (a JSON file, or a prepared-data folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"tokenizer file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read tokenizer {path}: {err}") from None
    try:
        return tokenizer_from_dict(data, source=str(path))
    except (KeyError, TypeError, ValueError, Exception) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"tokenizer {path} is damaged: {err}") from None


def iter_token_bytes(tokenizer: Tokenizer, ids: Iterable[int]) -> Iterator[bytes]:
    """The bytes of each id in turn (for byte counts such as bits per byte)."""
    table = tokenizer.token_bytes
    for i in ids:
        yield table[int(i)]
