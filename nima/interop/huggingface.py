"""Hugging Face ``transformers`` model folders: export a Nima model (and tokenizer), import one.

The folder holds ``config.json``, ``model.safetensors``, ``generation_config.json`` and, with a
tokenizer, ``tokenizer.json`` + ``tokenizer_config.json``; ``AutoModelForCausalLM.from_pretrained``
and ``AutoTokenizer.from_pretrained`` load it and give the same logits and token ids as Nima.

- gpt2 family -> ``GPT2LMHeadModel`` (exact erf GELU, ``activation_function: gelu``; Conv1D
  weights are the transposes of Nima's Linear weights; a bias-free model gets zero biases).
- llama family -> ``LlamaForCausalLM`` (the fused qkv and gate/up projections are split; both use
  the same "rotate half" RoPE layout), or ``Qwen3ForCausalLM`` when ``qk_norm`` is on.

Writing the folder needs only ``safetensors``; ``transformers`` is needed to load it.
:func:`import_huggingface` reads such a folder back, or one of ``transformers``' own GPT-2, Llama
or Qwen3 models saved as safetensors (OpenAI's GPT-2 included: ``activation: gelu_tanh``), without
``transformers`` and without unpickling anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from nima.data.tokenizer import EOT_TEXT, BPETokenizer, byte_level_alphabet, tokenizer_from_dict
from nima.errors import ConfigError, DataError
from nima.files import one_line, reading
from nima.models import GPT, ModelConfig


def export_huggingface(model: GPT, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """Write ``model`` (and ``tokenizer``, when given) to ``out_dir`` in the ``transformers`` layout."""
    config = model.config
    if config.arch == "gpt2":
        hf_config, weights = _gpt2(model)
    else:
        hf_config, weights = _llama(model)
    eos = getattr(tokenizer, "eos_token_id", None)
    hf_config.update(
        vocab_size=config.vocab_size,
        tie_word_embeddings=config.tie_embeddings,
        torch_dtype="float32",
        bos_token_id=eos,
        eos_token_id=eos,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.tie_embeddings:  # safetensors stores each tensor once: the head is re-tied on load
        weights.pop("lm_head.weight")
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in weights.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out / "config.json", hf_config)
    _write_json(out / "generation_config.json", {"bos_token_id": eos, "eos_token_id": eos})
    if tokenizer is not None:
        export_tokenizer(tokenizer, out, model_max_length=config.max_seq_len)
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _gpt2(model: GPT) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    config: ModelConfig = model.config
    if config.qk_norm or config.kv_heads != config.n_heads:
        raise ConfigError(
            "transformers' GPT-2 has no qk_norm and no grouped-query attention; export a model "
            "without them, or use the llama family"
        )
    hf_config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_embd": config.d_model,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": config.ff_dim,
        "n_positions": config.max_seq_len,
        "activation_function": "gelu" if config.act == "gelu" else "gelu_pytorch_tanh",
        "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.attn_dropout,
    }

    def bias(linear_or_norm: torch.nn.Module, size: int) -> torch.Tensor:
        found = getattr(linear_or_norm, "bias", None)
        return found if found is not None else torch.zeros(size)

    d = config.d_model
    weights = {
        "transformer.wte.weight": model.tok_emb.weight,
        "transformer.wpe.weight": model.pos_emb.weight,
        "transformer.ln_f.weight": model.norm_f.weight,
        "transformer.ln_f.bias": bias(model.norm_f, d),
        "lm_head.weight": model.lm_head.weight,
    }
    for i, block in enumerate(model.blocks):
        p = f"transformer.h.{i}."
        attn, mlp = block.attn, block.mlp
        weights.update({
            p + "ln_1.weight": block.norm1.weight,
            p + "ln_1.bias": bias(block.norm1, d),
            p + "attn.c_attn.weight": attn.qkv.weight.t(),  # Conv1D: (in, out)
            p + "attn.c_attn.bias": bias(attn.qkv, 3 * d),
            p + "attn.c_proj.weight": attn.proj.weight.t(),
            p + "attn.c_proj.bias": bias(attn.proj, d),
            p + "ln_2.weight": block.norm2.weight,
            p + "ln_2.bias": bias(block.norm2, d),
            p + "mlp.c_fc.weight": mlp.fc.weight.t(),
            p + "mlp.c_fc.bias": bias(mlp.fc, config.ff_dim),
            p + "mlp.c_proj.weight": mlp.proj.weight.t(),
            p + "mlp.c_proj.bias": bias(mlp.proj, d),
        })  # fmt: skip
    return hf_config, weights


def _llama(model: GPT) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    config: ModelConfig = model.config
    qwen3 = config.qk_norm
    if qwen3 and config.use_bias:
        raise ConfigError(
            "transformers' Qwen3 (the llama family with qk_norm) has no MLP biases; export a "
            "qk_norm model trained with bias: false"
        )
    hf_config = {
        "architectures": ["Qwen3ForCausalLM" if qwen3 else "LlamaForCausalLM"],
        "model_type": "qwen3" if qwen3 else "llama",
        "hidden_size": config.d_model,
        "intermediate_size": config.ff_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "hidden_act": "silu",
        "attention_bias": config.use_bias,
        "attention_dropout": config.attn_dropout,
        "mlp_bias": config.use_bias,
    }
    q, kv = config.n_heads * config.head_dim, config.kv_heads * config.head_dim
    weights = {
        "model.embed_tokens.weight": model.tok_emb.weight,
        "model.norm.weight": model.norm_f.weight,
        "lm_head.weight": model.lm_head.weight,
    }
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        attn, mlp = block.attn, block.mlp
        weights[p + "input_layernorm.weight"] = block.norm1.weight
        weights[p + "post_attention_layernorm.weight"] = block.norm2.weight
        for kind in ("weight", "bias") if config.use_bias else ("weight",):
            q_t, k_t, v_t = getattr(attn.qkv, kind).split([q, kv, kv])
            gate_t, up_t = getattr(mlp.fc, kind).chunk(2)  # SwiGLU: silu(gate) * up from one matmul
            weights.update({
                p + f"self_attn.q_proj.{kind}": q_t,
                p + f"self_attn.k_proj.{kind}": k_t,
                p + f"self_attn.v_proj.{kind}": v_t,
                p + f"self_attn.o_proj.{kind}": getattr(attn.proj, kind),
                p + f"mlp.gate_proj.{kind}": gate_t,
                p + f"mlp.up_proj.{kind}": up_t,
                p + f"mlp.down_proj.{kind}": getattr(mlp.proj, kind),
            })  # fmt: skip
        if qwen3:
            weights[p + "self_attn.q_norm.weight"] = attn.q_norm.weight
            weights[p + "self_attn.k_norm.weight"] = attn.k_norm.weight
    return hf_config, weights


def export_tokenizer(tokenizer: Any, out_dir: str | Path, model_max_length: int | None = None) -> Path:
    """Write ``tokenizer.json`` (Hugging Face ``tokenizers`` format) and ``tokenizer_config.json``.

    BPE tokenizers are ``tokenizers`` objects already; char and byte tokenizers become a BPE model
    without merges over the same vocabulary (so every character, or byte, is one token with the
    same id as in Nima).
    """
    kind = getattr(tokenizer, "kind", None)
    eos = tokenizer.eos_token_id
    if kind == "bpe":
        hf = HFTokenizer.from_str(tokenizer.hf_tokenizer.to_str())
    elif kind == "char":
        hf = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(tokenizer.chars)}, merges=[]))
        hf.decoder = decoders.Fuse()
    elif kind == "byte":
        alphabet = {ch: b for ch, b in byte_level_alphabet().items()}
        hf = HFTokenizer(models.BPE(vocab=alphabet, merges=[]))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.decoder = decoders.ByteLevel()
    else:
        raise ConfigError(f"cannot export a tokenizer of kind {kind!r} (expected char, byte or bpe)")
    if eos is not None and kind != "bpe":  # the BPE tokenizer already has it, at its own id
        hf.add_special_tokens([AddedToken(EOT_TEXT, special=True)])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf.save(str(out / "tokenizer.json"))
    settings: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
    }
    if eos is not None:
        settings.update(eos_token=tokenizer.eot_text, bos_token=tokenizer.eot_text)
    if model_max_length is not None:
        settings["model_max_length"] = model_max_length
    settings["nima_tokenizer"] = tokenizer.to_dict()  # import_huggingface restores it exactly
    _write_json(out / "tokenizer_config.json", settings)
    return out


# --- import ----------------------------------------------------------------------------------

_GELUS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}


def import_huggingface(folder: str | Path) -> tuple[GPT, Any]:
    """Load a ``transformers`` GPT-2, Llama or Qwen3 folder as a Nima ``GPT`` (in eval mode).

    Returns ``(model, tokenizer)``; the tokenizer is None unless the folder's ``tokenizer.json``
    is byte-level BPE (GPT-2, Qwen), SentencePiece-style BPE with byte fallback (Llama 2, Mistral)
    or one that :func:`export_tokenizer` wrote. Its end-of-text token is the model's own.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"{folder} is not a Hugging Face model folder (no config.json)")
    hf = _read_json(config_path)
    model_type = hf.get("model_type")
    if model_type not in ("gpt2", "llama", "qwen3"):
        raise ConfigError(f"{folder}: model_type {model_type!r} cannot be imported (gpt2, llama or qwen3)")
    try:
        config = _gpt2_config(hf) if model_type == "gpt2" else _llama_config(hf, model_type == "qwen3")
    except KeyError as err:
        raise ConfigError(f"{config_path} has no {err.args[0]!r}, which {model_type} configs need") from None
    except Exception as err:  # a ConfigError too: values of the wrong type or range
        raise ConfigError(f"{config_path} cannot be imported: {one_line(err)}") from None
    model = GPT(config)
    weights = _read_safetensors(folder)
    _, exported = (_gpt2 if config.arch == "gpt2" else _llama)(model)
    state = {}
    for nima_name, hf_name, part in _name_map(model, exported):
        if hf_name == "lm_head.weight" and config.tie_embeddings:
            continue  # the same tensor as the token embedding
        base_name = hf_name.split(".", 1)[1]
        if hf_name not in weights and base_name in weights and hf_name.startswith(("transformer.", "model.")):
            hf_name = base_name  # saved from the base model (the hub's gpt2 files): no prefix
        if hf_name not in weights:
            if part.get("zeros"):  # a bias that the export filled with zeros and Nima does not have
                continue
            raise ConfigError(f"{folder}: the weights have no {hf_name}")
        tensor = weights[hf_name].float()
        state.setdefault(nima_name, []).append((part["index"], part["transpose"], tensor))
    model_state = model.state_dict()
    loaded = {}
    for name, pieces in state.items():
        pieces.sort(key=lambda p: p[0])
        tensors = [t.t() if transpose else t for _, transpose, t in pieces]
        loaded[name] = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
        got, want = tuple(loaded[name].shape), tuple(model_state[name].shape)
        if got != want:
            raise ConfigError(f"{folder}: {name} has shape {got}, expected {want}")
    if config.tie_embeddings:
        loaded["lm_head.weight"] = loaded["tok_emb.weight"]
    model.load_state_dict(loaded, strict=True)
    return model.eval(), _import_tokenizer(folder)


