"""Tokenizers: exact round trips, JSON save/load, streaming decode, and safe chunking for BPE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nima.data import BPETokenizer, ByteTokenizer, CharTokenizer, load_tokenizer
from nima.data.chunking import iter_pieces
from nima.data.tokenizer import EOT_TEXT
from nima.errors import DataError

# Any Unicode string that UTF-8 can hold (lone surrogates are not text).
unicode_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def bpe(tiny_shakespeare_file: Path) -> BPETokenizer:
    text = tiny_shakespeare_file.read_text(encoding="utf-8")[:200_000]
    return BPETokenizer.train([text], vocab_size=600)


@FAST
@given(text=unicode_text)
def test_byte_round_trip_is_exact_on_any_unicode(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


@FAST
@given(text=unicode_text)
def test_bpe_round_trip_is_exact_on_any_unicode(bpe: BPETokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


@FAST
@given(data=st.data())
def test_char_round_trip_on_its_alphabet(data: st.DataObject) -> None:
    alphabet = data.draw(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)
    )
    tok = CharTokenizer(alphabet)
    text = data.draw(st.text(alphabet=sorted(set(alphabet)), max_size=100))
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text


def test_char_unknown_character_is_a_data_error_naming_it() -> None:
    tok = CharTokenizer("abc")
    with pytest.raises(DataError, match="'z'"):
        tok.encode("abz")


def test_vocab_sizes_and_end_of_text() -> None:
    assert ByteTokenizer().vocab_size == 257 and ByteTokenizer().eos_token_id == 256
    assert CharTokenizer("ba").vocab_size == 2 and CharTokenizer("ba").eos_token_id is None
    with_eot = CharTokenizer("ba", with_eot=True)
    assert with_eot.vocab_size == 3 and with_eot.eos_token_id == 2
    assert with_eot.decode([0, 2, 1]) == "a" + EOT_TEXT + "b"


def test_bpe_has_end_of_text_and_learns_merges(bpe: BPETokenizer) -> None:
    assert bpe.vocab_size == 600
    assert bpe.eos_token_id is not None
    assert bpe.decode([bpe.eos_token_id]) == EOT_TEXT
    text = "First Citizen:\nBefore we proceed any further, hear me speak."
    assert len(bpe.encode(text)) < len(text.encode()) / 2  # merges were learned


def test_bpe_vocab_too_small_is_rejected() -> None:
    with pytest.raises(DataError, match="at least 257"):
        BPETokenizer.train(["hello"], vocab_size=100)


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_save_and_load_round_trip(kind: str, bpe: BPETokenizer, tmp_path: Path) -> None:
    tok = {"char": CharTokenizer("hello wrd\n", with_eot=True), "byte": ByteTokenizer(), "bpe": bpe}[kind]
    path = tok.save(tmp_path / "tok.json")
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tok)
    assert loaded.vocab_size == tok.vocab_size and loaded.eos_token_id == tok.eos_token_id
    assert loaded.identity() == tok.identity()
    assert loaded.to_json() == tok.to_json()
    text = "hello world\n"
    assert loaded.encode(text) == tok.encode(text)
    assert load_tokenizer(tmp_path).kind == kind if path.name == "tokenizer.json" else True
    assert set(tok.identity()) == {"kind", "vocab_size", "sha256"}


def test_load_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        load_tokenizer(tmp_path / "bad.json")
    (tmp_path / "foreign.json").write_text(json.dumps({"kind": "char"}))
    with pytest.raises(DataError, match="not a Nima tokenizer"):
        load_tokenizer(tmp_path / "foreign.json")


@FAST
@given(text=unicode_text)
def test_stream_decoder_never_emits_half_characters(bpe: BPETokenizer, text: str) -> None:
    for tok in (ByteTokenizer(), bpe):
        stream = tok.decode_stream()
        parts = [stream.push(i) for i in tok.encode(text)]
        parts.append(stream.flush())
        assert "".join(parts) == text
        assert all("\ufffd" not in p for p in parts) or "\ufffd" in text


def test_stream_decoder_holds_back_a_split_character() -> None:
    stream = ByteTokenizer().decode_stream()
    euro = "€".encode()  # 3 bytes
    assert stream.push(euro[0]) == "" and stream.push(euro[1]) == ""
    assert stream.push(euro[2]) == "€"
    assert stream.push(0xE2) == "" and stream.flush() == "\ufffd"  # an incomplete tail is made visible


# Text with the spacing patterns that matter to GPT-2's pre-tokenizer: runs of spaces, CRLF, tabs.
chunky_text = st.lists(
    st.sampled_from(list("ab 1.\n\r\t'é€") + ["  ", "\r\n", " s", "'s", "\u3000"]), max_size=200
).map("".join)


@FAST
@given(
    text=chunky_text,
    piece=st.integers(min_value=1, max_value=40),
    block=st.integers(min_value=1, max_value=60),
)
def test_pieces_join_back_and_encode_like_the_whole(
    bpe: BPETokenizer, text: str, piece: int, block: int
) -> None:
    blocks = [text[i : i + block] for i in range(0, len(text), block)]
    pieces = list(iter_pieces(blocks, piece_chars=piece, max_chars=10_000))
    assert "".join(pieces) == text
    assert [i for p in pieces for i in bpe.encode(p)] == bpe.encode(text)


def test_pieces_are_bounded_without_whitespace() -> None:
    pieces = list(iter_pieces(["x" * 1000], piece_chars=10, max_chars=64))
    assert "".join(pieces) == "x" * 1000 and max(map(len, pieces)) == 64
