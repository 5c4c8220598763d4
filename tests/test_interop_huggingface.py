"""Export to Hugging Face transformers: same logits and token ids as Nima, and `nima export`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from inference_helpers import save_checkpoint, train_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from nima.cli import main
from nima.data.tokenizer import BPETokenizer, ByteTokenizer, CharTokenizer
from nima.errors import ConfigError
from nima.interop import export_huggingface, export_tokenizer
from nima.models import GPT, ModelConfig

FAMILIES = {
    "gpt2": ({"arch": "gpt2"}, "GPT2LMHeadModel"),
    "gpt2 untied, no biases": ({"arch": "gpt2", "bias": False, "tie_embeddings": False}, "GPT2LMHeadModel"),
    "llama with grouped-query attention": ({"arch": "llama", "n_kv_heads": 2}, "LlamaForCausalLM"),
    "llama with biases": ({"arch": "llama", "bias": True}, "LlamaForCausalLM"),
    "llama with qk_norm": ({"arch": "llama", "qk_norm": True, "n_kv_heads": 1}, "Qwen3ForCausalLM"),
}


def _model(**kwargs) -> GPT:
    torch.manual_seed(0)
    model = GPT(
        ModelConfig(vocab_size=70, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_seq_len=32, **kwargs)
    )
    with torch.no_grad():  # move norms and biases off their initial 1 and 0, so a swap would show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("family", FAMILIES, ids=list(FAMILIES))
def test_transformers_gives_the_same_logits(family: str, tmp_path: Path) -> None:
    kwargs, architecture = FAMILIES[family]
    model = _model(**kwargs)
    export_huggingface(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == architecture
    ids = torch.randint(0, 70, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids).logits, rtol=0, atol=2e-5)
    assert sum(p.numel() for p in hf.parameters()) >= model.num_parameters()


def test_unsupported_combinations_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="GPT-2 has no qk_norm"):
        export_huggingface(_model(arch="gpt2", qk_norm=True), tmp_path)
    with pytest.raises(ConfigError, match="Qwen3 .* has no MLP biases"):
        export_huggingface(_model(arch="llama", qk_norm=True, bias=True), tmp_path)


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_tokenizer_round_trips_through_autotokenizer(kind: str, tmp_path: Path) -> None:
    text = "ROMEO:\nBut soft, what light through yonder window breaks?\n"
    if kind == "char":
        tokenizer = CharTokenizer(text, with_eot=True)
        sample = "ROMEO: soft light\n"
    elif kind == "byte":
        tokenizer = ByteTokenizer()
        sample = "naïve café ✓\nROMEO"
    else:
        tokenizer = BPETokenizer.train([text * 20, "naïve café"], vocab_size=300)
        sample = "soft light, naïve ROMEO\n"
    export_tokenizer(tokenizer, tmp_path, model_max_length=64)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert hf.encode(sample, add_special_tokens=False) == tokenizer.encode(sample)
    assert hf.decode(tokenizer.encode(sample)) == sample
    assert hf.eos_token_id == tokenizer.eos_token_id and hf.model_max_length == 64


def test_nima_export_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, tokenizer = train_tiny_model(steps=20)
    checkpoint = save_checkpoint(model, tokenizer, tmp_path / "run")
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    hf, hf_tokenizer = AutoModelForCausalLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([hf_tokenizer.encode("ROMEO:\nBut soft")])
    assert ids.tolist()[0] == tokenizer.encode("ROMEO:\nBut soft")
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids).logits, rtol=0, atol=2e-5)

    # An existing folder is left alone unless --overwrite.
    capsys.readouterr()  # transformers' own loading messages
    config_before = (out / "config.json").read_text()
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: {out} already exists; choose another --out or add --overwrite"
    )
    assert (out / "config.json").read_text() == config_before
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hf.")]  # no staging left behind
