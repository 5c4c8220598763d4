"""GPT-style language models: configuration, presets, the transformer, and cached generation.

``create_gpt_small(vocab_size=...)`` or ``create_model(ModelConfig(...) | dict | "tiny")`` build a
model; ``model(input_ids, labels)`` returns a :class:`ModelOutput`; ``model.generate(...)`` samples.
"""

from nima.models.attention import CausalSelfAttention, KVCache, RowKVCache
from nima.models.config import ARCHITECTURES, ModelConfig
from nima.models.generation import (
    apply_repetition_penalty,
    check_sampling,
    generate,
    generate_stream,
    sample_next_token,
    top_k_filter,
    top_p_filter,
)
from nima.models.gpt import (
    GPT,
    IGNORE_INDEX,
    LOSS_CHUNK_ROWS,
    Block,
    ModelOutput,
    SequenceTooLongError,
    chunked_cross_entropy,
)
from nima.models.presets import (
    PRESETS,
    create_gpt_large,
    create_gpt_medium,
    create_gpt_small,
    create_gpt_tiny,
    create_model,
    preset_config,
)

__all__ = [
    "ARCHITECTURES",
    "IGNORE_INDEX",
    "LOSS_CHUNK_ROWS",
    "PRESETS",
    "GPT",
    "Block",
    "CausalSelfAttention",
    "KVCache",
    "ModelConfig",
    "ModelOutput",
    "RowKVCache",
    "SequenceTooLongError",
    "apply_repetition_penalty",
    "check_sampling",
    "chunked_cross_entropy",
    "create_gpt_large",
    "create_gpt_medium",
    "create_gpt_small",
    "create_gpt_tiny",
    "create_model",
    "generate",
    "generate_stream",
    "preset_config",
    "sample_next_token",
    "top_k_filter",
    "top_p_filter",
]
