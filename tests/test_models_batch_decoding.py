"""Ragged and continuous batches: each row's tokens are those of generating it alone (greedy and
sampled with its own seed), for both model families, through the KV cache and its rebuilds; rows
finish, join and leave independently."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from tiny import TEST_MODEL

from nima.errors import ConfigError
from nima.models import GPT, RowKVCache
from nima.models.batch_decoding import BatchDecoder, RowSampling

FAMILIES = {
    "gpt2": {"arch": "gpt2"},
    "llama-gqa-qknorm": {"arch": "llama", "n_kv_heads": 2, "qk_norm": True},
}
SAMPLINGS = {
    "greedy": {"temperature": 0.0},
    "sampled": {"temperature": 1.0, "top_k": 20, "top_p": 0.9},
    "penalty": {"temperature": 0.8, "repetition_penalty": 1.3},
}
# Different lengths, one of a single token and one longer than the context (cut to its last 16).
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11], [12], list(range(20, 40))]
SEEDS = [5, 6, 7, 8]


def make_model(**overrides) -> GPT:
    torch.manual_seed(0)
    config = replace(TEST_MODEL, vocab_size=53, init_std=0.2, max_seq_len=16, **overrides)
    return GPT(config).eval()


@pytest.fixture(params=list(FAMILIES), ids=list(FAMILIES))
def model(request) -> GPT:
    return make_model(**FAMILIES[request.param])


def alone(model: GPT, prompt: list[int], seed: int, **kwargs) -> list[int]:
    return model.generate(prompt, seed=seed, **kwargs).tolist()


@pytest.mark.parametrize("sampling", list(SAMPLINGS), ids=list(SAMPLINGS))
def test_ragged_rows_match_generating_each_alone(model, sampling):
    kwargs = {"max_new_tokens": 30, **SAMPLINGS[sampling]}  # 30 new tokens: past the context of 16
    out = model.generate(PROMPTS, seed=SEEDS, **kwargs)
    assert isinstance(out, list) and len(out) == len(PROMPTS)
    for prompt, seed, row in zip(PROMPTS, SEEDS, out, strict=True):
        assert row.tolist() == alone(model, prompt, seed, **kwargs)


def test_rows_finish_independently_at_their_end_of_text(model):
    eos = 3
    kwargs = {"max_new_tokens": 30, "temperature": 1.0, "eos_token_id": eos}
    out = model.generate(PROMPTS, seed=SEEDS, **kwargs)
    lengths = set()
    for prompt, seed, row in zip(PROMPTS, SEEDS, out, strict=True):
        tokens = row.tolist()
        assert tokens == alone(model, prompt, seed, **kwargs)
        new = tokens[len(prompt) :]
        assert eos not in new[:-1] and (new[-1] == eos or len(new) == 30)
        lengths.add(len(new))
    assert len(lengths) > 1  # the rows did not all run to the same end


def test_uncached_ragged_generation_matches_the_cache(model):
    prompts = [p[-6:] for p in PROMPTS]  # within the context, where both agree exactly
    cached = model.generate(prompts, 10, temperature=0)
    uncached = model.generate(prompts, 10, temperature=0, use_cache=False)
    assert [r.tolist() for r in cached] == [r.tolist() for r in uncached]


def test_equal_length_batch_with_per_row_seeds_matches_each_alone(model):
    prompts = torch.tensor([[1, 2, 3], [3, 2, 1]])
    out = model.generate(prompts, 12, temperature=1.0, seed=[11, 12])
    assert [r.tolist() for r in out] == [
        alone(model, p, s, max_new_tokens=12, temperature=1.0)
        for p, s in zip(prompts.tolist(), [11, 12], strict=True)
    ]


def test_a_row_joining_a_running_batch_gets_its_own_answer(model):
    decoder = BatchDecoder(model, max_rows=3)
    sampling = RowSampling(max_new_tokens=20, temperature=1.0, top_k=10)
    first = decoder.add(PROMPTS[1], replace(sampling, seed=1))
    late = None
    for step in range(40):
        if step == 5:  # joins between two steps of the first row
            late = decoder.add(PROMPTS[3], replace(sampling, seed=2))
        for row, _ in decoder.step():
            if row.done:
                decoder.remove(row)
        if not decoder.rows:
            break
    assert first.tokens == alone(model, PROMPTS[1], 1, max_new_tokens=20, temperature=1.0, top_k=10)
    assert late.tokens == alone(model, PROMPTS[3], 2, max_new_tokens=20, temperature=1.0, top_k=10)


def test_removing_a_row_frees_its_place_and_leaves_the_others_alone(model):
    decoder = BatchDecoder(model, max_rows=2)
    greedy = RowSampling(max_new_tokens=12, temperature=0)
    a, b = decoder.add(PROMPTS[0], greedy), decoder.add(PROMPTS[1], greedy)
    assert decoder.free == 0
    with pytest.raises(ConfigError, match="full"):
        decoder.add([1], greedy)
    decoder.step()
    decoder.remove(a)  # cancelled: b moves into its place
    assert decoder.free == 1 and decoder.rows == [b]
    c = decoder.add(PROMPTS[2], greedy)
    while decoder.rows:
        for row, _ in decoder.step():
            if row.done:
                decoder.remove(row)
    assert b.tokens == alone(model, PROMPTS[1], 0, max_new_tokens=12, temperature=0)
    assert c.tokens == alone(model, PROMPTS[2], 0, max_new_tokens=12, temperature=0)
    assert b.finish_reason == c.finish_reason == "length"


def test_zero_new_tokens_finishes_at_once_without_a_place():
    decoder = BatchDecoder(make_model(), max_rows=1)
    row = decoder.add([1, 2], RowSampling(max_new_tokens=0))
    assert row.done and row.tokens == [1, 2] and decoder.free == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seed": [1, 2]}, "3 prompts"),
        ({"temperature": -1}, "temperature"),
        ({"seed": [1, 2, 2.5]}, "seed"),
    ],
)
def test_bad_ragged_arguments(kwargs, match):
    model = make_model()
    with pytest.raises(ConfigError, match=match):
        model.generate([[1], [2, 3], [4, 5, 6]], 3, **kwargs)
    with pytest.raises(ConfigError, match="outside 0..52"):
        model.generate([[1], [2, 99]], 3)


def test_row_cache_masks_each_row_to_its_own_length():
    model = make_model()
    cache = RowKVCache.for_config(model.config, max_rows=3)
    assert cache.keys.shape == (2, 3, 4, 16, 8) and cache.capacity == 16
    cache.lengths[:2] = [5, 2]
    cache.begin_step(2)
    assert cache.positions().tolist() == [[5], [2]]
    k = torch.randn(2, 4, 1, 8)
    keys, _, mask, is_causal = cache.attend(0, k, k)
    assert keys.shape == (2, 4, 6, 8) and not is_causal
    assert (mask[:, 0, 0] == 0).tolist() == [[True] * 6, [True] * 3 + [False] * 3]  # additive
    assert mask[1, 0, 0, 3:].isinf().all()
    assert torch.equal(cache.keys[0, 1, :, 2], k[1, :, 0])
    cache.advance(1)
    assert cache.lengths[:2] == [6, 3]
    cache.lengths[:2] = [4, 4]
    cache.begin_step(2)  # rows of one length need no mask
    assert cache.attend(0, k, k)[2] is None and cache.attend(0, k, k)[0].shape == (2, 4, 5, 8)
    cache.lengths[0] = 16
    with pytest.raises(RuntimeError, match="overflow"):
        cache.begin_step(2)
