"""Generation: the KV cache against full forwards, sampling filters, seeds, penalties, eos, limits."""

from __future__ import annotations

from dataclasses import replace

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from tiny import TEST_MODEL

from nima.errors import ConfigError
from nima.models import (
    GPT,
    KVCache,
    ModelConfig,
    apply_repetition_penalty,
    sample_next_token,
    top_k_filter,
    top_p_filter,
)

FAMILIES = {
    "gpt2": {"arch": "gpt2"},
    "llama-gqa-qknorm": {"arch": "llama", "n_kv_heads": 2, "qk_norm": True},
    "llama-mqa": {"arch": "llama", "n_kv_heads": 1},
}


def make_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    # The tests' tiny model; a larger init spreads the logits, so greedy paths are not all ties of
    # near-uniform noise.
    return GPT(replace(TEST_MODEL, **{"vocab_size": 53, "init_std": 0.2, **overrides})).eval()


@pytest.fixture(params=list(FAMILIES), ids=list(FAMILIES))
def model(request) -> GPT:
    return make_model(**FAMILIES[request.param])


# -- the cache ------------------------------------------------------------------------------------


def test_cached_logits_match_full_forward(model):
    x = torch.randint(0, 53, (2, 20))
    full = model(x).logits
    cache = KVCache.for_config(model.config, batch_size=2)
    with torch.no_grad():
        prefill = model.hidden_states(x[:, :7], cache)
        steps = [model.last_token_logits(x[:, t : t + 1], cache) for t in range(7, 12)]
        chunk = model.hidden_states(x[:, 12:20], cache)  # several new tokens after a filled cache
    assert cache.length == 20
    torch.testing.assert_close(model.lm_head(prefill), full[:, :7])
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, 7:12])
    torch.testing.assert_close(model.lm_head(chunk), full[:, 12:20])


def test_cached_and_uncached_greedy_tokens_are_identical(model):
    prompt = torch.randint(0, 53, (3, 5))
    cached = model.generate(prompt, 25, temperature=0)
    uncached = model.generate(prompt, 25, temperature=0, use_cache=False)
    assert cached.shape == (3, 30)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, :5], prompt)


def test_cache_rebuild_past_max_seq_len_follows_the_documented_window():
    model = make_model(max_seq_len=8)
    prompt = torch.randint(0, 53, (1, 11))  # longer than the window: cut to the last 8 tokens
    out = model.generate(prompt, 20, temperature=0)
    assert out.shape == (1, 31)
    # Replay with full forwards: the cache holds tokens[start:], rebuilt from the last 4 when full.
    tokens = out[0].tolist()
    n, start = 11, 11 - 8
    with torch.no_grad():
        for _ in range(20):
            if n - 1 - start >= 8 and n > 11:
                start = n - 4
            logits = model(torch.tensor([tokens[start:n]])).logits[0, -1]
            assert int(logits.argmax()) == tokens[n]
            n += 1


def test_uncached_generation_slides_a_window():
    model = make_model(max_seq_len=8)
    out = model.generate([1, 2, 3], 12, temperature=0, use_cache=False)
    tokens = out.tolist()
    with torch.no_grad():
        for n in range(3, 15):
            logits = model(torch.tensor([tokens[max(0, n - 8) : n]])).logits[0, -1]
            assert int(logits.argmax()) == tokens[n]


def test_kv_cache_bookkeeping():
    cfg = ModelConfig(
        vocab_size=10, d_model=16, n_heads=4, n_layers=3, max_seq_len=12, n_kv_heads=2, arch="llama"
    )
    cache = KVCache.for_config(cfg, batch_size=2, capacity=100)
    assert cache.capacity == 12 and cache.batch_size == 2 and cache.keys.shape == (3, 2, 2, 12, 4)
    k = torch.randn(2, 2, 5, 4)
    keys, values = cache.update(0, k, k + 1)
    assert keys.shape == (2, 2, 5, 4) and torch.equal(values, k + 1)
    cache.advance(5)
    with pytest.raises(RuntimeError, match="overflow"):
        cache.update(0, torch.randn(2, 2, 8, 4), torch.randn(2, 2, 8, 4))
    cache.reset()
    assert cache.length == 0


# -- sampling options -----------------------------------------------------------------------------


def test_seed_makes_sampling_reproducible():
    model = make_model()
    a = model.generate([1, 2, 3], 30, temperature=1.0, top_k=20, top_p=0.9, seed=7)
    b = model.generate([1, 2, 3], 30, temperature=1.0, top_k=20, top_p=0.9, seed=7)
    c = model.generate([1, 2, 3], 30, temperature=1.0, top_k=20, top_p=0.9, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    streamed = list(model.generate_stream([1, 2, 3], 30, temperature=1.0, top_k=20, top_p=0.9, seed=7))
    assert streamed == a[3:].tolist()


def test_seeded_sampling_leaves_global_rng_alone():
    model = make_model()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model.generate([1, 2], 10, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_temperature_zero_is_greedy_and_ignores_the_seed():
    model = make_model()
    a = model.generate([4, 5], 15, temperature=0, seed=1)
    b = model.generate([4, 5], 15, temperature=0, seed=2)
    c = model.generate([4, 5], 15, temperature=0.7, top_k=1, seed=3)  # top-1 sampling is greedy too
    assert torch.equal(a, b) and torch.equal(a, c)


def test_top_k_filter_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0], [0.0, -1.0, 2.0, 1.0, 3.0]])
    out = top_k_filter(logits, 2)
    assert torch.isfinite(out).tolist() == [
        [False, True, False, True, False],
        [False, False, True, False, True],
    ]
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])
    assert torch.equal(top_k_filter(logits, 5), logits)


