"""Export to Hugging Face transformers: same logits and token ids as Nima, and `nima export`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_helpers import save_checkpoint, train_tiny_model
from tiny import model_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from nima.cli import main
from nima.data.shards import HEADER_BYTES
from nima.data.tokenizer import BPETokenizer, ByteTokenizer, CharTokenizer, tokenizer_from_dict
from nima.errors import ConfigError
from nima.interop import export_huggingface, export_tokenizer, import_huggingface
from nima.models import GPT

FAMILIES = {
    "gpt2": ({"arch": "gpt2"}, "GPT2LMHeadModel"),
    "gpt2 untied, no biases, tanh GELU": (
        {"arch": "gpt2", "bias": False, "tie_embeddings": False, "activation": "gelu_tanh"},
        "GPT2LMHeadModel",
    ),
    "llama with grouped-query attention": ({"arch": "llama", "n_kv_heads": 2}, "LlamaForCausalLM"),
    "llama with biases": ({"arch": "llama", "bias": True}, "LlamaForCausalLM"),
    "llama with qk_norm": ({"arch": "llama", "qk_norm": True, "n_kv_heads": 1}, "Qwen3ForCausalLM"),
}


def _model(**kwargs) -> GPT:
    torch.manual_seed(0)
    model = GPT(model_config(70, **kwargs))
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


@pytest.mark.parametrize("family", FAMILIES, ids=list(FAMILIES))
def test_export_then_import_gives_back_the_same_model_and_tokenizer(family: str, tmp_path: Path) -> None:
    model = _model(**FAMILIES[family][0])
    tokenizer = CharTokenizer("abcdefghij klmnop\n", with_eot=True)
    export_huggingface(model, tmp_path, tokenizer)
    again, again_tokenizer = import_huggingface(tmp_path)
    ids = torch.randint(0, 70, (2, 32))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
    assert again.config.act == model.config.act and again.config.kv_heads == model.config.kv_heads
    assert isinstance(again_tokenizer, CharTokenizer) and again_tokenizer.to_dict() == tokenizer.to_dict()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_import_of_models_saved_by_transformers(family: str, tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if family == "gpt2":  # OpenAI's GPT-2 settings: tanh-approximate GELU ("gelu_new")
        hf = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=64, n_embd=48, n_layer=2, n_head=4))
    else:
        hf = LlamaForCausalLM(
            LlamaConfig(vocab_size=100, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        )  # fmt: skip
    hf.eval().save_pretrained(tmp_path)
    model, tokenizer = import_huggingface(tmp_path)
    assert model.config.act == ("gelu_tanh" if family == "gpt2" else "silu") and tokenizer is None
    ids = torch.randint(0, 100, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, hf(ids).logits, rtol=0, atol=2e-5)


def test_import_reads_weights_saved_without_the_base_model_prefix(tmp_path: Path) -> None:
    # The hub's original gpt2 files name tensors "h.0.attn.c_attn.weight", not "transformer.h.0...".
    from safetensors.torch import load_file, save_file

    model = _model(arch="gpt2")
    export_huggingface(model, tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    save_file(
        {k.removeprefix("transformer."): v for k, v in weights.items()}, str(tmp_path / "model.safetensors")
    )
    again, _ = import_huggingface(tmp_path)
    ids = torch.randint(0, 70, (1, 16))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_import_reads_byte_level_bpe_tokenizers_whatever_splits_first(tmp_path: Path) -> None:
    # Qwen-style: a regex Split before a ByteLevel pre-tokenizer that does not split again.
    from tokenizers import Regex, pre_tokenizers

    bpe = BPETokenizer.train(["ROMEO: But soft, what light through yonder window breaks?\n" * 30], 300)
    hf = bpe.hf_tokenizer
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\s?\w+|\s?[^\s\w]+|\s+"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    export_huggingface(_model(arch="llama", n_kv_heads=2), tmp_path)
    hf.save(str(tmp_path / "tokenizer.json"))  # as transformers would save it, no Nima record
    (tmp_path / "tokenizer_config.json").unlink(missing_ok=True)
    _, tokenizer = import_huggingface(tmp_path)
    sample = "soft light, ROMEO!\n"
    assert isinstance(tokenizer, BPETokenizer) and tokenizer.encode(sample) == hf.encode(sample).ids
    assert tokenizer.decode(tokenizer.encode(sample)) == sample


def _llama2_style_tokenizer():
    """A SentencePiece-style BPE laid out as Llama 2's tokenizer.json: "▁" for spaces (prepended
    to the text), <0x00>..<0xFF> byte-fallback pieces at ids 3-258, </s> as end of text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    hf.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    hf.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=150, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    # SentencePiece learns pieces within words ("▁" only at their start); Llama 2's file then has
    # no pre-tokenizer.
    hf.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    hf.train_from_iterator(["ROMEO: But soft, what light through yonder window breaks?"] * 30, trainer)
    hf.pre_tokenizer = None
    # The byte pieces are ordinary vocabulary entries (not added tokens), right after the specials.
    spec = json.loads(hf.to_str())
    learned = {piece: i + (256 if i >= 3 else 0) for piece, i in spec["model"]["vocab"].items()}
    spec["model"]["vocab"] = {**learned, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    return Tokenizer.from_str(json.dumps(spec))


def test_import_reads_sentencepiece_style_tokenizers(tmp_path: Path) -> None:
    hf = _llama2_style_tokenizer()
    vocab = hf.get_vocab_size()
    torch.manual_seed(0)
    model = GPT(model_config(vocab, arch="llama"))
    export_huggingface(model, tmp_path)
    hf.save(str(tmp_path / "tokenizer.json"))  # as the hub has it: no Nima record
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": "<s>"}))
    _, tokenizer = import_huggingface(tmp_path)
    assert isinstance(tokenizer, BPETokenizer) and tokenizer.style == "sentencepiece"
    assert tokenizer.eos_token_id == hf.token_to_id("</s>") and tokenizer.eot_text == "</s>"

    sample = "soft light, ROMEO! café\n"  # é and the newline are not in the vocabulary: byte fallback
    ids = tokenizer.encode(sample)
    assert ids == hf.encode(sample, add_special_tokens=False).ids
    assert "<0xC3>" in hf.encode(sample).tokens
    assert tokenizer.decode(ids) == sample == hf.decode(ids)
    # Bytes per token (bits per byte, streaming generation): the text with the space "▁" put before it.
    assert b"".join(tokenizer.token_bytes[i] for i in ids) == (" " + sample).encode("utf-8")
    stream = tokenizer.decode_stream()
    assert "".join(stream.push(i) for i in ids) + stream.flush() == " " + sample

    again = tokenizer_from_dict(json.loads(tokenizer.to_json()))
    assert again.encode(sample) == ids and again.eos_token_id == tokenizer.eos_token_id
    export_tokenizer(tokenizer, tmp_path / "exported")
    auto = AutoTokenizer.from_pretrained(tmp_path / "exported")
    assert auto.encode(sample, add_special_tokens=False) == ids and auto.eos_token == "</s>"


def test_a_sentencepiece_model_imports_prepares_fine_tunes_and_generates_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # configs/ is relative to the checkout
    hf = _llama2_style_tokenizer()
    torch.manual_seed(0)
    model = GPT(model_config(hf.get_vocab_size(), arch="llama"))
    export_huggingface(model, tmp_path / "hf")
    hf.save(str(tmp_path / "hf" / "tokenizer.json"))
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "</s>"}}))
    assert main(["import", "--hf_model", str(tmp_path / "hf"), "--out", str(tmp_path / "imported")]) == 0

    text = tmp_path / "romeo.txt"
    text.write_text("ROMEO: But soft, what light through yonder window breaks?\n" * 60)
    out = tmp_path / "finetuned"
    imported = tmp_path / "imported"
    train = [
        "train", "--config", "configs/cpu_quick.yaml",
        "--init_from", str(imported / "checkpoints" / "model.pt"),
        f"--data.dataset={text}", f"--data.tokenizer={imported / 'tokenizer.json'}",
        f"--data.data_dir={tmp_path / 'data'}", f"--training.output_dir={out}", "--training.batch_size=4",
        "--training.max_steps=3", "--training.eval_every=0", "--training.progress_bar=false",
    ]  # fmt: skip
    assert main(train) == 0, capsys.readouterr().err
    train_shard = next((tmp_path / "data").rglob("train/00000.bin"))
    prepared = np.fromfile(train_shard, dtype=np.uint16, offset=HEADER_BYTES).tolist()[
        :-50
    ]  # clear of the train/val cut
    assert len(prepared) > 500  # several pieces of 1 KiB: "▁" is added before the first one only
    assert prepared == hf.encode(text.read_text(), add_special_tokens=False).ids[: len(prepared)]

    capsys.readouterr()
    generate = ["generate", "--checkpoint", str(out / "checkpoints" / "step_3.pt"), "--prompt", "ROMEO:",
                "--max_new_tokens", "5", "--seed", "0"]  # fmt: skip
    assert main(generate) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")