def _gpt2_config(hf: dict[str, Any]) -> ModelConfig:
    act = hf.get("activation_function", "gelu_new")
    if act not in _GELUS:
        raise ConfigError(f"GPT-2 activation_function {act!r} has no Nima equivalent ({', '.join(_GELUS)})")
    d_model = hf["n_embd"]
    return ModelConfig(
        arch="gpt2",
        vocab_size=hf["vocab_size"],
        d_model=d_model,
        n_heads=hf["n_head"],
        n_layers=hf["n_layer"],
        d_ff=hf.get("n_inner") or 4 * d_model,
        max_seq_len=hf["n_positions"],
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        activation=_GELUS[act],
        bias=True,
    )


def _llama_config(hf: dict[str, Any], qk_norm: bool) -> ModelConfig:
    rope = hf.get("rope_parameters") or {}
    if hf.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        raise ConfigError("rope scaling (long-context variants) cannot be imported; plain RoPE only")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("use_sliding_window"):
        raise ConfigError("only SiLU (SwiGLU) models without sliding-window attention can be imported")
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim", d_model // n_heads) * n_heads != d_model:
        raise ConfigError("head_dim * num_attention_heads must equal hidden_size to import the model")
    if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
        raise ConfigError("attention and MLP biases must both be on or both off to import the model")
    return ModelConfig(
        arch="llama",
        vocab_size=hf["vocab_size"],
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads", n_heads),
        n_layers=hf["num_hidden_layers"],
        d_ff=hf["intermediate_size"],
        max_seq_len=hf["max_position_embeddings"],
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        bias=bool(hf.get("attention_bias", False)),
        qk_norm=qk_norm,
    )


