"""Use a trained model: load a checkpoint with its tokenizer, and generate text.

``load_for_inference(checkpoint)`` returns the model with the tokenizer it was trained with (found
automatically, or given, and checked against the checkpoint's recorded identity);
``generate_text`` / ``stream_text`` turn a prompt into a continuation. ``nima generate``
(``nima.inference.cli``) does the same from the command line.
"""

from nima.inference.generate import SamplingSettings, encode_prompt, generate_text, stream_text
from nima.inference.loading import (
    LoadedModel,
    load_for_inference,
    pick_device,
    resolve_tokenizer,
    tokenizer_matches,
)

__all__ = [
    "LoadedModel",
    "SamplingSettings",
    "encode_prompt",
    "generate_text",
    "load_for_inference",
    "pick_device",
    "resolve_tokenizer",
    "stream_text",
    "tokenizer_matches",
]