def test_sentencepiece_style_corpora_encode_piece_by_piece_as_one_text(monkeypatch) -> None:
    """Preparation cuts text into pieces; only a document's first gets SentencePiece's space."""
    from nima.data import stream_encoders

    hf = _llama2_style_tokenizer()
    tokenizer = BPETokenizer(hf, eos_token="</s>")
    text = "".join(f"ROMEO {i}: But soft,  what light\nthrough yonder window breaks?\n" for i in range(150))
    monkeypatch.setattr(stream_encoders, "HF_UNIT_CHARS", 2048)  # several units, each of several pieces
    encoder = stream_encoders.make_stream_encoder(tokenizer)
    units = list(encoder.cut([text[:5000], text[5000:]]))
    assert len(units) > 2
    ids = np.concatenate([encoder.encode(unit) for unit in units]).tolist()
    assert ids == hf.encode(text, add_special_tokens=False).ids


def test_bpe_style_is_read_from_the_decoder() -> None:
    from tokenizers import Tokenizer, decoders, models

    from nima.data.tokenizer import bpe_style

    def made(model, decoder=None):
        hf = Tokenizer(model)
        if decoder is not None:
            hf.decoder = decoder
        return bpe_style(hf)

    assert made(models.BPE(), decoders.ByteLevel()) == "byte_level"
    assert made(models.BPE(), decoders.Metaspace()) == "sentencepiece"  # Mistral's newer files
    assert made(models.BPE()) is None  # no decoder: how tokens map to bytes is unknown
    assert made(models.WordPiece(unk_token="[UNK]"), decoders.WordPiece()) is None


