"""Checkpoints: the format (:mod:`.format`), files on disk (:mod:`.storage`), random state
(:mod:`.rng`) and the checks a checkpoint must pass to load into a run (:mod:`.compat`).

Everything that writes or reads a checkpoint goes through here: the Trainer's checkpointer,
``nima eval`` / ``nima generate``, ``nima import`` / ``nima export``, and the tests.
"""

from nima.checkpoint.compat import RUNTIME_MODEL_KEYS, model_config_mismatches, tokenizer_mismatches
from nima.checkpoint.format import (
    FORMAT,
    FORMAT_VERSION,
    clean_state_dict,
    load_checkpoint_file,
    load_model_from_checkpoint,
    make_checkpoint,
    save_model_checkpoint,
    upgrade,
)
from nima.checkpoint.rng import (
    capture_rng_state,
    gather_rank_rng_states,
    restore_rank_rng_state,
    restore_rng_state,
)
from nima.checkpoint.storage import (
    PARTIAL_STALE_AFTER_S,
    atomic_save,
    newest_checkpoint,
    prune_checkpoints,
    remove_partial_checkpoints,
    step_checkpoints,
)
from nima.runtime.wrapping import unwrap_model

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PARTIAL_STALE_AFTER_S",
    "RUNTIME_MODEL_KEYS",
    "atomic_save",
    "capture_rng_state",
    "clean_state_dict",
    "gather_rank_rng_states",
    "load_checkpoint_file",
    "load_model_from_checkpoint",
    "make_checkpoint",
    "model_config_mismatches",
    "newest_checkpoint",
    "prune_checkpoints",
    "remove_partial_checkpoints",
    "restore_rank_rng_state",
    "restore_rng_state",
    "save_model_checkpoint",
    "step_checkpoints",
    "tokenizer_mismatches",
    "unwrap_model",
    "upgrade",
]
