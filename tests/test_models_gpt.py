"""The GPT forward pass: shapes, loss, learning, causality, both families, options, sizes."""

from __future__ import annotations

import io
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from tiny import TEST_MODEL
from torch import nn

from nima.errors import NimaError
from nima.models import GPT, ModelConfig, SequenceTooLongError, create_model

FAMILIES = {
    "gpt2": {"arch": "gpt2"},
    "llama": {"arch": "llama"},
    "llama-gqa-qknorm": {"arch": "llama", "n_kv_heads": 2, "qk_norm": True},
    "gpt2-untied-nobias": {"arch": "gpt2", "tie_embeddings": False, "bias": False},
}


# The tests' tiny model with a vocabulary of 61, context 24 and the gpt2 MLP width (d_ff = 4 *
# d_model): the shapes, parameter counts and FLOPs asserted below are worked out for these.
BASE = replace(TEST_MODEL, vocab_size=61, max_seq_len=24, d_ff=None)


def tiny(**overrides) -> ModelConfig:
    return replace(BASE, **overrides)


@pytest.fixture(params=list(FAMILIES), ids=list(FAMILIES))
def family(request) -> dict:
    return FAMILIES[request.param]


def test_shapes_and_loss_of_untrained_model(family):
    torch.manual_seed(0)
    model = GPT(tiny(**family))
    x = torch.randint(0, 61, (3, 24))
    out = model(x, labels=torch.randint(0, 61, (3, 24)))
    assert out.logits.shape == (3, 24, 61)
    assert out.loss.shape == () and abs(out.loss.item() - math.log(61)) < 0.2
    assert model(x).loss is None