def test_import_refuses_what_it_cannot_read_safely(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a Hugging Face model folder"):
        import_huggingface(tmp_path)
    export_huggingface(_model(arch="gpt2"), tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"pickled weights \(pytorch_model.bin\) are not loaded"):
        import_huggingface(tmp_path)


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


def test_nima_import_then_eval_and_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, tokenizer = train_tiny_model(steps=20)
    original = save_checkpoint(model, tokenizer, tmp_path / "run")
    assert main(["export", "--checkpoint", str(original), "--out", str(tmp_path / "hf")]) == 0
    out = tmp_path / "imported"
    assert main(["import", "--hf_model", str(tmp_path / "hf"), "--out", str(out)]) == 0
    imported = out / "checkpoints" / "model.pt"
    assert "wrote" in capsys.readouterr().err

    # The imported checkpoint generates exactly what the original does.
    def sample(checkpoint: Path) -> str:
        args = ["generate", "--checkpoint", str(checkpoint), "--prompt", "ROMEO:", "--max_new_tokens", "20"]
        assert main([*args, "--seed", "3", "--temperature", "0.8"]) == 0
        return capsys.readouterr().out

    assert sample(imported) == sample(original)
    text = tmp_path / "text.txt"
    text.write_text("JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\n")
    scores = []
    for checkpoint in (original, imported):
        assert main(["eval", "--checkpoint", str(checkpoint), "--text", str(text), "--json"]) == 0
        scores.append(json.loads(capsys.readouterr().out)["loss"])
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)

    assert main(["import", "--hf_model", str(tmp_path / "hf"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_fine_tune_an_imported_model_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference_helpers import TEXT

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # configs/ is relative to the checkout
    model, tokenizer = train_tiny_model(steps=60)
    original = save_checkpoint(model, tokenizer, tmp_path / "run")
    assert main(["export", "--checkpoint", str(original), "--out", str(tmp_path / "hf")]) == 0
    assert main(["import", "--hf_model", str(tmp_path / "hf"), "--out", str(tmp_path / "imported")]) == 0
    text = tmp_path / "romeo.txt"
    text.write_text(TEXT * 4)
    out = tmp_path / "finetuned"
    train = [
        "train", "--config", "configs/cpu_quick.yaml", "--resume",
        "--init_from", str(tmp_path / "imported" / "checkpoints" / "model.pt"),
        f"--data.dataset={text}", f"--data.tokenizer={tmp_path / 'imported' / 'tokenizer.json'}",
        f"--data.data_dir={tmp_path / 'data'}", f"--training.output_dir={out}", "--training.batch_size=4",
        "--training.log_every=1", "--training.eval_every=0", "--training.eval_batches=2",
        "--training.progress_bar=false", "--training.learning_rate=1e-3", "--training.warmup_steps=0",
    ]  # fmt: skip
    capsys.readouterr()
    assert main([*train, "--training.max_steps=4"]) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert "fine-tuning from" in stdout
    lines = [json.loads(x) for x in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    # The imported weights already know this text: far below an untrained model's ln(vocab).
    assert lines[0]["step"] == 1 and lines[0]["loss"] < 0.5 * np.log(tokenizer.vocab_size)
    finetuned = torch.load(out / "checkpoints" / "step_4.pt", map_location="cpu", weights_only=True)
    assert finetuned["model_config"] == {**model.config.to_dict(), "dropout": 0.0}

    # The same command restarts the job: it resumes its own run, not the imported weights.
    assert main([*train, "--training.max_steps=6"]) == 0
    assert "resuming at step 4" in capsys.readouterr().out
    assert (out / "checkpoints" / "step_6.pt").is_file()
