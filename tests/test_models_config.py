"""ModelConfig: defaults, derived fields, (de)serialisation, and every validation error."""

from __future__ import annotations

import ast
import dataclasses
import inspect

import pytest
import torch

from nima.config_fields import field_types
from nima.errors import ConfigError, NimaError
from nima.models import PRESETS, ModelConfig, create_gpt_small, create_gpt_tiny, create_model, preset_config


def test_every_field_has_a_kind_and_a_default():
    names = [f.name for f in dataclasses.fields(ModelConfig)]
    assert set(field_types(ModelConfig)) == set(names)  # the kinds are the type hints
    ModelConfig()  # all defaults are valid


def test_every_field_has_a_docstring():
    source = inspect.getsource(ModelConfig)
    body = ast.parse(source).body[0].body
    documented = {
        stmt.target.id
        for stmt, after in zip(body, body[1:], strict=False)
        if isinstance(stmt, ast.AnnAssign)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
    }
    assert documented == {f.name for f in dataclasses.fields(ModelConfig)}


def test_guide_yaml_section_loads():
    section = {
        "vocab_size": 10000, "d_model": 512, "n_heads": 8, "n_layers": 6,
        "d_ff": 2048, "max_seq_len": 1024, "dropout": 0.1,
    }  # fmt: skip
    cfg = ModelConfig.from_dict(section)
    assert cfg.d_ff == 2048 and cfg.dropout == 0.1 and cfg.arch == "gpt2"


def test_derived_defaults_per_family():
    gpt2 = ModelConfig(d_model=64, n_heads=4)
    assert gpt2.ff_dim == 256 and gpt2.use_bias is True and gpt2.kv_heads == 4 and gpt2.head_dim == 16
    llama = ModelConfig(d_model=96, n_heads=4, arch="llama")
    assert llama.use_bias is False and llama.ff_dim == 256  # 8/3 * 96 = 256, already a multiple of 64
    assert ModelConfig(d_model=104, n_heads=4, arch="llama").ff_dim == 320  # 277.3 rounded up to 64s
    assert ModelConfig(d_ff=99).ff_dim == 99


def test_replace_rederives_defaults():
    cfg = dataclasses.replace(ModelConfig(d_model=64, n_heads=4), d_model=128)
    assert cfg.ff_dim == 512


def test_to_dict_round_trip_resolves_derived_values():
    cfg = ModelConfig(d_model=64, n_heads=4, arch="llama", qk_norm=True)
    d = cfg.to_dict()
    assert d["d_ff"] == cfg.ff_dim and d["bias"] is False and d["n_kv_heads"] == 4
    again = ModelConfig.from_dict(d)
    assert again.to_dict() == d


def test_float_strings_from_yaml_are_accepted():
    # yaml.safe_load reads 1e-5 (no dot) as the string "1e-5".
    cfg = ModelConfig.from_dict({"norm_eps": "1e-5", "rope_theta": 500000})
    assert cfg.norm_eps == 1e-5 and isinstance(cfg.rope_theta, float)


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match=r"unknown key model\.d_modle \(did you mean model\.d_model\?\)"):
        ModelConfig.from_dict({"d_modle": 64})
    with pytest.raises(ConfigError, match=r"unknown key model\.zzz \(valid keys: vocab_size"):
        ModelConfig.from_dict({"zzz": 1})


def test_from_dict_needs_a_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        ModelConfig.from_dict([1, 2])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"d_model": 0}, "d_model"),
        ({"n_heads": 0}, "n_heads"),
        ({"n_layers": 0}, "n_layers"),
        ({"max_seq_len": 0}, "max_seq_len"),
        ({"d_ff": 0}, "d_ff"),
        ({"d_model": 100, "n_heads": 3}, "d_model"),
        ({"n_heads": 8, "n_kv_heads": 3}, "n_kv_heads"),
        ({"n_heads": 8, "n_kv_heads": 0}, "n_kv_heads"),
        ({"d_model": 36, "n_heads": 4, "arch": "llama"}, "d_model"),  # odd head_dim 9: no RoPE
        ({"arch": "gtp2"}, "arch"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"rope_theta": 0}, "rope_theta"),
        ({"norm_eps": -1e-5}, "norm_eps"),
        ({"init_std": 0.0}, "init_std"),
        ({"init_std": float("nan")}, "init_std"),
        ({"vocab_size": 10.5}, "vocab_size"),
        ({"n_layers": True}, "n_layers"),
        ({"d_model": "512"}, "d_model"),
        ({"tie_embeddings": "yes"}, "tie_embeddings"),
        ({"bias": 1}, "bias"),
        ({"qk_norm": None}, "qk_norm"),
        ({"gradient_checkpointing": 0}, "gradient_checkpointing"),
        ({"dropout": "lots"}, "dropout"),
        ({"norm_eps": True}, "norm_eps"),
        ({"arch": 2}, "arch"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=rf"model\.{field}") as info:
        ModelConfig(**kwargs)
    assert isinstance(info.value, NimaError) and "\n" not in str(info.value)


def test_arch_typo_suggests_family():
    with pytest.raises(ConfigError, match="did you mean 'gpt2'"):
        ModelConfig(arch="gtp2")


@pytest.mark.slow
def test_small_preset_is_gpt2_small():
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        small = create_gpt_small(vocab_size=50257)
    assert round(small.num_parameters() / 1e6, 1) == 124.4


@pytest.mark.parametrize(
    "name, millions", [("tiny", 7.26), ("small", 124.44), ("medium", 354.82), ("large", 774.03)]
)
def test_preset_sizes_match_the_documented_counts(name, millions):
    c = PRESETS[name]  # gpt2 family, tied: the formula is checked against real models in test_models_gpt
    L, d, V, T = c.n_layers, c.d_model, c.vocab_size, c.max_seq_len
    assert round((L * (12 * d * d + 13 * d) + 2 * d + (V + T) * d) / 1e6, 2) == millions


def test_presets_and_constructors():
    assert set(PRESETS) == {"tiny", "small", "medium", "large"}
    tiny = create_gpt_tiny(vocab_size=65, d_model=64, n_heads=2)
    assert tiny.config.ff_dim == 256 and tiny.config.vocab_size == 65
    assert preset_config("small", vocab_size=65, arch="llama").use_bias is False
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        preset_config("huge")
    with pytest.raises(ConfigError, match="unknown key model.n_layer "):
        create_gpt_tiny(vocab_size=65, n_layer=2)


def test_create_model_accepts_config_mapping_and_name():
    cfg = ModelConfig(vocab_size=40, d_model=32, n_heads=2, n_layers=1, max_seq_len=8)
    assert create_model(cfg).config is cfg
    assert create_model(cfg, d_model=64).config.ff_dim == 256
    assert create_model(cfg.to_dict()).config.to_dict() == cfg.to_dict()
    assert create_model("tiny", vocab_size=10).config.n_layers == 4
    with pytest.raises(ConfigError, match="create_model needs"):
        create_model(3)
