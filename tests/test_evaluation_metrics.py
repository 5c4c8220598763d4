"""Evaluation maths on models and texts whose answers are known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from eval_standins import BigramModel, ByteTok, CharTok, PositionModel, UniformModel
from hypothesis import given, settings
from hypothesis import strategies as st

from nima.errors import ConfigError, DataError
from nima.evaluation import EvalResult, evaluate_model, evaluate_tokens, plan_windows
from nima.evaluation.text_units import count_text_units
from nima.evaluation.windows import count_windows

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20


def test_perplexity_is_exp_of_loss():
    tok = CharTok(TEXT)
    model = BigramModel(tok.vocab_size, tok.encode(TEXT))
    result = evaluate_model(model, TEXT, tokenizer=tok, context_length=8)
    assert result.perplexity == pytest.approx(math.exp(result.loss), rel=1e-12)
    assert result.bits_per_token == pytest.approx(result.loss / math.log(2), rel=1e-12)


def test_uniform_model_has_loss_ln_vocab_and_known_bits_per_byte():
    # 'a' is 1 UTF-8 byte, 'é' is 2: the text "aé" * 50 has 100 characters and 150 bytes.
    text = "aé" * 50
    tok = CharTok("aéxyz")  # vocabulary of 5
    result = evaluate_model(UniformModel(5, max_seq_len=16), text, tokenizer=tok)
    assert result.tokens == 99  # the first character is context only
    assert result.loss == pytest.approx(math.log(5), rel=1e-6)
    assert result.perplexity == pytest.approx(5, rel=1e-6)
    # scored text = everything after the first 'a': 99 characters, 149 bytes
    assert result.chars == 99 and result.bytes == 149
    assert result.bits_per_char == pytest.approx(math.log2(5), rel=1e-6)
    assert result.bits_per_byte == pytest.approx(99 * math.log2(5) / 149, rel=1e-6)


def test_bits_per_byte_does_not_depend_on_the_tokenizer_for_the_same_probabilities():
    # A uniform byte model spends log2(256) = 8 bits on every byte, whatever the text.
    text = "naïve café, Grüße — 東京\n" * 10
    result = evaluate_model(UniformModel(256, max_seq_len=32), text, tokenizer=ByteTok())
    assert result.bytes == len(text.encode()) - 1
    assert result.bits_per_byte == pytest.approx(8.0, rel=1e-6)
    assert result.tokens == len(text.encode()) - 1


def test_model_on_its_training_text_beats_uniform():
    tok = CharTok(TEXT)
    ids = tok.encode(TEXT)
    trained = evaluate_model(BigramModel(tok.vocab_size, ids), TEXT, tokenizer=tok)
    uniform = evaluate_model(UniformModel(tok.vocab_size), TEXT, tokenizer=tok)
    assert uniform.loss == pytest.approx(math.log(tok.vocab_size), rel=1e-6)
    assert trained.loss < 0.5 * uniform.loss
    assert trained.bits_per_byte < uniform.bits_per_byte


@pytest.mark.parametrize("stride", [1, 3, 8])
def test_windowing_does_not_change_a_context_free_model(stride):
    # A bigram model only looks at the previous token, so every window layout gives the same sum.
    tok = CharTok(TEXT)
    ids = tok.encode(TEXT)
    model = BigramModel(tok.vocab_size, ids)
    expected = -sum(float(model.table[a, b]) for a, b in zip(ids[:-1], ids[1:], strict=True))
    result = evaluate_tokens(model, ids, context_length=8, stride=stride, batch_size=3)
    assert result.tokens == len(ids) - 1
    assert result.total_nats == pytest.approx(expected, rel=1e-5)


def test_sliding_window_gives_more_context_than_non_overlapping():
    ids = list(range(10)) * 30
    model = PositionModel(10, max_seq_len=8)
    flat = evaluate_tokens(model, ids, context_length=8)
    sliding = evaluate_tokens(model, ids, context_length=8, stride=2)
    assert flat.tokens == sliding.tokens == len(ids) - 1
    assert flat.windows < sliding.windows
    # Each scored position in the sliding run sits late in its window, where this model is surer.
    assert sliding.loss != flat.loss


@given(n=st.integers(2, 200), context=st.integers(1, 24), data=st.data())
@settings(max_examples=200, deadline=None, database=None)
def test_windows_score_every_target_exactly_once(n, context, data):
    stride = data.draw(st.integers(1, context))
    scored = []
    for w in plan_windows(n, context, stride):
        assert 0 <= w.begin < w.end <= n - 1
        assert w.length <= context
        assert w.begin + 1 <= w.score_from <= w.end
        assert w.end + 1 - w.score_from == w.n_scored
        scored.extend(range(w.score_from, w.end + 1))
    assert scored == list(range(1, n))
    assert count_windows(n, context, stride) == len(list(plan_windows(n, context, stride)))


def test_max_tokens_caps_the_scored_tokens():
    ids = list(range(10)) * 30
    result = evaluate_tokens(UniformModel(10, max_seq_len=8), ids, max_tokens=37)
    assert result.tokens == 37


def test_batches_path_matches_the_token_stream_path():
    tok = CharTok(TEXT)
    ids = tok.encode(TEXT)
    model = BigramModel(tok.vocab_size, ids)
    T = 8
    n_windows = (len(ids) - 1) // T
    windows = torch.tensor([ids[i * T : i * T + T + 1] for i in range(n_windows)])
    loader = [
        {"input_ids": windows[i : i + 4, :-1], "labels": windows[i : i + 4, 1:]}
        for i in range(0, n_windows, 4)
    ]
    from_batches = evaluate_model(model, loader, tokenizer=tok)
    from_stream = evaluate_tokens(model, ids[: n_windows * T + 1], tokenizer=tok, context_length=T)
    assert from_batches.tokens == from_stream.tokens == n_windows * T
    assert from_batches.loss == pytest.approx(from_stream.loss, rel=1e-6)
    assert from_batches.bytes == from_stream.bytes
    # raw (B, T+1) windows and (inputs, labels) pairs are accepted too
    assert evaluate_model(model, [windows]).loss == pytest.approx(from_batches.loss, rel=1e-6)
    assert evaluate_model(model, [(windows[:, :-1], windows[:, 1:])], max_batches=1).tokens == n_windows * T


def test_ignored_labels_are_not_scored():
    model = UniformModel(7, max_seq_len=8)
    labels = torch.tensor([[1, 2, 3, -100, -100, -100]])
    result = evaluate_model(model, [{"input_ids": torch.zeros(1, 6, dtype=torch.long), "labels": labels}])
    assert result.tokens == 3
    assert result.loss == pytest.approx(math.log(7), rel=1e-6)


def test_model_mode_is_restored_and_no_gradients_are_kept():
    model = UniformModel(5)
    model.train()
    evaluate_tokens(model, [1, 2, 3, 4], context_length=4)
    assert model.training
    assert model.dummy.grad is None
    model.eval()
    evaluate_tokens(model, [1, 2, 3, 4], context_length=4)
    assert not model.training


def test_memmap_token_stream(tmp_path):
    path = tmp_path / "val.bin"
    np.array(list(range(5)) * 40, dtype=np.uint16).tofile(path)
    stream = np.memmap(path, dtype=np.uint16, mode="r")
    result = evaluate_model(UniformModel(5, max_seq_len=16), stream)
    assert result.tokens == 199 and result.windows == math.ceil(199 / 16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stride": 0}, "stride=0"),
        ({"stride": 9}, "stride=9"),
        ({"context_length": 17}, "max_seq_len=16"),
        ({"max_tokens": 0}, "max_tokens=0"),
        ({"batch_size": 0}, "batch_size=0"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, message):
    kwargs = {"context_length": 8, **kwargs}
    with pytest.raises(ConfigError, match=message):
        evaluate_tokens(UniformModel(5), [1, 2, 3, 4] * 10, **kwargs)


def test_too_little_data_and_unknown_characters_are_clear_errors():
    with pytest.raises(DataError, match="at least 2"):
        evaluate_tokens(UniformModel(5), [1])
    with pytest.raises(DataError, match="'Z'"):
        evaluate_model(UniformModel(5), "abZ", tokenizer=CharTok("abc"))
    with pytest.raises(DataError, match="no tokens"):
        evaluate_model(UniformModel(5), [])
    with pytest.raises(ConfigError, match="tokenizer"):
        evaluate_model(UniformModel(5), "abc")


@given(st.text(min_size=1, max_size=60), st.integers(1, 7))
@settings(max_examples=150, deadline=None, database=None)
def test_byte_counts_are_exact_across_chunk_edges(text, chunk):
    tok = ByteTok()
    ids = tok.encode(text)
    assert count_text_units(tok, ids, chunk_tokens=chunk) == (len(text.encode()), len(text))


def test_result_serialises_and_formats():
    result = EvalResult.from_totals(
        10 * math.log(2), 5, n_bytes=20, n_chars=10, windows=1, context_length=8, stride=4
    )
    assert result.to_dict()["bits_per_byte"] == pytest.approx(0.5)
    assert result.bits_per_char == pytest.approx(1.0)
    text = result.format()
    assert "perplexity" in text and "stride 4" in text and "bits per byte" in text
    assert "(1 window of 8 tokens, stride 4)" in text
    assert EvalResult.from_totals(1e6, 1).perplexity == math.inf


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_byte_counts_with_nima_tokenizers_and_end_of_text(chunk):
    from nima.data.tokenizer import BPETokenizer, ByteTokenizer, CharTokenizer

    first, second = "naïve café — 東京 ", "Grüße\n"
    byte = ByteTokenizer()
    ids = byte.encode(first) + [byte.eos_token_id] + byte.encode(second)
    # the end-of-text token separates documents: it adds no bytes or characters
    assert count_text_units(byte, ids, chunk_tokens=chunk) == (
        len((first + second).encode()),
        len(first + second),
    )
    bpe = BPETokenizer.train([first * 20, second * 20], vocab_size=300)
    ids = bpe.encode(first * 3 + second)
    assert count_text_units(bpe, ids, chunk_tokens=chunk) == (
        len((first * 3 + second).encode()),
        len(first * 3 + second),
    )
    char = CharTokenizer(first + second)
    assert count_text_units(char, char.encode(second), chunk_tokens=chunk) == (
        len(second.encode()),
        len(second),
    )


def test_token_stream_sources_agree():
    ids = list(range(10)) * 30
    model = PositionModel(10, max_seq_len=8)
    expected = evaluate_tokens(model, ids, context_length=8, stride=3).total_nats
    for source in (np.array(ids, dtype=np.uint16), torch.tensor(ids), tuple(ids)):
        assert evaluate_model(model, source, context_length=8, stride=3).total_nats == pytest.approx(expected)