def test_top_p_filter_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    logits = probs.log()
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.6)).tolist() == [[True, False, True, False]]
    assert torch.isfinite(top_p_filter(logits, 0.9)).tolist() == [[True, False, True, True]]
    assert torch.isfinite(top_p_filter(logits, 0.01)).tolist() == [[True, False, False, False]]
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_sampling_stays_inside_the_filtered_set():
    torch.manual_seed(0)
    logits = torch.randn(1, 50).repeat(2000, 1)
    allowed_k = set(torch.topk(logits[0], 5).indices.tolist())
    drawn = sample_next_token(logits, temperature=2.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == allowed_k  # all five appear in 2000 draws, nothing else
    nucleus = set(torch.isfinite(top_p_filter(logits[:1], 0.5))[0].nonzero().flatten().tolist())
    drawn = sample_next_token(logits, top_p=0.5, generator=torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) <= nucleus


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([[2.0, 1.0, 0.0]]).repeat(4000, 1)
    gen = torch.Generator().manual_seed(0)
    cold = sample_next_token(logits, temperature=0.3, generator=gen)
    hot = sample_next_token(logits, temperature=3.0, generator=gen)
    assert (cold == 0).float().mean() > 0.9 > (hot == 0).float().mean()


def test_repetition_penalty_lowers_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]
    assert torch.equal(apply_repetition_penalty(logits, torch.tensor([[0]]), 1.0), logits)


def test_repetition_penalty_reduces_repeats_in_generation():
    model = make_model()
    plain = model.generate([1], 30, temperature=0)[1:]
    penalised = model.generate([1], 30, temperature=0, repetition_penalty=5.0)[1:]
    assert len(set(penalised.tolist())) > len(set(plain.tolist()))


def test_eos_stops_generation():
    model = make_model()
    greedy = model.generate([7, 8], 20, temperature=0).tolist()
    eos = greedy[5]  # the 4th new token
    first = greedy.index(eos, 2)
    out = model.generate([7, 8], 20, temperature=0, eos_token_id=eos)
    assert out.tolist() == greedy[: first + 1]
    streamed = list(model.generate_stream([7, 8], 20, temperature=0, eos_token_id=eos))
    assert streamed == greedy[2 : first + 1]


def test_eos_pads_finished_rows_in_a_batch():
    model = make_model()
    prompts = torch.tensor([[7, 8], [3, 9]])
    greedy = model.generate(prompts, 12, temperature=0)
    eos = int(greedy[0, 3])
    out = model.generate(prompts, 12, temperature=0, eos_token_id=eos)
    row0 = out[0, 2:].tolist()
    stop = row0.index(eos)
    assert all(t == eos for t in row0[stop:])
    assert torch.equal(out[:, :2], prompts)


def test_generation_restores_training_mode_and_needs_no_grad():
    model = make_model()
    model.train()
    out = model.generate([1, 2], 3)
    assert model.training and not out.requires_grad
    assert out.dtype == torch.long and out.shape == (5,)


def test_zero_new_tokens_returns_the_prompt():
    model = make_model()
    assert model.generate([1, 2, 3], 0).tolist() == [1, 2, 3]
    assert list(model.generate_stream([1, 2, 3], 0)) == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ],
)
def test_invalid_generation_arguments(kwargs, match):
    model = make_model()
    args = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ConfigError, match=match):
        model.generate([1, 2], **args)
    with pytest.raises(ConfigError, match=match):
        model.generate_stream([1, 2], **args)


def test_invalid_prompts():
    model = make_model()
    with pytest.raises(ConfigError, match="outside 0..52"):
        model.generate([1, 53], 2)
    with pytest.raises(ConfigError, match="non-empty"):
        model.generate([], 2)
    with pytest.raises(ConfigError, match="one prompt"):
        model.generate_stream(torch.zeros(2, 3, dtype=torch.long), 2)


@settings(max_examples=60, deadline=None)
@given(
    logits=hnp.arrays(np.float32, st.integers(2, 12), elements=st.floats(-8, 8, width=32)),
    p=st.floats(0.01, 0.99),
)
def test_top_p_keeps_a_minimal_nucleus(logits, p):
    row = torch.from_numpy(logits)[None]
    kept = torch.isfinite(top_p_filter(row, p))[0]
    probs = torch.softmax(row[0].double(), dim=0)
    assert probs[kept].max() >= probs.max() - 1e-9  # the most likely token (or a tie) survives
    assert probs[kept].sum() >= p - 1e-6  # enough mass ...
    if kept.sum() > 1:  # ... and no token could be dropped without falling below p
        assert probs[kept].sum() - probs[kept].min() < p + 1e-6
    if (~kept).any():  # kept tokens are the likeliest
        assert probs[~kept].max() <= probs[kept].min() + 1e-6


def test_models_entry_point_reexports_the_package():
    import models
    import nima.models

    assert set(models.__all__) == set(nima.models.__all__)
    assert models.create_gpt_small is nima.models.create_gpt_small
