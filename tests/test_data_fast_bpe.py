"""The optional tiktoken fast path for BPE: same ids as ``tokenizers``, or it is not used.

Tests that need tiktoken skip without it; the fallback tests run either way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nima.data import BPETokenizer, prepare, stream_encoders
from nima.data import fast_bpe as fast_bpe_module
from nima.data import preparation as prepare_module
from nima.data.chunking import iter_pieces
from nima.data.fast_bpe import FastBPE, FastBPEUnavailable
from nima.data.tokenizer import EOT_TEXT, tokenizer_from_dict

needs_tiktoken = pytest.mark.skipif(
    not fast_bpe_module.tiktoken_installed(), reason="tiktoken is not installed (optional)"
)
SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

CODE = '''
class Widget:
    """A thing."""

    def __init__(self, size: int = 10) -> None:
\tself.size = size  # tabs, too
        if size > 3:
            return   {"a": [1, 2, 3]}
'''


@pytest.fixture(scope="module")
def bpe(tiny_shakespeare_file: Path) -> BPETokenizer:
    # Prose plus indented code, so that merges of whitespace runs are learned as well.
    text = tiny_shakespeare_file.read_text(encoding="utf-8")[:150_000]
    return BPETokenizer.train([text, CODE * 200, "café naïve 東京 😀 déjà vu " * 50], vocab_size=1200)


@pytest.fixture(scope="module")
def fast(bpe: BPETokenizer) -> FastBPE:
    if not fast_bpe_module.tiktoken_installed():
        pytest.skip("tiktoken is not installed (optional)")
    return FastBPE(bpe)


def _hf_ids(bpe: BPETokenizer, text: str) -> list[int]:
    return bpe.hf_tokenizer.encode(text, add_special_tokens=False).ids


# Text built from the parts that matter to GPT-2's pre-tokenizer: whitespace runs of every kind
# (including Unicode spaces and U+001C..U+001F, which Python calls space and the regex does not),
# contractions, digits, punctuation, the end-of-text token written as text, and any Unicode.
whitespace = st.text(alphabet=" \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u2000\u2028\u3000", min_size=1, max_size=12)
parts = st.one_of(
    whitespace,
    st.sampled_from(["'s", "'ll", "'T", "123", "4.5", "the", " the", "Widget", "<|", "|>", EOT_TEXT]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8),
)
corpus_like = st.lists(parts, max_size=40).map("".join)


@needs_tiktoken
@SETTINGS
@given(text=corpus_like)
def test_fast_path_gives_the_reference_ids(bpe: BPETokenizer, fast: FastBPE, text: str) -> None:
    assert fast.encode(text).tolist() == _hf_ids(bpe, text)


@needs_tiktoken
@SETTINGS
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_fast_path_on_any_unicode(bpe: BPETokenizer, fast: FastBPE, text: str) -> None:
    assert fast.encode(text).tolist() == _hf_ids(bpe, text)


@needs_tiktoken
def test_special_tokens_and_long_runs(bpe: BPETokenizer, fast: FastBPE, monkeypatch) -> None:
    text = f"end.{EOT_TEXT}Next {EOT_TEXT}\n\n  {EOT_TEXT}{EOT_TEXT}<|endof"
    ids = fast.encode(text).tolist()
    assert ids == _hf_ids(bpe, text) and ids.count(bpe.eos_token_id) == 4
    for long in (" " * 150_000 + "x", "\n" * 5000 + "a" * 5000, CODE * 300):
        assert fast.encode(long).tolist() == fast.reference(long).tolist() == _hf_ids(bpe, long)
    # A whitespace run of a million characters makes tiktoken's regex panic; it is not fatal.
    monkeypatch.setattr(fast_bpe_module, "MAX_FAST_PIECE_CHARS", 10**9)
    huge = " " * 1_100_000 + "x"
    assert fast.encode(huge).tolist() == fast.reference(huge).tolist()
    assert fast.agrees("still works after a panic")


def _edited(bpe: BPETokenizer, edit) -> BPETokenizer:
    data = bpe.to_dict()
    edit(data["hf_tokenizer"])
    return tokenizer_from_dict(json.loads(json.dumps(data)))


@needs_tiktoken
def test_layouts_it_cannot_reproduce_are_refused(bpe: BPETokenizer) -> None:
    def swap_merges(spec):
        merges = spec["model"]["merges"]
        merges[300], merges[301] = merges[301], merges[300]

    def add_normalizer(spec):
        spec["normalizer"] = {"type": "Lowercase"}

    def prefix_space(spec):
        spec["pre_tokenizer"]["add_prefix_space"] = True

    for edit, reason in [
        (swap_merges, "out of id order"),
        (add_normalizer, "normalizer"),
        (prefix_space, "byte-level split"),
    ]:
        with pytest.raises(FastBPEUnavailable, match=reason):
            FastBPE(_edited(bpe, edit))


def test_without_tiktoken_it_is_unavailable(bpe: BPETokenizer, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import fails
    assert not fast_bpe_module.tiktoken_installed()
    with pytest.raises(FastBPEUnavailable, match="not installed"):
        FastBPE(bpe)


def test_chunks_are_never_cut_before_a_character_the_regex_calls_punctuation() -> None:
    # Python's \s matches U+001C, GPT-2's pre-tokenizer does not: "!\x1c" is one pre-token, and a
    # vocabulary trained on it has the merge, so cutting there would change the ids.
    tok = BPETokenizer.train(["!\x1c !\x1c\x1c a!\x1c " * 300], vocab_size=270)
    text = "a!\x1c b!\x1c\x1c c " * 50
    pieces = list(iter_pieces([text], piece_chars=2, max_chars=10_000))
    assert "".join(pieces) == text
    assert [i for p in pieces for i in tok.encode(p)] == tok.encode(text)
    with pytest.raises(ValueError, match="twice"):  # forced cuts everywhere would change ids
        list(iter_pieces([text], piece_chars=1000, max_chars=1000))


def _corpus(tmp_path: Path, tiny_shakespeare_file: Path) -> Path:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a_play.txt").write_text(tiny_shakespeare_file.read_text(encoding="utf-8")[:300_000])
    (folder / "b_code.txt").write_text(CODE * 400 + f"literal {EOT_TEXT} inside\n")
    (folder / "c_world.txt").write_text("東京は晴れ。 Ünïcödé  text\u3000here\x1c!\n" * 500)
    return folder


def _ids(data) -> np.ndarray:
    return np.concatenate([np.asarray(data.tokens("train")), np.asarray(data.tokens("val"))])


@needs_tiktoken
def test_prepare_uses_the_fast_path_and_matches_tokenizers(
    tmp_path: Path, tiny_shakespeare_file: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(prepare_module, "FAST_BPE_MIN_BYTES", 0)  # small corpus, fast path all the same
    corpus = _corpus(tmp_path, tiny_shakespeare_file)
    fast = prepare(corpus, "bpe", vocab_size=800, data_dir=tmp_path / "fast", workers=1)
    assert fast.meta["encoder"].startswith("tiktoken")

    monkeypatch.setitem(sys.modules, "tiktoken", None)
    slow = prepare(corpus, "bpe", vocab_size=800, data_dir=tmp_path / "slow", workers=1)
    assert slow.meta["encoder"] == "tokenizers"
    assert slow.tokenizer.to_json() == fast.tokenizer.to_json()
    assert np.array_equal(_ids(fast), _ids(slow))
    assert (slow.train_tokens, slow.val_tokens) == (fast.train_tokens, fast.val_tokens)
    assert "tiktoken" not in capsys.readouterr().err  # quiet: no install hint


@needs_tiktoken
def test_a_difference_on_the_corpus_falls_back_to_tokenizers(
    tmp_path: Path, tiny_shakespeare_file: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(prepare_module, "FAST_BPE_MIN_BYTES", 0)  # small corpus, fast path all the same
    corpus = _corpus(tmp_path, tiny_shakespeare_file)
    reference = prepare(corpus, "bpe", vocab_size=300, data_dir=tmp_path / "ref", workers=1)
    real_encode = FastBPE.encode

    def wrong_on_code(self, text):  # a disagreement deep in the corpus (a spot-checked unit)
        ids = real_encode(self, text)
        return ids[::-1].copy() if "class Widget" in text and len(ids) > 1 else ids

    monkeypatch.setattr(FastBPE, "encode", wrong_on_code)
    monkeypatch.setattr(stream_encoders, "CHECK_FIRST_CHARS", 1000)
    monkeypatch.setattr(stream_encoders, "CHECK_EVERY", 1)
    data = prepare(corpus, "bpe", vocab_size=300, data_dir=tmp_path / "fallback", workers=1)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "encoding again with tokenizers" in err[0]
    assert "tokenizers (tiktoken disagreed on this unit)" in data.meta["encoder"]
    assert np.array_equal(_ids(data), _ids(reference))


@pytest.mark.parametrize("kind", ["tokenizers", "tiktoken"])
def test_stream_encoders_give_the_ids_of_the_whole_text(
    bpe: BPETokenizer, kind: str, tiny_shakespeare_file: Path, monkeypatch
) -> None:
    # Small blocks and units, so that every cut path (block ends, unit ends) is crossed many times.
    text = tiny_shakespeare_file.read_text(encoding="utf-8")[:20_000] + CODE * 20
    monkeypatch.setattr(stream_encoders, "HF_UNIT_CHARS", 700)
    monkeypatch.setattr(stream_encoders, "HF_PIECE_CHARS", 90)
    monkeypatch.setattr(stream_encoders, "FAST_UNIT_CHARS", 500)
    if kind == "tiktoken":
        if not fast_bpe_module.tiktoken_installed():
            pytest.skip("tiktoken is not installed (optional)")
        encoder = stream_encoders.FastBPEStreamEncoder(FastBPE(bpe), workers=2)
    else:
        encoder = stream_encoders.HFBPEStreamEncoder(bpe)
    blocks = [text[i : i + 1000] for i in range(0, len(text), 1000)]
    units = [("doc", unit) for unit in encoder.cut(blocks)]
    assert "".join(unit for _, unit in units) == text and len(units) > 20
    ids = [i for _, _, part in stream_encoders.encode_in_order(encoder, units) for i in part.tolist()]
    assert ids == _hf_ids(bpe, text)