def test_ignored_labels_are_skipped():
    torch.manual_seed(0)
    model = GPT(tiny())
    x = torch.randint(0, 61, (2, 10))
    labels = x.clone()
    labels[:, :5] = -100
    out = model(x, labels=labels)
    expected = F.cross_entropy(out.logits[:, 5:].reshape(-1, 61), x[:, 5:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def test_tiny_model_overfits_a_batch(family):
    torch.manual_seed(0)
    model = GPT(tiny(**family))
    x = torch.randint(0, 61, (4, 16))
    y = torch.randint(0, 61, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(100):
        loss = model(x, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_causality(family):
    torch.manual_seed(0)
    model = GPT(tiny(**family)).eval()
    x = torch.randint(0, 61, (2, 20))
    changed = x.clone()
    changed[:, 12:] = (changed[:, 12:] + 7) % 61
    a, b = model(x).logits, model(changed).logits
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_sequence_longer_than_max_seq_len_is_a_clear_error():
    model = GPT(tiny())
    with pytest.raises(SequenceTooLongError, match=r"25 tokens is longer than model.max_seq_len=24") as info:
        model(torch.zeros(1, 25, dtype=torch.long))
    assert isinstance(info.value, NimaError)


def test_wrong_input_shapes_are_clear_errors():
    model = GPT(tiny())
    with pytest.raises(ValueError, match=r"input_ids must have shape \(batch, seq_len\), got \(5,\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels shape \(2, 4\) differs from input_ids shape \(2, 5\)"):
        model(torch.zeros(2, 5, dtype=torch.long), labels=torch.zeros(2, 4, dtype=torch.long))


def test_grouped_query_attention_shapes():
    model = GPT(tiny(arch="llama", n_heads=4, n_kv_heads=1))
    attn = model.blocks[0].attn
    assert attn.qkv.weight.shape == (32 + 2 * 8, 32)  # 4 query heads + 1 key + 1 value head of 8
    assert attn.qkv.bias is None
    assert model(torch.zeros(2, 5, dtype=torch.long)).logits.shape == (2, 5, 61)


def test_grouped_query_attention_equals_repeated_heads():
    """GQA with k/v heads repeated by hand is the same as plain multi-head attention."""
    torch.manual_seed(0)
    gqa = GPT(tiny(arch="llama", n_kv_heads=2)).eval()
    mha = GPT(tiny(arch="llama")).eval()
    state = gqa.state_dict()
    for i in range(2):
        w = state[f"blocks.{i}.attn.qkv.weight"]
        q, k, v = w.split([32, 16, 16])
        rep = lambda t: t.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32)  # noqa: E731
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat([q, rep(k), rep(v)])
    mha.load_state_dict(state)
    x = torch.randint(0, 61, (2, 12))
    torch.testing.assert_close(gqa(x).logits, mha(x).logits)


def test_weight_tying():
    tied = GPT(tiny())
    assert tied.lm_head.weight is tied.tok_emb.weight
    untied = GPT(tiny(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.num_parameters() - tied.num_parameters() == 61 * 32


def test_state_dict_round_trip(family):
    torch.manual_seed(0)
    model = GPT(tiny(**family)).eval()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "config": model.config.to_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    clone = GPT(ModelConfig.from_dict(saved["config"])).eval()
    clone.load_state_dict(saved["model"])
    x = torch.randint(0, 61, (2, 9))
    torch.testing.assert_close(model(x).logits, clone(x).logits, rtol=0, atol=0)
    assert not any("rope" in key for key in saved["model"])  # RoPE tables are rebuilt, not stored


def test_gradient_checkpointing_gives_the_same_gradients(family):
    torch.manual_seed(0)
    plain = GPT(tiny(**family))
    ckpt = GPT(tiny(**family, gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randint(0, 61, (2, 16))
    for model in (plain, ckpt):
        model(x, labels=x).loss.backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_gradient_checkpointing_recomputes_blocks(monkeypatch):
    calls = []
    model = GPT(tiny(gradient_checkpointing=True))
    original = type(model.blocks[0]).forward

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model.blocks[0]), "forward", counting)
    x = torch.randint(0, 61, (1, 8))
    model(x, labels=x).loss.backward()
    assert len(calls) == 4  # 2 blocks, each run again in the backward pass
    calls.clear()
    with torch.no_grad():
        model(x)
    assert len(calls) == 2


def test_chunked_loss_matches_full_loss_and_gradients(family):
    torch.manual_seed(0)
    a = GPT(tiny(**family))
    b = GPT(tiny(**family))
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 61, (3, 20))
    labels = x.clone()
    labels[0, :7] = -100
    full = a(x, labels=labels)
    chunked = b(x, labels=labels, return_logits=False)
    assert chunked.logits is None
    torch.testing.assert_close(chunked.loss, full.loss)
    full.loss.backward()
    chunked.loss.backward()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)


def test_chunked_cross_entropy_with_small_chunks():
    from nima.models import chunked_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(2, 7, 8, requires_grad=True)
    w = torch.randn(11, 8, requires_grad=True)
    y = torch.randint(0, 11, (2, 7))
    y[1, 3] = -100
    loss = chunked_cross_entropy(h, w, y, chunk_rows=3)
    ref = F.cross_entropy((h @ w.T).reshape(-1, 11), y.reshape(-1))
    torch.testing.assert_close(loss, ref)
    gh, gw = torch.autograd.grad(loss, (h, w))
    rh, rw = torch.autograd.grad(ref, (h, w))
    torch.testing.assert_close(gh, rh)
    torch.testing.assert_close(gw, rw)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = GPT(tiny(dropout=0.5))
    x = torch.randint(0, 61, (2, 8))
    model.eval()
    torch.testing.assert_close(model(x).logits, model(x).logits)
    model.train()
    assert not torch.allclose(model(x).logits, model(x).logits)


def test_residual_projections_use_scaled_init():
    torch.manual_seed(0)
    model = GPT(tiny(d_model=256, n_heads=4, n_layers=8, vocab_size=1000))
    std = 0.02 / math.sqrt(2 * 8)
    assert abs(model.blocks[0].attn.proj.weight.std().item() - std) < 0.1 * std
    assert abs(model.blocks[0].mlp.proj.weight.std().item() - std) < 0.1 * std
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.002
    assert model.blocks[0].attn.qkv.bias.abs().max() == 0


def test_num_parameters_matches_formula_for_gpt2():
    cfg = tiny(vocab_size=100, d_model=48, n_heads=4, n_layers=3, max_seq_len=20)
    model = GPT(cfg)
    L, d, V, T = 3, 48, 100, 20
    non_embedding = L * (12 * d * d + 13 * d) + 2 * d
    assert model.num_parameters(exclude_embeddings=True) == non_embedding
    assert model.num_parameters() == non_embedding + V * d + T * d


def test_estimate_flops_per_token():
    model = GPT(tiny())
    n = model.num_parameters(exclude_embeddings=True) + 61 * 32  # + tied output head
    assert model.estimate_flops_per_token() == 6 * n + 12 * 2 * 32 * 24
    assert model.estimate_flops_per_token(seq_len=8) == 6 * n + 12 * 2 * 32 * 8
    untied = GPT(tiny(tie_embeddings=False))
    assert untied.estimate_flops_per_token(8) == 6 * untied.num_parameters(True) + 12 * 2 * 32 * 8


class _ReferenceBlock(nn.Module):
    """The textbook pre-LayerNorm GPT-2 block (as in the speed yardstick, ../shared/bench)."""

    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class _ReferenceGPT(nn.Module):
    def __init__(self, vocab, ctx, d, h, layers):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(_ReferenceBlock(d, h) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def test_gpt2_family_matches_the_reference_model():
    """At the speed benchmark's shape our gpt2 model has the reference's parameters and outputs."""
    torch.manual_seed(0)
    V, ctx, d, h, L = 65, 64, 128, 4, 4
    ref = _ReferenceGPT(V, ctx, d, h, L).eval()
    ours = create_model(
        {"vocab_size": V, "max_seq_len": ctx, "d_model": d, "n_heads": h, "n_layers": L}
    ).eval()
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters()) == 809_856
    names = {"tok.": "tok_emb.", "pos.": "pos_emb.", "ln.": "norm_f.", "head.": "lm_head."}
    block_names = {"ln1": "norm1", "ln2": "norm2", "qkv": "attn.qkv", "proj": "attn.proj",
                   "fc": "mlp.fc", "out": "mlp.proj"}  # fmt: skip
    state = {}
    for key, value in ref.state_dict().items():
        if key.startswith("blocks."):
            _, i, layer, param = key.split(".")
            state[f"blocks.{i}.{block_names[layer]}.{param}"] = value
        else:
            prefix = key.split(".")[0] + "."
            state[names[prefix] + key[len(prefix) :]] = value
    ours.load_state_dict(state)
    x = torch.randint(0, V, (2, ctx))
    torch.testing.assert_close(ours(x).logits, ref(x), rtol=1e-5, atol=1e-5)


def test_rotary_embedding_depends_only_on_relative_position():
    from nima.models.layers import RotaryEmbedding, apply_rotary

    rope = RotaryEmbedding(head_dim=8, max_seq_len=32, theta=10000.0)
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i: int, j: int) -> torch.Tensor:
        return (apply_rotary(q, *rope(1, i)) * apply_rotary(k, *rope(1, j))).sum()

    torch.testing.assert_close(score(5, 2), score(20, 17))
    assert not torch.allclose(score(5, 2), score(5, 4))
    torch.testing.assert_close(apply_rotary(q, *rope(1, 0)), q)  # position 0 is the identity
    torch.testing.assert_close(apply_rotary(q, *rope(1, 9)).norm(), q.norm())  # a rotation


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_runs_under_bfloat16_autocast(arch):
    torch.manual_seed(0)
    model = GPT(tiny(arch=arch, n_kv_heads=2 if arch == "llama" else None))
    x = torch.randint(0, 61, (2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, labels=x)
        out.loss.backward()
        generated = model.generate([1, 2, 3], 4, temperature=0)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    assert model.tok_emb.weight.grad is not None and generated.shape == (7,)