def _name_map(model: GPT, exported: dict[str, torch.Tensor]) -> list[tuple[str, str, dict[str, Any]]]:
    """(nima name, hf name, how) for every exported tensor: the export's own mapping, read back.

    The export returns views of Nima's tensors (slices, transposes); matching them by storage and
    offset tells which Nima parameter and which piece of it each Hugging Face tensor is.
    """
    by_storage = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        by_storage.setdefault(tensor.untyped_storage().data_ptr(), name)
    out = []
    for hf_name, view in exported.items():
        name = by_storage.get(view.untyped_storage().data_ptr())
        if name is None:  # a zero bias made up for a bias-free Nima layer
            out.append(("", hf_name, {"zeros": True}))
            continue
        transpose = view.dim() == 2 and not view.is_contiguous()
        out.append((name, hf_name, {"index": view.storage_offset(), "transpose": transpose}))
    return out


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file of the folder; ConfigError naming the file when it is not one."""
    with reading(path, "JSON file", ConfigError):
        data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a JSON {type(data).__name__}, not an object of settings")
    return data


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        with reading(index, "safetensors index (weight_map of file names)", ConfigError):
            shards = sorted({str(name) for name in _read_json(index)["weight_map"].values()})
    elif (folder / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        raise ConfigError(
            f"{folder} has no model.safetensors; pickled weights (pytorch_model.bin) are not loaded, "
            "re-save them with save_pretrained(..., safe_serialization=True)"
        )
    weights: dict[str, torch.Tensor] = {}
    for shard in shards:
        with reading(folder / shard, "safetensors file (truncated or damaged)", ConfigError):
            weights.update(load_file(str(folder / shard)))
    return weights


def _import_tokenizer(folder: Path) -> Any:
    settings_path = folder / "tokenizer_config.json"
    settings = _read_json(settings_path) if settings_path.is_file() else {}
    if "nima_tokenizer" in settings:  # written by export_tokenizer: the exact original
        with reading(settings_path, "Nima tokenizer (nima_tokenizer)", DataError):
            return tokenizer_from_dict(settings["nima_tokenizer"], source=str(settings_path))
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    with reading(path, "Hugging Face tokenizer", DataError):
        hf = HFTokenizer.from_file(str(path))
        eos_token = _eos_token(hf, settings, folder)
    # Byte-level BPE (GPT-2, Qwen, SmolLM ...) and SentencePiece-style BPE with byte fallback
    # (Llama 2, Mistral) map every token to bytes; BPETokenizer refuses the others (WordPiece, Unigram).
    try:
        with reading(path, "Hugging Face tokenizer", DataError):
            return BPETokenizer(hf, eos_token=eos_token)
    except DataError:
        return None


def _eos_token(hf: Any, settings: dict[str, Any], folder: Path) -> str:
    """The model's end-of-text token: tokenizer_config.json's ``eos_token``, else the id that
    generation_config.json or config.json names, else GPT-2's ``<|endoftext|>``."""
    named = settings.get("eos_token")
    if isinstance(named, dict):  # {"content": "</s>", "lstrip": false, ...}
        named = named.get("content")
    if isinstance(named, str) and hf.token_to_id(named) is not None:
        return named
    for name in ("generation_config.json", "config.json"):
        file = folder / name
        eos_id = _read_json(file).get("eos_token_id") if file.is_file() else None
        if isinstance(eos_id, list):
            eos_id = eos_id[0] if eos_id else None
        if isinstance(eos_id, int) and hf.id_to_token(eos_id) is not None:
            return hf.id_to_token(eos_id)
    return EOT_TEXT
