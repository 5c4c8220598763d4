"""Named model sizes and the ``create_*`` constructors.

All presets are the gpt2 family (learned positions, LayerNorm, GELU, biases, tied embeddings,
d_ff = 4 * d_model) and are derived from SMALL. Parameter counts (tied embeddings, counted once):

==========  ========  =======  =======  ===========  ====================  ==================
preset      n_layers  d_model  n_heads  max_seq_len  params, vocab 50257   params, vocab 65
==========  ========  =======  =======  ===========  ====================  ==================
tiny        4         128      4        256          7.26M                 0.83M
small       12        768      12       1024         124.4M (GPT-2 small)  85.9M
medium      24        1024     16       1024         354.8M (GPT-2 med.)   303.4M
large       36        1280     20       1024         774.0M (GPT-2 large)  709.8M
==========  ========  =======  =======  ===========  ====================  ==================

Non-embedding parameters: 12 * n_layers * d_model**2 + 13 * n_layers * d_model + 2 * d_model
(0.79M, 85.1M, 302.3M, 708.4M); embeddings add (vocab_size + max_seq_len) * d_model. Every
constructor takes ``vocab_size`` and any :class:`ModelConfig` field as an override, e.g.
``create_gpt_small(vocab_size=65, arch="llama", n_kv_heads=4)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

from nima.errors import ConfigError
from nima.models.config import ModelConfig
from nima.models.gpt import GPT

SMALL = ModelConfig(
    vocab_size=50257, d_model=768, n_heads=12, n_layers=12, max_seq_len=1024, dropout=0.0, arch="gpt2"
)
"""GPT-2 small (124M with the GPT-2 vocabulary)."""
TINY = replace(SMALL, n_layers=4, d_model=128, n_heads=4, max_seq_len=256)
"""A few-minute CPU model (the reference benchmark's shape); also handy in tests."""
MEDIUM = replace(SMALL, n_layers=24, d_model=1024, n_heads=16)
"""GPT-2 medium (355M with the GPT-2 vocabulary)."""
LARGE = replace(SMALL, n_layers=36, d_model=1280, n_heads=20)
"""GPT-2 large (774M with the GPT-2 vocabulary)."""

PRESETS: dict[str, ModelConfig] = {"tiny": TINY, "small": SMALL, "medium": MEDIUM, "large": LARGE}
"""Preset name -> config (vocab_size is the GPT-2 vocabulary; override it for your tokenizer)."""


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """The config of preset ``name`` with ``overrides`` (any ModelConfig field) applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    # asdict keeps derived fields as None, so they follow the overrides (a new d_model gets 4 * d_model).
    return ModelConfig.from_dict({**asdict(PRESETS[name]), **overrides})


def create_model(config: ModelConfig | Mapping[str, Any] | str, **overrides: Any) -> GPT:
    """A freshly initialised GPT from a config object, a mapping (a YAML ``model:`` section) or a
    preset name ("tiny", "small", "medium", "large"); ``overrides`` replace config fields."""
    if isinstance(config, str):
        return GPT(preset_config(config, **overrides))
    if isinstance(config, ModelConfig):
        return GPT(ModelConfig.from_dict({**asdict(config), **overrides}) if overrides else config)
    if isinstance(config, Mapping):
        return GPT(ModelConfig.from_dict({**config, **overrides}))
    raise ConfigError(
        f"create_model needs a ModelConfig, a mapping or a preset name, got {type(config).__name__}"
    )


def create_gpt_tiny(vocab_size: int = 50257, **overrides: Any) -> GPT:
    """4 layers, d_model 128, 4 heads, context 256: ~0.8M parameters plus embeddings."""
    return GPT(preset_config("tiny", vocab_size=vocab_size, **overrides))


def create_gpt_small(vocab_size: int = 50257, **overrides: Any) -> GPT:
    """GPT-2 small shape: 12 layers, d_model 768, 12 heads, context 1024 (124M with vocab 50257)."""
    return GPT(preset_config("small", vocab_size=vocab_size, **overrides))


def create_gpt_medium(vocab_size: int = 50257, **overrides: Any) -> GPT:
    """GPT-2 medium shape: 24 layers, d_model 1024, 16 heads, context 1024 (355M with vocab 50257)."""
    return GPT(preset_config("medium", vocab_size=vocab_size, **overrides))


def create_gpt_large(vocab_size: int = 50257, **overrides: Any) -> GPT:
    """GPT-2 large shape: 36 layers, d_model 1280, 20 heads, context 1024 (774M with vocab 50257)."""
    return GPT(preset_config("large", vocab_size=vocab_size, **overrides))
